"""A conditional model's domain metrics: an ensemble per condition, scored against that condition's truth.

Distribution metrics (:mod:`sciddpm.evaluation.report`) ask whether samples look like data; a
conditional model (downscaling, restoration) must also be right for each condition. For each of
``K`` data samples, :func:`ensemble_scores` draws ``M`` members conditioned on its condition and
scores them against the sample itself with the metrics the data source names
(:meth:`~sciddpm.interfaces.DataSource.domain_metrics`): an ensemble metric (``metric.ensemble``:
CRPS, spread-skill, interval coverage) gets the members, the others (PSNR, SSIM, FRC) the ensemble
mean, the estimate a user would take. Scores are averaged over the conditions, with percentile
bootstrap intervals over them (Efron & Tibshirani 1993), as WeatherBench 2 averages CRPS over
forecasts and CARE averages PSNR over test images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["ensemble_scores"]


def _values(result: Any) -> dict[str, float]:
    if isinstance(result, Mapping):
        return {str(k): float(v) for k, v in result.items()}
    return {"value": float(result)}


def ensemble_scores(
    pipe: Any,
    source: Any,
    metrics: Sequence[str | Mapping[str, Any]],
    *,
    indices: Sequence[int],
    members: int = 8,
    steps: int = 50,
    scheduler: str | None = None,
    seed: int = 0,
    bootstrap: int = 200,
    level: float = 0.95,
    progress: bool = False,
    registry: Any = None,
) -> dict[str, Any]:
    """Domain ``metrics`` of ensembles drawn for the conditions of ``source[i]``, ``i`` in ``indices``.

    Condition ``k`` (``source[indices[k]]``) is sampled with ``pipe.sample(members, condition,
    seed=seed + k)``; its truth is the sample's ``x`` with missing values (mask 0) as NaN; both go
    through ``source.metric_inputs``. Returns ``{"conditions": K, "members": M, "indices": [...],
    "metrics": {name: {key: mean over conditions, "interval": [lo, hi] | None (the ``level``
    bootstrap interval of ``value``), "per_condition": [...], "higher_is_better": bool,
    "target"?: float}}}``; no interval when a condition's score is not finite. Raises ValueError
    for ``members < 2`` or no indices, and the registry's errors for an unknown metric.
    """
    from sciddpm.progress import progress_bar
    from sciddpm.registry import get_registry
    from sciddpm.spec import ComponentSpec

    if members < 2:
        raise ValueError(f"an ensemble needs members >= 2, got {members}")
    if not indices:
        raise ValueError("give at least one data sample index to condition on")
    registry = registry or get_registry()
    built = {ComponentSpec.coerce(m).type: registry.build("metric", m) for m in metrics}
    scores: dict[str, list[dict[str, float]]] = {name: [] for name in built}
    bar = progress_bar(len(indices), "ensembles", progress, unit="condition")
    for k, index in enumerate(indices):
        sample = source[int(index)]
        truth = sample.x.double()
        if sample.mask is not None:
            truth = torch.where(sample.mask.expand_as(truth) > 0, truth, torch.full_like(truth, float("nan")))
        drawn = pipe.sample(members, sample.condition, steps=steps, scheduler=scheduler, seed=seed + k)
        drawn = drawn.double()
        mean = drawn.mean(0, keepdim=True)
        for name, metric in built.items():
            given = drawn if getattr(metric, "ensemble", False) else mean
            scores[name].append(_values(metric(*source.metric_inputs(given, truth, int(index)))))
        bar.update(1)
    bar.close()
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {}
    for name, metric in built.items():
        per = scores[name]
        entry: dict[str, Any] = {key: float(np.mean([s[key] for s in per])) for key in per[0]}
        entry["interval"] = None
        values = np.array([s.get("value", np.nan) for s in per])
        # An infinite score (FRC of images that share no detail) has no interval.
        if "value" in entry and bootstrap > 0 and len(per) > 1 and np.isfinite(values).all():
            means = values[rng.integers(0, len(values), (bootstrap, len(values)))].mean(1)
            tail = 100 * (1 - level) / 2
            entry["interval"] = [float(v) for v in np.percentile(means, [tail, 100 - tail])]
        entry["per_condition"] = per if "value" not in per[0] else [s["value"] for s in per]
        entry["higher_is_better"] = bool(metric.higher_is_better)
        if getattr(metric, "target", None) is not None:
            entry["target"] = metric.target
        out[name] = entry
    return {
        "conditions": len(indices),
        "members": members,
        "indices": [int(i) for i in indices],
        "metrics": out,
    }
