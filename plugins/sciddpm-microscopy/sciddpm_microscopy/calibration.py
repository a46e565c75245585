"""Calibrated restoration intervals: scale the ensemble's interval until it covers what it claims.

An ensemble's central interval covers the truth at its nominal level only if the model's
posterior is right; a model can be under- or over-confident (the benchmark's is too wide: 96-97 %
of pixels inside a nominal 90 % interval). :func:`calibrate` applies conformal risk control
(Angelopoulos, Bates, Fisch, Lei & Schuster 2022, "Conformal risk control", Theorem 1) to the
fraction of an image's pixels outside the interval: the interval is stretched about the mean (each
side, ``mean -/+ lambda * (mean - lower, upper - mean)``) by the smallest ``lambda`` whose corrected
miscoverage on ``n`` held-out calibration images, ``n / (n + 1) * mean_i L_i(lambda) + 1 / (n + 1)``,
is at most ``1 - level``. The guarantee: for a new image exchangeable with the calibration images
(same microscope, sample type and model), the *expected* fraction of its pixels outside is at most
``1 - level``. It says nothing about a particular image or region, needs ``n >= level / (1 -
level)`` images (9 for 0.9) and is conservative for few: the correction takes ``1 / (n + 1)`` of the
miscoverage budget. ``method="quantile"`` takes the plain ``level`` quantile of the pixels' stretches
instead: on target on average, without a guarantee. ``lambda < 1`` narrows an over-wide ensemble,
``> 1`` widens an over-confident one.

The calibration belongs to one model (its weights' sha256), member count, sampler, step count,
level and input normalisation: it is stored with them (``calibration.json`` beside the model) and
:func:`~sciddpm_microscopy.restoration.restore` refuses one made for anything else, before sampling.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

__all__ = [
    "CALIBRATION_FILE",
    "Calibration",
    "calibrate",
    "pixel_quantile_scale",
    "risk_controlling_scale",
    "stretch",
]

CALIBRATION_FILE = "calibration.json"


@dataclass(frozen=True)
class Calibration:
    """The interval scale ``scale`` (lambda) for a nominal ``level``, and what it was measured on.

    ``members``, ``steps``, ``scheduler``, ``input_percentiles`` and ``model_sha256`` (of the
    network's weights) are the restoration settings it holds for; ``images``/``pixels`` the
    calibration set's size; ``coverage_before`` the calibration pixels' coverage by the unscaled
    interval.
    """

    level: float
    scale: float
    members: int
    steps: int
    scheduler: Any
    images: int
    pixels: int
    coverage_before: float
    model_sha256: str = ""
    input_percentiles: str = "fitted"
    method: str = "risk_control"

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

    def check(self, run: dict[str, Any], level: float) -> None:
        """Raise ValueError unless a restoration's ``run`` settings and ``level`` are the calibrated ones."""
        mine = {
            "members": self.members,
            "steps": self.steps,
            "scheduler": self.scheduler,
            "level": self.level,
            "input_percentiles": self.input_percentiles,
            "model_sha256": self.model_sha256,
        }
        given = {**{k: run.get(k) for k in mine}, "level": level}
        given["input_percentiles"] = run.get("input_percentiles", "fitted")
        differ = [k for k in mine if mine[k] != given[k]]
        if differ:
            k = differ[0]
            what = "another model" if k == "model_sha256" else f"{k}={given[k]!r}"
            raise ValueError(
                f"the calibration was measured with {k}={mine[k]!r}, this restoration uses {what}; "
                f"restore with the calibrated model and settings, or calibrate again"
            )


def stretch(
    mean: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean - scale (mean - lower), mean + scale (upper - mean))``, any matching shapes."""
    return mean - scale * (mean - lower), mean + scale * (upper - mean)


def _reach(mean: np.ndarray, lower: np.ndarray, upper: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per pixel, the smallest stretch of the interval about the mean that contains the truth.

    0 where the truth is the mean, inf where the interval has no width on the truth's side.
    Raises ValueError where the mean lies outside its own interval (a stretch about it is undefined).
    """
    outside = int(((mean < lower) | (mean > upper)).sum())
    if outside:
        raise ValueError(
            f"the ensemble mean lies outside its central interval at {outside} pixels; calibrate a "
            "wider level (more members) so the interval contains the mean"
        )
    with np.errstate(divide="ignore", invalid="ignore"):
        below = np.where(truth < mean, (mean - truth) / (mean - lower), 0.0)
        above = np.where(truth > mean, (truth - mean) / (upper - mean), 0.0)
    return np.maximum(below, above)


def risk_controlling_scale(reach: Sequence[np.ndarray], level: float) -> float:
    """The smallest ``lambda`` whose corrected mean miscoverage over the images is at most ``1 - level``.

    ``reach[i]`` holds image ``i``'s per-pixel stretches; the loss of image ``i`` at ``lambda`` is
    the fraction of its pixels with a stretch above ``lambda`` (monotone, at most 1), and
    ``lambda`` is the smallest candidate with ``n / (n + 1) R(lambda) + 1 / (n + 1) <= 1 - level``
    (conformal risk control, Angelopoulos et al. 2022, Theorem 1). Raises ValueError for fewer than
    ``level / (1 - level)`` images, or when no finite ``lambda`` qualifies (zero-width intervals).
    """
    n, alpha = len(reach), 1 - level
    needed = math.ceil(level / alpha - 1e-9)
    if n < needed:
        raise ValueError(
            f"conformal calibration at level {level:g} needs at least {needed} calibration images, got {n}"
        )
    values = np.concatenate([r.ravel() for r in reach])
    weights = np.concatenate([np.full(r.size, 1.0 / (n * r.size)) for r in reach])
    order = np.argsort(values, kind="stable")
    values, weights = values[order], weights[order]
    above = weights.sum() - np.cumsum(weights)  # risk at lambda = values[k]: weight strictly above
    # Ties: the risk at a value counts only larger values, i.e. the last index of each run.
    last = np.r_[values[1:] != values[:-1], True]
    target = (alpha * (n + 1) - 1) / n
    ok = np.flatnonzero(last & (above <= target + 1e-12))
    scale = float(values[ok[0]]) if len(ok) else math.inf
    if not math.isfinite(scale):
        raise ValueError(
            "no finite interval scale reaches the level: some intervals have no width where the truth "
            "differs from the mean; draw more members"
        )
    return scale


def pixel_quantile_scale(reach: Sequence[np.ndarray], level: float) -> float:
    """The ``level`` quantile of every calibration pixel's stretch, each image weighing the same.

    Covers ``level`` of the calibration pixels, and about as much of new images like them, but
    with no finite-sample guarantee: an image's pixels are not exchangeable with each other.
    Raises ValueError when the quantile is not finite (zero-width intervals).
    """
    values = np.concatenate([r.ravel() for r in reach])
    weights = np.concatenate([np.full(r.size, 1.0 / r.size) for r in reach])
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(weights[order]) / weights.sum()
    scale = float(values[order][np.searchsorted(cumulative, level - 1e-12)])
    if not math.isfinite(scale):
        raise ValueError(
            "no finite interval scale reaches the level: some intervals have no width; draw more members"
        )
    return scale


def calibrate(
    restorations: Sequence[Any],
    truths: Sequence[Any],
    method: Literal["risk_control", "quantile"] = "risk_control",
) -> Calibration:
    """The :class:`Calibration` of restorations of held-out inputs against their ``truths``.

    ``restorations`` are :class:`~sciddpm_microscopy.restoration.Restoration` s made by ``restore``
    with the settings to calibrate (the same model, members, steps, sampler, level and input
    normalisation for all), of images the model was not trained on, at least ``level / (1 -
    level)`` of them (9 for 0.9); ``truths`` the matching clean images ``(C, *spatial)`` in the
    target's units. ``method``: ``"risk_control"`` (:func:`risk_controlling_scale`, the guarantee,
    conservative for few images: with ``n`` of them a ``1 / (n + 1)`` share of the miscoverage
    budget goes to the correction, so 0.9 needs well over 9 images to be useful) or ``"quantile"``
    (:func:`pixel_quantile_scale`, on target on average with no guarantee). Raises ValueError for
    unpaired or misshapen inputs, too few images, restorations made with different settings or
    already calibrated, a mean outside its interval, or an unknown method.
    """
    if method not in ("risk_control", "quantile"):
        raise ValueError(f"method must be 'risk_control' or 'quantile', got {method!r}")
    if not restorations or len(restorations) != len(truths):
        raise ValueError(
            f"give one truth per restoration and at least one pair, got {len(restorations)} and {len(truths)}"
        )
    keys = ("members", "steps", "scheduler", "input_percentiles", "model_sha256")
    first = restorations[0]
    settings = ({k: first.run.get(k) for k in keys}, first.level)
    reach, inside = [], []
    for out, truth in zip(restorations, truths, strict=True):
        if ({k: out.run.get(k) for k in keys}, out.level) != settings:
            raise ValueError(
                "the restorations to calibrate were made with different models, members, steps, sampler, "
                "level or input normalisation"
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
        reach.append(_reach(mean, lo, hi, t))
        inside.append(((t >= lo) & (t <= hi)).ravel())
    run, level = settings
    return Calibration(
        level=float(level),
        scale=(risk_controlling_scale if method == "risk_control" else pixel_quantile_scale)(
            reach, float(level)
        ),
        members=int(run["members"]),
        steps=int(run["steps"]),
        scheduler=run["scheduler"],
        images=len(restorations),
        pixels=int(sum(r.size for r in reach)),
        coverage_before=float(np.concatenate(inside).mean()),
        model_sha256=str(run.get("model_sha256") or ""),
        input_percentiles=str(run.get("input_percentiles") or "fitted"),
        method=method,
    )
