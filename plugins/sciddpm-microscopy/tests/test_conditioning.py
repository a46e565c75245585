"""The restoration conditioner: its own fitted input percentiles, shapes, null input and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sciddpm.interfaces import DataSource, Sample

from sciddpm_microscopy.conditioning import RestorationConditioner, RestorationConditionerConfig


class _Pairs(DataSource):
    """Four 8 x 8 samples whose input is 0.1 x the target + an offset of 100 (a dimmer camera)."""

    sample_shape = (1, 8, 8)

    def __init__(self, missing: bool = False) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(4, 1, 8, 8, generator=g) * 1000
        self.missing = missing

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> Sample:
        cond = None if self.missing and i == 2 else {"input": self.x[i] * 0.1 + 100}
        return Sample(self.x[i], cond)


def _fitted() -> tuple[RestorationConditioner, _Pairs]:
    cond = RestorationConditioner(RestorationConditionerConfig(data_shape=[1, 8, 8]))
    source = _Pairs()
    cond.fit(source)
    return cond, source


def test_inputs_get_their_own_percentiles_and_forward_matches_normalize() -> None:
    cond, source = _fitted()
    inputs = torch.stack([source[i].condition["input"] for i in range(4)]).double().numpy()
    lo, hi = np.percentile(inputs, [3.0, 99.8])
    assert float(cond.input_low[0]) == pytest.approx(lo, rel=1e-5)
    assert float(cond.input_high[0]) == pytest.approx(hi, rel=1e-5)
    out = cond([source[i].condition for i in range(4)], 4)
    assert out.concat.shape == (4, 1, 8, 8) and cond.concat_channels == 1
    torch.testing.assert_close(out.concat, cond.normalize(torch.from_numpy(inputs).float()))
    one = cond(source[0].condition, 3)  # one mapping: the same input for every sample of the batch
    assert one.concat.shape == (3, 1, 8, 8)
    torch.testing.assert_close(one.concat[2], out.concat[0])
    whole = cond.normalize(torch.full((1, 1, 40, 24), float(lo)))  # any size: a whole image
    torch.testing.assert_close(whole, torch.full_like(whole, -1.0))
    assert cond.null(2).concat.shape == (2, 1, 8, 8) and not cond.null(2).concat.any()


def test_the_fitted_percentiles_travel_in_the_state_dict() -> None:
    cond, source = _fitted()
    fresh = RestorationConditioner(RestorationConditionerConfig(data_shape=[1, 8, 8]))
    fresh.load_state_dict(cond.state_dict())
    torch.testing.assert_close(fresh(source[1].condition, 1).concat, cond(source[1].condition, 1).concat)


def test_bad_conditions_get_clear_errors() -> None:
    cond = RestorationConditioner(RestorationConditionerConfig(data_shape=[1, 8, 8]))
    with pytest.raises(ValueError, match=r"sample 2 has none; give the source `input`"):
        cond.fit(_Pairs(missing=True))
    with pytest.raises(RuntimeError, match="not fitted"):
        cond({"input": torch.zeros(1, 8, 8)}, 1)
    cond, _ = _fitted()
    with pytest.raises(
        ValueError, match=r"has shape \(1, 8, 9\); microscopy/restoration expects \(1, 8, 8\)"
    ):
        cond({"input": torch.zeros(1, 8, 9)}, 1)
    with pytest.raises(ValueError, match="3 input images for a batch of 2"):
        cond({"input": torch.zeros(3, 1, 8, 8)}, 2)
    with pytest.raises(ValueError, match=r"expects \(B, 1, \*spatial\)"):
        cond.normalize(torch.zeros(1, 2, 8, 8))
    with pytest.raises(ValueError, match="data_shape"):
        RestorationConditioner(RestorationConditionerConfig())
