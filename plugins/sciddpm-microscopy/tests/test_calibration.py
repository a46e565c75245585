"""Calibrated intervals: the conformal scale restores the nominal coverage on new images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sciddpm_microscopy.calibration import Calibration, calibrate, stretch
from sciddpm_microscopy.restoration import Restoration


def _restorations(n: int, half_width: float, seed: int) -> tuple[list[Restoration], list[np.ndarray]]:
    """Gaussian truths N(mean, 1) around a known mean, with intervals mean -/+ half_width."""
    rng = np.random.default_rng(seed)
    outs, truths = [], []
    for _ in range(n):
        mean = torch.from_numpy(rng.normal(size=(1, 32, 32)))
        truths.append((mean + torch.from_numpy(rng.normal(size=(1, 32, 32)))).numpy())
        run = {"members": 20, "steps": 20, "scheduler": {"type": "ddim"}, "seed": 0}
        outs.append(
            Restoration(
                mean, torch.ones_like(mean), mean - half_width, mean + half_width, mean[None], 0.9, run
            )
        )
    return outs, truths


def _coverage(outs: list[Restoration], truths: list[np.ndarray], scale: float) -> float:
    inside = []
    for out, t in zip(outs, truths, strict=True):
        lo, hi = stretch(out.mean, out.lower, out.upper, scale)
        inside.append(((t >= lo.numpy()) & (t <= hi.numpy())).ravel())
    return float(np.concatenate(inside).mean())


@pytest.mark.parametrize(("half_width", "want_scale"), [(3.0, 1.645 / 3.0), (0.5, 1.645 / 0.5)])
def test_the_scale_brings_new_images_to_the_nominal_coverage(half_width: float, want_scale: float) -> None:
    """Too wide (the benchmark's case) or too narrow: the scale is the Gaussian 90 % quantile over
    the half-width, and fresh images are covered at 90 %."""
    cal = calibrate(*_restorations(8, half_width, seed=0))
    assert cal.scale == pytest.approx(want_scale, rel=0.05)
    assert cal.coverage_before == pytest.approx(0.997 if half_width == 3.0 else 0.383, abs=0.01)
    fresh = _restorations(8, half_width, seed=1)
    assert _coverage(*fresh, scale=cal.scale) == pytest.approx(0.9, abs=0.01)
    assert _coverage(*fresh, scale=1.0) == pytest.approx(cal.coverage_before, abs=0.01)


def test_calibrations_round_trip_and_refuse_other_settings(tmp_path: Path) -> None:
    cal = calibrate(*_restorations(2, 1.0, seed=0))
    assert Calibration.load(cal.save(tmp_path)) == cal == Calibration.load(tmp_path)
    cal.check(20, 20, {"type": "ddim"}, 0.9)
    with pytest.raises(ValueError, match=r"measured with steps=20, this restoration uses 50"):
        cal.check(20, 50, {"type": "ddim"}, 0.9)
    with pytest.raises(FileNotFoundError, match="calibrate first"):
        Calibration.load(tmp_path / "nothing")
    outs, truths = _restorations(2, 1.0, seed=0)
    outs[1].run["steps"] = 5
    with pytest.raises(ValueError, match="different members, steps"):
        calibrate(outs, truths)
    with pytest.raises(ValueError, match=r"truth of shape \(3, 3\) does not pair"):
        calibrate(outs[:1], [np.zeros((3, 3))])
