"""Calibrated restoration intervals: scale the ensemble's interval until it covers what it claims.

An ensemble's central interval covers the truth at its nominal level only if the model's
posterior is right; a model can be under- or over-confident (the benchmark's is too wide: 96-97 %
of pixels inside a nominal 90 % interval). Following Angelopoulos et al. 2022 ("Image-to-image
regression with distribution-free uncertainty quantification", ICML; conformal risk control of
the fraction of pixels outside), :func:`calibrate` takes restorations of held-out calibration
pairs, and for each pixel finds the factor ``lambda`` by which the interval must be stretched
about the mean (each side, ``mean -/+ lambda * (mean - lower, upper - mean)``) to reach the
truth. The ``level`` quantile of those factors is the :class:`Calibration`: on images
exchangeable with the calibration ones, the stretched intervals cover the truth at ``level`` of
the pixels on average. ``lambda < 1`` narrows an over-wide ensemble, ``> 1`` widens an
over-confident one.

The calibration belongs to one model, member count, sampler and step count: it is stored with
them (``calibration.json`` beside the model) and :func:`~sciddpm_microscopy.restoration.restore`
refuses one made for other settings.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["CALIBRATION_FILE", "Calibration", "calibrate", "stretch"]

CALIBRATION_FILE = "calibration.json"


@dataclass(frozen=True)
class Calibration:
    """The interval scale ``scale`` (lambda) for a nominal ``level``, and what it was measured on.

    ``members``, ``steps`` and ``scheduler`` are the restoration settings it holds for;
    ``images``/``pixels`` the calibration set's size; ``coverage_before`` the calibration pixels'
    coverage by the unscaled interval.
    """

    level: float
    scale: float
    members: int
    steps: int
    scheduler: Any
    images: int
    pixels: int
    coverage_before: float

    def save(self, directory: str | Path) -> Path:
        """Write ``calibration.json`` into ``directory`` (e.g. the model's); returns its path."""
        from sciddpm.persistence import write_json

        return write_json(Path(directory) / CALIBRATION_FILE, asdict(self))

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        """Read a calibration written by :meth:`save` (a file, or the directory holding it).

        Raises FileNotFoundError naming the file, ValueError for a file of another layout.
        """
        path = Path(path)
        path = path / CALIBRATION_FILE if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"{str(path)!r} does not exist: calibrate first (Calibration.save)")
        data = json.loads(path.read_text(encoding="utf-8"))
        try:
            return cls(**data)
        except TypeError as err:
            raise ValueError(f"{str(path)!r} is not a sciddpm-microscopy calibration ({err})") from None

    def check(self, members: int, steps: int, scheduler: Any, level: float) -> None:
        """Raise ValueError unless a restoration with these settings is the one calibrated."""
        mine = {
            "members": self.members,
            "steps": self.steps,
            "scheduler": self.scheduler,
            "level": self.level,
        }
        given = {"members": members, "steps": steps, "scheduler": scheduler, "level": level}
        differ = [k for k in mine if mine[k] != given[k]]
        if differ:
            k = differ[0]
            raise ValueError(
                f"the calibration was measured with {k}={mine[k]!r}, this restoration uses {given[k]!r}; "
                f"restore with the calibrated settings or calibrate again"
            )


def stretch(
    mean: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean - scale (mean - lower), mean + scale (upper - mean))``, any matching shapes."""
    return mean - scale * (mean - lower), mean + scale * (upper - mean)


def _reach(mean: np.ndarray, lower: np.ndarray, upper: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per pixel, the smallest stretch of the interval about the mean that contains the truth."""
    tiny = np.finfo(np.float64).tiny
    below = (mean - truth) / np.maximum(mean - lower, tiny)
    above = (truth - mean) / np.maximum(upper - mean, tiny)
    return np.maximum(np.maximum(below, above), 0.0)


def calibrate(restorations: Sequence[Any], truths: Sequence[Any]) -> Calibration:
    """The :class:`Calibration` of restorations of held-out inputs against their ``truths``.

    ``restorations`` are :class:`~sciddpm_microscopy.restoration.Restoration` s made by ``restore``
    with the settings to calibrate (the same members, steps, sampler and ``level`` for all; use
    images the model was not trained on); ``truths`` the matching clean images ``(C, *spatial)`` in
    the target's units. The scale is the ``level`` quantile of the per-pixel stretch that reaches
    the truth, with the finite-sample correction ``ceil((n + 1) level) / n`` of split conformal
    prediction (Angelopoulos & Bates 2021, Sec. 1.1). Raises ValueError for unpaired or misshapen
    inputs, none at all, or restorations made with different settings.
    """
    if not restorations or len(restorations) != len(truths):
        raise ValueError(
            f"give one truth per restoration and at least one pair, got {len(restorations)} and {len(truths)}"
        )
    first = restorations[0]
    settings = (first.run.get("members"), first.run.get("steps"), first.run.get("scheduler"), first.level)
    reach, inside = [], []
    for out, truth in zip(restorations, truths, strict=True):
        if (out.run.get("members"), out.run.get("steps"), out.run.get("scheduler"), out.level) != settings:
            raise ValueError(
                "the restorations to calibrate were made with different members, steps, sampler or level"
            )
        if "calibration" in out.run:
            raise ValueError("calibrate restorations made without a calibration")
        t = np.asarray(truth, dtype=np.float64)
        if t.size != out.mean.numel():
            raise ValueError(
                f"a truth of shape {t.shape} does not pair with a restoration of {tuple(out.mean.shape)}"
            )
        t = t.reshape(out.mean.shape)
        mean, lo, hi = (v.double().numpy() for v in (out.mean, out.lower, out.upper))
        reach.append(_reach(mean, lo, hi, t).ravel())
        inside.append(((t >= lo) & (t <= hi)).ravel())
    r = np.concatenate(reach)
    n = len(r)
    q = min(np.ceil((n + 1) * first.level) / n, 1.0)
    members, steps, scheduler, level = settings
    return Calibration(
        level=float(level),
        scale=float(np.quantile(r, q, method="higher")),
        members=int(members),
        steps=int(steps),
        scheduler=scheduler,
        images=len(restorations),
        pixels=n,
        coverage_before=float(np.concatenate(inside).mean()),
    )
