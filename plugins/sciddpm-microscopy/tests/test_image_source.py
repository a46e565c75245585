"""The microscopy/image source: files to foreground patches, pairs, synthetic inputs and clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sciddpm_microscopy.camera import CameraConfig
from sciddpm_microscopy.source import ImageSource, ImageSourceConfig, PairMismatchError
from sciddpm_microscopy.synthetic import nuclei
from sciddpm_microscopy.writing import write_ome_tiff, write_ome_zarr


def _uint16(clean: np.ndarray) -> np.ndarray:
    return (clean * 3000 + 100).astype(np.uint16)


def _write_2d(folder: Path, names: list[str], seed: int = 0, shape=(64, 64)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(names):
        image = _uint16(nuclei(shape, np.random.default_rng(seed + k)))
        write_ome_tiff(
            folder / name, image[None], "CYX", channel_names=["DAPI"], physical_sizes={"Y": 0.2, "X": 0.2}
        )


def test_patches_are_foreground_reproducible_and_in_file_units(tmp_path: Path) -> None:
    _write_2d(tmp_path / "gt", ["a.ome.tif", "b.ome.tif"])
    cfg = ImageSourceConfig(path=str(tmp_path / "gt"), patch=[16, 16], patches_per_image=5, foreground=0.4)
    src = ImageSource(cfg)
    assert len(src) == 10 and src.sample_shape == (1, 16, 16)
    assert src.channel_names == ["DAPI"] and src.physical_sizes == {"Y": 0.2, "X": 0.2}
    s = src[3]
    assert s.x.dtype == torch.float32 and s.x.shape == (1, 16, 16) and s.condition is None
    torch.testing.assert_close(ImageSource(cfg)[3].x, s.x)  # same origins for the same seed
    bright = [float(np.percentile(src.frames[k].read((slice(None),) * 3), 99.9)) for k in range(2)]
    for i in range(len(src)):  # every patch reaches 0.4 of its image's bright level (raw max >= it)
        k = src._origins[i][0]
        assert float(src[i].x.max()) >= 0.4 * bright[k] * 0.9
    assert float(s.x.max()) > 200  # camera units (ADU), not [0, 1]
    everything = ImageSource(cfg.model_copy(update={"foreground": 0.0, "patches_per_image": 200}))
    dark = sum(float(everything[i].x.max()) < 0.2 * bright[0] for i in range(200))
    assert dark > 20  # without the rule, many patches are background


def test_paired_inputs_are_matched_by_name_and_grids_checked(tmp_path: Path) -> None:
    _write_2d(tmp_path / "gt", ["a.ome.tif", "b.ome.tif"])
    _write_2d(tmp_path / "low", ["b.ome.tif", "a.ome.tif"], seed=10)
    src = ImageSource(
        ImageSourceConfig(path=str(tmp_path / "gt"), input=str(tmp_path / "low"), patch=[16, 16])
    )
    s = src[0]
    assert s.condition["input"].shape == s.x.shape
    k, origin = src._origins[0]
    want = src.input_frames[k].read(
        (slice(None), slice(origin[0], origin[0] + 16), slice(origin[1], origin[1] + 16))
    )
    np.testing.assert_array_equal(s.condition["input"].numpy(), want[:, 0])
    assert src.inputs[0].path.name == src.images[0].path.name

    _write_2d(tmp_path / "small", ["a.ome.tif", "b.ome.tif"], shape=(48, 64))
    with pytest.raises(PairMismatchError, match=r"input .*a\.ome\.tif.* does not match target"):
        ImageSource(
            ImageSourceConfig(path=str(tmp_path / "gt"), input=str(tmp_path / "small"), patch=[16, 16])
        )
    (tmp_path / "one").mkdir()
    _write_2d(tmp_path / "one", ["a.ome.tif"])
    with pytest.raises(PairMismatchError, match=r"target\(s\) \['b.ome.tif'\]"):
        ImageSource(ImageSourceConfig(path=str(tmp_path / "gt"), input=str(tmp_path / "one"), patch=[16, 16]))


def test_synthetic_inputs_follow_the_camera_and_are_reproducible(tmp_path: Path) -> None:
    _write_2d(tmp_path / "gt", ["a.ome.tif"])
    camera = CameraConfig(photons=10.0, read_noise=1.0, offset=100.0, psf_sigma=[1.0], downsample=2)
    cfg = ImageSourceConfig(path=str(tmp_path / "gt"), degrade=camera, patch=[16, 16], patches_per_image=4)
    src = ImageSource(cfg)
    s = src[1]
    assert s.condition["input"].shape == (1, 16, 16)
    np.testing.assert_array_equal(
        s.condition["input"][:, ::2, ::2].numpy(), s.condition["input"][:, 1::2, 1::2].numpy()
    )  # binned
    torch.testing.assert_close(ImageSource(cfg)[1].condition["input"], s.condition["input"])
    assert not torch.equal(src[2].condition["input"], s.condition["input"])


def test_stacks_and_ome_zarr_give_3d_patches(tmp_path: Path) -> None:
    stack = _uint16(nuclei((8, 32, 32), np.random.default_rng(3)))
    write_ome_zarr(tmp_path / "s.ome.zarr", np.stack([stack, stack // 2]), "CZYX",
                   channel_names=["H2B", "actin"], physical_sizes={"Z": 1.0, "Y": 0.2, "X": 0.2})  # fmt: skip
    src = ImageSource(
        ImageSourceConfig(path=str(tmp_path / "s.ome.zarr"), patch=[4, 16, 16], patches_per_image=3)
    )
    assert src.sample_shape == (2, 4, 16, 16) and src.dims == 3
    assert src[0].x.shape == (2, 4, 16, 16)
    assert src.channel_names == ["H2B", "actin"] and src.physical_sizes["Z"] == 1.0


def test_bad_inputs_get_clear_errors(tmp_path: Path) -> None:
    _write_2d(tmp_path / "gt", ["a.ome.tif"])
    with pytest.raises(
        ValueError, match=r"patch \[80, 16\] is larger than image .*a\.ome\.tif of size \[64, 64\]"
    ):
        ImageSource(ImageSourceConfig(path=str(tmp_path / "gt"), patch=[80, 16]))
    with pytest.raises(ValueError, match=r"has 3 sizes but the images are 2-D"):
        ImageSource(ImageSourceConfig(path=str(tmp_path / "gt"), patch=[4, 16, 16]))
    flat = tmp_path / "flat"
    flat.mkdir()
    spot = np.full((1, 32, 32), 7, np.uint16)
    spot[0, :2, :2] = 900  # one bright spot: smoothed, no patch reaches 0.99 of it
    write_ome_tiff(flat / "f.ome.tif", spot, "CYX")
    with pytest.raises(ValueError, match=r"no patch of .*f\.ome\.tif reached foreground"):
        ImageSource(ImageSourceConfig(path=str(flat), patch=[8, 8], foreground=0.99, max_tries=5))
    with pytest.raises(ValueError, match=r"a\.ome\.tif: axes 'CY' .* have no Y and X"):
        ImageSource(ImageSourceConfig(path=str(tmp_path / "gt"), axes="CY", patch=[8, 8]))
    with pytest.raises(ValueError, match=r"a\.ome\.tif: axes='ZYX' names 3 axes"):
        ImageSource(ImageSourceConfig(path=str(tmp_path / "gt"), axes="ZYX", patch=[8, 8]))
    with pytest.raises(ValueError, match="either `input`"):
        ImageSource(
            ImageSourceConfig(path=str(tmp_path / "gt"), input=str(tmp_path / "gt"), degrade=CameraConfig())
        )
    with pytest.raises(IndexError):
        ImageSource(ImageSourceConfig(path=str(tmp_path / "gt"), patch=[8, 8], patches_per_image=2))[2]


def test_uint16_saturation_is_reported(tmp_path: Path) -> None:
    image = _uint16(nuclei((64, 64), np.random.default_rng(0)))
    image[:4, :4] = 65535
    (tmp_path / "sat").mkdir()
    write_ome_tiff(tmp_path / "sat" / "s.ome.tif", image[None], "CYX")
    with pytest.warns(
        UserWarning, match=r"0.39% of pixels \(of a strided scan\) are at the maximum .*saturated"
    ):
        src = ImageSource(ImageSourceConfig(path=str(tmp_path / "sat"), patch=[16, 16], patches_per_image=1))
    assert list(src.describe()["saturated_fraction"].values()) == [pytest.approx(16 / 4096)]


def test_the_simulated_camera_counts_photons_above_the_background(tmp_path: Path) -> None:
    """E[input] = offset + gain * photons * (clean - background) / (bright - background), per pixel."""
    folder = tmp_path / "gt"
    folder.mkdir()
    clean = (nuclei((64, 64), np.random.default_rng(0)) * 3000 + 1000).astype(np.uint16)  # offset 1000
    write_ome_tiff(folder / "a.ome.tif", clean[None], "CYX")
    camera = CameraConfig(photons=50.0, read_noise=0.0, offset=100.0, gain=2.0)
    src = ImageSource(
        ImageSourceConfig(path=str(folder), degrade=camera, patch=[32, 32], patches_per_image=8)
    )
    bg, bright = np.percentile(clean, [1.0, 99.9])
    got, want, var = [], [], []
    for i in range(len(src)):
        s = src[i]
        lam = 50.0 * np.clip((s.x.numpy() - bg) / (bright - bg), 0, None)
        got.append(s.condition["input"].numpy())
        want.append(100.0 + 2.0 * lam)
        var.append(4.0 * lam)
    got, want, var = np.concatenate(got), np.concatenate(want), np.concatenate(var)
    assert abs(got.mean() - want.mean()) < 4 * np.sqrt(var.sum()) / got.size
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.9


def test_pixel_sizes_are_compared_in_one_unit(tmp_path: Path) -> None:
    image = _uint16(nuclei((64, 64), np.random.default_rng(0)))[None]
    for folder, sizes, units in [
        ("gt", {"Y": 0.1, "X": 0.1}, {"Y": "micrometer", "X": "micrometer"}),
        ("nm", {"Y": 100.0, "X": 100.0}, {"Y": "nanometer", "X": "nanometer"}),
        ("tiny", {"Y": 0.1, "X": 0.1}, {"Y": "nanometer", "X": "nanometer"}),
    ]:
        (tmp_path / folder).mkdir()
        write_ome_tiff(tmp_path / folder / "a.ome.tif", image, "CYX", physical_sizes=sizes, units=units)
    ImageSource(ImageSourceConfig(path=str(tmp_path / "gt"), input=str(tmp_path / "nm"), patch=[16, 16]))
    with pytest.raises(PairMismatchError, match="nanometer"):
        ImageSource(
            ImageSourceConfig(path=str(tmp_path / "gt"), input=str(tmp_path / "tiny"), patch=[16, 16])
        )


def test_nan_pixels_are_an_error_naming_the_file_and_the_hash_follows_the_content(tmp_path: Path) -> None:
    image = nuclei((32, 32), np.random.default_rng(0))[None]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write_ome_tiff(tmp_path / "a" / "x.ome.tif", image, "CYX")
    write_ome_tiff(tmp_path / "b" / "x.ome.tif", image * 2, "CYX")
    cfg = ImageSourceConfig(path=str(tmp_path / "a"), patch=[32, 32], patches_per_image=1, foreground=0)
    one, two = ImageSource(cfg), ImageSource(cfg.model_copy(update={"path": str(tmp_path / "b")}))
    assert one.describe()["content_hash"] == ImageSource(cfg).describe()["content_hash"]
    assert one.describe()["content_hash"] != two.describe()["content_hash"]
    image[0, 5, 5] = np.nan
    (tmp_path / "c").mkdir()
    write_ome_tiff(tmp_path / "c" / "x.ome.tif", image, "CYX")
    nan_source = ImageSource(cfg.model_copy(update={"path": str(tmp_path / "c")}))
    with pytest.raises(ValueError, match=r"sample 0 of microscopy/image reads NaN or inf from .*x\.ome\.tif"):
        nan_source[0]
    with pytest.raises(ValueError, match="positive sizes"):
        ImageSourceConfig(path="x", patch=[0, 16])


def test_class_labels_come_from_folders_and_drive_a_class_conditional_model(tmp_path: Path) -> None:
    from sciddpm import train

    for k, line in enumerate(["HeLa", "U2OS"]):
        _write_2d(tmp_path / "lines" / line, [f"{line}_{i}.ome.tif" for i in range(2)], seed=10 * k)
    cfg = ImageSourceConfig(
        path=str(tmp_path / "lines" / "*" / "*.ome.tif"),
        classes=["HeLa", "U2OS"],
        patch=[16, 16],
        patches_per_image=2,
    )
    src = ImageSource(cfg)
    assert src.num_classes == 2 and len(src) == 8
    labels = [src[i].condition for i in range(len(src))]
    assert labels == [0, 0, 0, 0, 1, 1, 1, 1]
    run = {
        "pipeline": {
            "encoder": {"type": "microscopy/percentile"},
            "denoiser": {"type": "unet", "channels": [8, 8], "blocks_per_level": 1, "groups": 4, "heads": 1,
                         "mid_attention": False},
            "conditioner": {"type": "class_label"},
            "scheduler": {"type": "ddim"},
        },
        "train": {"steps": 2, "batch_size": 4},
    }  # fmt: skip
    pipe = train(run, tmp_path / "run", source=src, progress=False)
    out = pipe.sample(2, [0, 1], steps=2)
    assert out.shape == (2, 1, 16, 16) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match=r"folder\(s\) \['U2OS'\], which are not in classes \['HeLa'\]"):
        ImageSource(cfg.model_copy(update={"classes": ["HeLa"]}))
    with pytest.raises(ValueError, match="cannot be combined with `input` or `degrade`"):
        ImageSource(cfg.model_copy(update={"degrade": CameraConfig()}))
