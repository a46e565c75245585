"""Built-in encoders: identity, and Standardize fitted with masks and saved in the state dict."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sciddpm.components.encoders import Identity, IdentityConfig, Standardize, StandardizeConfig
from sciddpm.data import ArraySource


@pytest.fixture
def data() -> np.ndarray:
    rng = np.random.default_rng(0)
    scale = np.array([5.0, 0.01, 300.0])[None, :, None, None]
    offset = np.array([-40.0, 1e-3, 1.0e5])[None, :, None, None]
    return (rng.normal(size=(37, 3, 6, 5)) * scale + offset).astype(np.float32)


def test_identity():
    enc = Identity(IdentityConfig())
    x = torch.randn(2, 3, 7)
    assert enc.encode(x) is x and enc.decode(x) is x
    assert enc.latent_shape((3, 7)) == (3, 7)
    assert list(enc.state_dict()) == []


def test_standardize_stats_match_numpy(data):
    enc = Standardize(StandardizeConfig(batch_size=8))  # several Chan merges
    enc.fit(ArraySource.from_array(data))
    d = data.astype(np.float64)
    np.testing.assert_allclose(enc.mean.numpy(), d.mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(enc.std.numpy(), d.std(axis=(0, 2, 3)), rtol=1e-5)
    assert enc.mean.shape == (3,) and bool(enc.fitted)
    z = enc.encode(torch.from_numpy(data))
    assert z.shape == data.shape
    assert torch.allclose(z.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-3)
    assert torch.allclose(z.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-3)


def test_standardize_round_trip_any_spatial_dims(data):
    enc = Standardize()
    enc.fit(ArraySource.from_array(data))
    x = torch.from_numpy(data)
    torch.testing.assert_close(enc.decode(enc.encode(x)), x, rtol=1e-5, atol=1e-3)
    x1 = x[:, :, 0]  # (B, C, L): the same stats broadcast over one spatial dim
    torch.testing.assert_close(enc.decode(enc.encode(x1)), x1, rtol=1e-6, atol=1e-4)
    x3 = torch.randn(2, 3, 2, 3, 4, dtype=torch.float64)
    torch.testing.assert_close(enc.decode(enc.encode(x3)), x3)


def test_standardize_respects_mask(data):
    rng = np.random.default_rng(1)
    mask = rng.random(data.shape) > 0.3
    dirty = data.copy()
    dirty[~mask] = 1e20  # fill values under the mask must not leak into the stats
    dirty[0, 0, 0, 0] = np.nan
    mask[0, 0, 0, 0] = False
    enc = Standardize(StandardizeConfig(batch_size=5))
    enc.fit(ArraySource.from_array(dirty, mask=mask))
    d = data.astype(np.float64)
    for c in range(3):
        vals = d[:, c][mask[:, c]]
        np.testing.assert_allclose(enc.mean[c].item(), vals.mean(), rtol=1e-6)
        np.testing.assert_allclose(enc.std[c].item(), vals.std(), rtol=1e-5)


def test_standardize_constant_channel_uses_eps():
    x = np.zeros((4, 1, 8), dtype=np.float32) + 3.0
    enc = Standardize(StandardizeConfig(eps=1e-3))
    enc.fit(ArraySource.from_array(x))
    assert enc.std.item() == pytest.approx(1e-3)
    assert torch.isfinite(enc.encode(torch.from_numpy(x))).all()


def test_standardize_unfitted_and_wrong_channels(data):
    enc = Standardize()
    with pytest.raises(RuntimeError, match=r"Standardize encoder is not fitted: call fit\(source\)"):
        enc.encode(torch.zeros(1, 3, 4))
    with pytest.raises(RuntimeError, match="not fitted"):
        enc.decode(torch.zeros(1, 3, 4))
    enc.fit(ArraySource.from_array(data))
    with pytest.raises(ValueError, match="fitted on 3 channels"):
        enc.encode(torch.zeros(1, 2, 4))


def test_standardize_state_dict_round_trip(data):
    enc = Standardize()
    enc.fit(ArraySource.from_array(data))
    state = enc.state_dict()
    assert set(state) == {"mean", "std", "fitted"}
    fresh = Standardize()
    fresh.load_state_dict(state)
    assert bool(fresh.fitted)
    x = torch.from_numpy(data[:2])
    torch.testing.assert_close(fresh.encode(x), enc.encode(x))
