"""Calibrated intervals: conformal risk control of the fraction of pixels outside the interval."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sciddpm_microscopy.calibration import Calibration, calibrate, risk_controlling_scale, stretch
from sciddpm_microscopy.restoration import Restoration

RUN = {"members": 20, "steps": 20, "scheduler": {"type": "ddim"}, "seed": 0, "input_percentiles": "fitted",
       "model_sha256": "abc"}  # fmt: skip


def _restorations(n: int, half_width: float, seed: int) -> tuple[list[Restoration], list[np.ndarray]]:
    """Gaussian truths N(mean, 1) around a known mean, with intervals mean -/+ half_width."""
    rng = np.random.default_rng(seed)
    outs, truths = [], []
    for _ in range(n):
        mean = torch.from_numpy(rng.normal(size=(1, 32, 32)))
        truths.append((mean + torch.from_numpy(rng.normal(size=(1, 32, 32)))).numpy())
        outs.append(
            Restoration(
                mean, torch.ones_like(mean), mean - half_width, mean + half_width, mean[None], 0.9, dict(RUN)
            )
        )
    return outs, truths


def _coverage(outs: list[Restoration], truths: list[np.ndarray], scale: float) -> float:
    inside = []
    for out, t in zip(outs, truths, strict=True):
        lo, hi = stretch(out.mean, out.lower, out.upper, scale)
        inside.append(((t >= lo.numpy()) & (t <= hi.numpy())).ravel())
    return float(np.concatenate(inside).mean())


def test_the_scale_is_conformal_risk_control_over_images() -> None:
    """Ten one-pixel images with stretches 1..10: the mean miscoverage at lambda = k is (10 - k) / 10,
    and 10/11 (10 - k)/10 + 1/11 <= 0.1 first holds at k = 10 (risk 0); at level 0.8, k = 9."""
    reach = [np.array([float(k)]) for k in range(1, 11)]
    assert risk_controlling_scale(reach, 0.9) == 10.0
    assert risk_controlling_scale(reach, 0.8) == 9.0  # 10/11 * 0.1 + 1/11 = 0.18 <= 0.2
    # Two pixels per image weigh half each: image i holds {i, i + 0.5}.
    halves = [np.array([k, k + 0.5]) for k in range(1, 11)]
    assert risk_controlling_scale(halves, 0.8) == 9.5
    with pytest.raises(ValueError, match="needs at least 9 calibration images, got 8"):
        risk_controlling_scale(reach[:8], 0.9)
    with pytest.raises(ValueError, match="no finite interval scale"):
        risk_controlling_scale([np.array([math.inf])] * 10, 0.9)


@pytest.mark.parametrize(("half_width", "gaussian_scale"), [(3.0, 1.645 / 3.0), (0.5, 1.645 / 0.5)])
def test_new_images_are_covered_at_the_level(half_width: float, gaussian_scale: float) -> None:
    """Too wide (the benchmark's case) or too narrow: the pixel quantile lands on the Gaussian 90 %
    quantile and covers fresh images at 90 %; risk control covers them at least at 90 % (its
    correction for 40 images asks 92.25 % of the calibration pixels)."""
    quantile = calibrate(*_restorations(12, half_width, seed=0), method="quantile")
    assert quantile.scale == pytest.approx(gaussian_scale, rel=0.05) and quantile.method == "quantile"
    assert quantile.coverage_before == pytest.approx(0.997 if half_width == 3.0 else 0.383, abs=0.01)
    fresh = _restorations(12, half_width, seed=1)
    assert _coverage(*fresh, scale=quantile.scale) == pytest.approx(0.9, abs=0.01)
    assert _coverage(*fresh, scale=1.0) == pytest.approx(quantile.coverage_before, abs=0.01)
    controlled = calibrate(*_restorations(40, half_width, seed=2))
    assert 0.91 <= _coverage(*fresh, scale=controlled.scale) <= 0.94
    with pytest.raises(ValueError, match="method must be 'risk_control' or 'quantile'"):
        calibrate(*_restorations(9, half_width, seed=0), method="conformal")


def test_calibrations_round_trip_and_refuse_other_settings(tmp_path: Path) -> None:
    cal = calibrate(*_restorations(9, 1.0, seed=0))
    assert Calibration.load(cal.save(tmp_path)) == cal == Calibration.load(tmp_path)
    assert cal.model_sha256 == "abc" and cal.input_percentiles == "fitted"
    cal.check(RUN, 0.9)
    with pytest.raises(ValueError, match=r"measured with steps=20, this restoration uses steps=50"):
        cal.check({**RUN, "steps": 50}, 0.9)
    with pytest.raises(ValueError, match="this restoration uses another model"):
        cal.check({**RUN, "model_sha256": "def"}, 0.9)
    with pytest.raises(ValueError, match="input_percentiles='fitted', this restoration uses"):
        cal.check({**RUN, "input_percentiles": "per_image"}, 0.9)
    with pytest.raises(FileNotFoundError, match="calibrate first"):
        Calibration.load(tmp_path / "nothing")
    outs, truths = _restorations(9, 1.0, seed=0)
    outs[1].run["steps"] = 5
    with pytest.raises(ValueError, match="different models, members, steps"):
        calibrate(outs, truths)
    with pytest.raises(ValueError, match=r"truth of shape \(3, 3\) does not pair"):
        calibrate(outs[:1], [np.zeros((3, 3))])
    outs, truths = _restorations(9, 1.0, seed=0)
    outs[0].lower[0, 0, 0] = outs[0].mean[0, 0, 0] + 0.1  # a mean outside its own interval
    with pytest.raises(ValueError, match="mean lies outside its central interval at 1 pixels"):
        calibrate(outs, truths)
