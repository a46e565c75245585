"""CARE's percentile normalisation as a fitted encoder: exact inverse, saved state, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sciddpm.data import ArraySource

from sciddpm_microscopy.normalization import PercentileNormalize, PercentileNormalizeConfig


def _images() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 2, 16, 16, generator=g) * 1000 + 100  # uint16-like camera units
    x[:, 1] = x[:, 1] * 0.1 + 40
    return x


def test_the_percentiles_map_to_minus_one_and_one_and_decode_inverts_exactly() -> None:
    x = _images()
    enc = PercentileNormalize()
    enc.fit(ArraySource.from_array(x))
    for c in range(2):
        lo, hi = np.percentile(x[:, c].double().numpy(), [3.0, 99.8])
        assert float(enc.low_value[c]) == pytest.approx(lo, rel=1e-6)
        assert float(enc.high_value[c]) == pytest.approx(hi, rel=1e-6)
    z = enc.encode(x)
    assert z.shape == x.shape
    assert float(z.min()) < -0.9 and float(z.max()) > 0.99  # not clipped beyond the percentiles
    torch.testing.assert_close(enc.decode(z), x, rtol=1e-5, atol=1e-3)
    z64 = enc.encode(x.double())
    torch.testing.assert_close(enc.decode(z64), x.double(), rtol=1e-12, atol=1e-9)


def test_a_fresh_encoder_loads_the_fitted_state() -> None:
    x = _images()
    enc = PercentileNormalize(PercentileNormalizeConfig(low=1.0, high=99.0))
    enc.fit(ArraySource.from_array(x))
    loaded = PercentileNormalize()
    loaded.load_state_dict(enc.state_dict())
    torch.testing.assert_close(loaded.encode(x), enc.encode(x))


def test_masked_values_do_not_enter_the_fit() -> None:
    x = _images()
    mask = torch.ones_like(x)
    x[:, :, :2] = 1e6  # fill values of missing rows
    mask[:, :, :2] = 0
    enc = PercentileNormalize()
    enc.fit(ArraySource.from_array(x, mask=mask))
    assert float(enc.high_value[0]) < 1200


def test_a_subset_estimates_the_percentiles_of_large_data() -> None:
    x = _images()
    enc = PercentileNormalize(PercentileNormalizeConfig(max_values=1000))
    enc.fit(ArraySource.from_array(x))
    lo, hi = np.percentile(x[:, 0].numpy(), [3.0, 99.8])
    assert float(enc.low_value[0]) == pytest.approx(lo, rel=0.05)
    assert float(enc.high_value[0]) == pytest.approx(hi, rel=0.05)


def test_bad_inputs_get_clear_errors() -> None:
    x = _images()
    x[:, 1] = 7.0
    with pytest.raises(ValueError, match=r"channel 1 of the training data is constant .*7"):
        PercentileNormalize().fit(ArraySource.from_array(x))
    with pytest.raises(RuntimeError, match="not fitted"):
        PercentileNormalize().encode(x)
    enc = PercentileNormalize()
    enc.fit(ArraySource.from_array(_images()))
    with pytest.raises(ValueError, match=r"fitted on 2 channels .* \(4, 3, 16, 16\)"):
        enc.encode(torch.zeros(4, 3, 16, 16))
    with pytest.raises(ValueError, match="must be below"):
        PercentileNormalizeConfig(low=99.0, high=50.0)
