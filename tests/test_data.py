"""Built-in data sources: shapes, physical units, validation errors, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from sciddpm.data import (
    SKIMAGE_IMAGES,
    ArraySource,
    ArraySourceConfig,
    DigitsSource,
    DigitsSourceConfig,
    SkimagePatches,
    SkimagePatchesConfig,
    collate,
)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


# --------------------------------------------------------------------------- ArraySource


@pytest.mark.parametrize("spatial", [(17,), (6, 10), (3, 4, 5)])
def test_array_source_shapes_and_units(rng, spatial):
    x = (rng.normal(size=(7, 2, *spatial)) * 300 + 1000).astype(np.float64)
    src = ArraySource.from_array(x)
    assert len(src) == 7
    assert src.sample_shape == (2, *spatial)
    s = src[3]
    assert s.x.dtype == torch.float32 and s.x.shape == (2, *spatial)
    np.testing.assert_allclose(s.x.numpy(), x[3].astype(np.float32))  # physical units kept
    assert s.condition is None and s.mask is None
    assert src.num_classes == 0


def test_npy_file(tmp_path, rng):
    x = rng.normal(size=(5, 1, 8, 12)).astype(np.float32) * 50
    path = tmp_path / "x.npy"
    np.save(path, x)
    src = ArraySource(ArraySourceConfig(path=str(path)))
    np.testing.assert_array_equal(src[4].x.numpy(), x[4])
    info = src.describe()
    assert info["path"] == str(path) and info["samples"] == 5 and info["sample_shape"] == [1, 8, 12]
    assert len(info["sha256"]) == 16
    assert ArraySource(ArraySourceConfig(path=str(path))).describe()["sha256"] == info["sha256"]
    x[0, 0, 0, 0] += 1
    np.save(path, x)
    assert ArraySource(ArraySourceConfig(path=str(path))).describe()["sha256"] != info["sha256"]


def test_npz_with_labels_and_mask(tmp_path, rng):
    x = rng.normal(size=(6, 2, 4, 4)).astype(np.float32) + 280.0
    x[2, 1, 0, 0] = np.nan
    x[4, 0, 1, 1] = -9999.0  # a fill value under the mask
    mask = np.ones((6, 1, 4, 4), dtype=bool)
    mask[4, 0, 1, 1] = False
    y = np.array([0, 1, 2, 2, 1, 0])
    path = tmp_path / "data.npz"
    np.savez(path, fields=x, y=y, land=mask)
    src = ArraySource(ArraySourceConfig(path=str(path), labels_key="y", mask_key="land"))
    assert src.num_classes == 3
    assert src[3].condition == 2 and isinstance(src[3].condition, int)
    m2 = src[2].mask
    assert m2.shape == (2, 4, 4) and m2[1, 0, 0] == 0 and m2[0, 0, 0] == 1 and m2.sum() == 31
    assert src[2].x[1, 0, 0] == 0 and torch.isfinite(src[2].x).all()
    assert src[4].x[:, 1, 1].tolist() == [0.0, 0.0] and src[4].mask[:, 1, 1].tolist() == [0.0, 0.0]
    assert src[0].x[0, 0, 0] == pytest.approx(x[0, 0, 0, 0])  # unmasked values untouched
    assert src.describe()["masked"] is True


def test_npz_key_required_when_ambiguous(tmp_path):
    path = tmp_path / "two.npz"
    np.savez(path, a=np.zeros((2, 1, 3)), b=np.zeros((2, 1, 3)))
    with pytest.raises(ValueError, match=r"key="):
        ArraySource(ArraySourceConfig(path=str(path)))
    assert len(ArraySource(ArraySourceConfig(path=str(path), key="b"))) == 2
    with pytest.raises(KeyError, match=r"'c'.*\['a', 'b'\]"):
        ArraySource(ArraySourceConfig(path=str(path), key="c"))


def test_nan_without_mask_names_sample(tmp_path, rng):
    x = rng.normal(size=(30, 1, 5)).astype(np.float32)
    x[17, 0, 2] = np.nan
    x[21, 0, 0] = np.inf
    with pytest.raises(ValueError, match=r"sample 17 contains NaN/inf.*mask"):
        ArraySource.from_array(x)
    path = tmp_path / "x.npy"
    np.save(path, x)
    with pytest.raises(ValueError, match=r"array source '.*x\.npy': sample 17 contains NaN/inf; pass a mask"):
        ArraySource(ArraySourceConfig(path=str(path)))


def test_object_array_refused(tmp_path):
    path = tmp_path / "obj.npy"
    arr = np.empty(3, dtype=object)
    arr[:] = [np.zeros(2), "a", None]
    np.save(path, arr, allow_pickle=True)
    with pytest.raises(ValueError, match="refuses to unpickle"):
        ArraySource(ArraySourceConfig(path=str(path)))


@pytest.mark.parametrize("shape", [(10,), (10, 5), (2, 1, 2, 2, 2, 2)])
def test_bad_rank(shape):
    with pytest.raises(ValueError, match=r"\(N, C, \*spatial\) with 1 to 3 spatial dims"):
        ArraySource.from_array(np.zeros(shape, dtype=np.float32))


def test_config_errors(tmp_path):
    with pytest.raises(ValidationError, match=r"\.npy or \.npz"):
        ArraySourceConfig(path="x.csv")
    with pytest.raises(ValidationError, match=r"only apply to \.npz"):
        ArraySourceConfig(path="x.npy", labels_key="y")
    with pytest.raises(ValidationError, match="extra"):
        ArraySourceConfig(path="x.npy", pth="typo")
    with pytest.raises(FileNotFoundError, match=r"missing\.npy"):
        ArraySource(ArraySourceConfig(path=str(tmp_path / "missing.npy")))


def test_labels_validation(rng):
    x = rng.normal(size=(4, 1, 3)).astype(np.float32)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        ArraySource.from_array(x, labels=[0, 1])
    with pytest.raises(ValueError, match="negative"):
        ArraySource.from_array(x, labels=[0, 1, -1, 2])
    with pytest.raises(ValueError, match="integer"):
        ArraySource.from_array(x, labels=[0.5, 1, 1, 2])
    src = ArraySource.from_array(torch.from_numpy(x), labels=torch.tensor([0, 4, 1, 1]))
    assert src.num_classes == 5


def test_from_array_mask_nan_becomes_masked(rng):
    x = rng.normal(size=(3, 1, 4)).astype(np.float32)
    x[1, 0, 2] = np.nan
    src = ArraySource.from_array(x, mask=np.ones_like(x))
    assert src[1].mask.tolist() == [[1.0, 1.0, 0.0, 1.0]]
    assert src[1].x[0, 2] == 0.0
    with pytest.raises(ValueError, match="mask shape"):
        ArraySource.from_array(x, mask=np.ones((3, 4)))


# --------------------------------------------------------------------------- digits


def test_digits_units_and_labels():
    src = DigitsSource(DigitsSourceConfig())
    assert len(src) == 1797 and src.sample_shape == (1, 8, 8) and src.num_classes == 10
    xs = torch.stack([s.x for s in src])
    assert xs.min() == 0 and xs.max() == 16  # physical units, not rescaled
    assert {src[i].condition for i in range(len(src))} == set(range(10))


def test_digits_upsampling_and_split():
    train = DigitsSource(DigitsSourceConfig(size=16, split="train"))
    test = DigitsSource(DigitsSourceConfig(size=16, split="test"))
    assert train.sample_shape == (1, 16, 16) and train[0].x.shape == (1, 16, 16)
    assert len(train) == 1438 and len(test) == 359
    x = torch.stack([s.x for s in train])
    assert x.min() >= 0 and x.max() <= 16 and x.max() > 15
    # a fixed split: same seed, same samples; disjoint from the test part
    again = DigitsSource(DigitsSourceConfig(size=16, split="train"))
    assert train.describe()["sha256"] == again.describe()["sha256"]
    other = DigitsSource(DigitsSourceConfig(size=16, split="train", seed=1))
    assert other.describe()["sha256"] != train.describe()["sha256"]
    tr = {tuple(s.x.flatten().tolist()) for s in train}
    assert sum(tuple(s.x.flatten().tolist()) in tr for s in test) < 10  # only duplicate images overlap


def test_digits_class_subset():
    src = DigitsSource(DigitsSourceConfig(classes=[3, 7]))
    assert {s.condition for s in src} == {3, 7}
    assert src.num_classes == 10
    with pytest.raises(ValidationError, match=r"valid classes are 0\.\.9"):
        DigitsSourceConfig(classes=[3, 12])


# --------------------------------------------------------------------------- scikit-image


def test_skimage_grey_patches():
    src = SkimagePatches(SkimagePatchesConfig(image="cell", patch=32, count=50, seed=3))
    assert len(src) == 50 and src.sample_shape == (1, 32, 32)
    s = src[7]
    assert s.x.shape == (1, 32, 32) and s.x.dtype == torch.float32
    xs = torch.stack([p.x for p in src])
    assert xs.max() > 1.5  # original 0..255 units, not [0, 1]
    assert xs.min() >= 0 and xs.max() <= 255


def test_skimage_rgb_nonsquare_and_determinism():
    cfg = SkimagePatchesConfig(image="immunohistochemistry", patch=[24, 40], count=20, seed=1)
    a, b = SkimagePatches(cfg), SkimagePatches(cfg)
    assert a[5].x.shape == (3, 24, 40)
    assert torch.equal(a[5].x, b[5].x)
    # patch i does not depend on count; another seed moves patches
    longer = SkimagePatches(cfg.model_copy(update={"count": 200}))
    assert torch.equal(a[5].x, longer[5].x)
    other = SkimagePatches(cfg.model_copy(update={"seed": 2}))
    assert not torch.equal(a[5].x, other[5].x)
    info = a.describe()
    assert info["dataset"] == "skimage.data.immunohistochemistry" and len(info["sha256"]) == 16


def test_skimage_errors():
    with pytest.raises(ValidationError) as e:
        SkimagePatchesConfig(image="nope")
    assert "cell" in str(e.value) and "immunohistochemistry" in str(e.value)
    with pytest.raises(ValidationError, match="available"):
        SkimagePatchesConfig(image="cells3d")  # needs a download
    with pytest.raises(ValueError, match="larger than"):
        SkimagePatches(SkimagePatchesConfig(image="microaneurysms", patch=200))
    with pytest.raises(IndexError):
        SkimagePatches(SkimagePatchesConfig(count=3))[3]


@pytest.mark.parametrize("name", ["camera", "coins", "moon", "astronaut"])
def test_skimage_bundled_images_load(name):
    assert name in SKIMAGE_IMAGES
    src = SkimagePatches(SkimagePatchesConfig(image=name, patch=16, count=2))
    assert src[0].x.shape[1:] == (16, 16)


# --------------------------------------------------------------------------- batching


def test_collate(rng):
    x = rng.normal(size=(10, 2, 6)).astype(np.float32)
    mask = np.ones_like(x)
    mask[3, 1, 2] = 0
    src = ArraySource.from_array(x, labels=np.arange(10) % 3, mask=mask)
    xb, cond, mb = collate([src[i] for i in range(4)])
    assert xb.shape == (4, 2, 6) and cond == [0, 1, 2, 0] and mb.shape == (4, 2, 6) and mb[3, 1, 2] == 0
    xb, cond, mb = collate([s for s in ArraySource.from_array(x)][:3])
    assert cond is None and mb is None


# --------------------------------------------------------------------------- digits classifier


@pytest.mark.parametrize("size", [8, 16])
def test_digits_classifier_scores_real_digits_not_noise(size):
    from sciddpm.components.metrics import DigitsClassifier

    clf = DigitsClassifier(size=size)
    test = DigitsSource(DigitsSourceConfig(size=size, split="test"))
    x = torch.stack([s.x for s in test]).numpy()
    y = np.array([s.condition for s in test])
    assert clf.accuracy(x, y) >= 0.95
    assert clf(torch.from_numpy(x), torch.from_numpy(y)) == clf.accuracy(x, y)
    rng = np.random.default_rng(0)
    # Generated digits have a slightly noisy, offset background; a clean digit must still count.
    shifted = x + 0.5 + rng.normal(0, 0.3, size=x.shape)
    assert clf.accuracy(shifted, y) >= 0.95
    noise = rng.uniform(0, 16, size=(1000, 1, size, size))
    assert clf.accuracy(noise, rng.integers(0, 10, 1000)) < 0.2  # chance is 0.1
    with pytest.raises(ValueError, match=rf"\(N, 1, {size}, {size}\)"):
        clf.predict(np.zeros((3, 1, size + 1, size + 1)))


def test_spread_indices_are_seeded_distinct_sorted_and_reach_the_end():
    from sciddpm.data import spread_indices

    picked = spread_indices(1000, 50, seed=3)
    assert picked == spread_indices(1000, 50, seed=3) != spread_indices(1000, 50, seed=4)
    assert len(set(picked)) == 50 and picked == sorted(picked)
    assert max(picked) > 500  # not the first 50 of a time-sorted source
    assert spread_indices(10, 50) == list(range(10))
