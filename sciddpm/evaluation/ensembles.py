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

from sciddpm.evaluation.features import with_missing
from sciddpm.evaluation.report import metric_values

__all__ = ["ensemble_scores"]


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
    seed=s_k)``, ``s_k`` drawn from the :data:`~sciddpm.seeding.EVALUATION_ENSEMBLES` stream at
    ``(seed, k)``; its truth is the sample's ``x`` with missing values (mask 0) as NaN; both go
    through ``source.metric_inputs``. A metric's figure is the mean of its per-condition values (for
    a ratio such as spread-skill, a mean of ratios: WeatherBench 2 pools spread and error over
    forecasts before dividing, which weighs conditions by their error), with the ``level``
    percentile bootstrap interval over conditions. Returns ``{"conditions": K, "members": M,
    "indices": [...], "metrics": {name: {key: mean, "interval": [lo, hi] | None (one-number
    metrics) or "intervals": {key: [lo, hi] | None}, "per_condition": [...], "higher_is_better":
    bool, "target"?: float, "not_finite"?: {key: count}}}}``: non-finite values are left out of
    the mean, counted, and leave no interval. Raises ValueError for ``members < 2`` or no indices,
    and the registry's errors for an unknown metric.
    """
    from sciddpm import seeding
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
    with progress_bar(len(indices), "ensembles", progress, unit="condition") as bar:
        for k, index in enumerate(indices):
            sample = source[int(index)]
            truth = with_missing(sample)
            ensemble_seed = seeding.seed_for(seeding.EVALUATION_ENSEMBLES, seed, k)
            drawn = pipe.sample(
                members, sample.condition, steps=steps, scheduler=scheduler, seed=ensemble_seed
            )
            drawn = drawn.double()
            mean = drawn.mean(0, keepdim=True)
            for name, metric in built.items():
                given = drawn if getattr(metric, "ensemble", False) else mean
                scores[name].append(metric_values(metric(*source.metric_inputs(given, truth, int(index)))))
            bar.update(1)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(indices), (bootstrap, len(indices)))
    tail = 100 * (1 - level) / 2
    out: dict[str, Any] = {}
    for name, metric in built.items():
        per = scores[name]
        entry: dict[str, Any] = {}
        intervals: dict[str, list[float] | None] = {}
        for key in per[0]:
            values = np.array([s[key] for s in per])
            finite = np.isfinite(values)
            entry[key] = float(values[finite].mean()) if finite.any() else float("nan")
            if not finite.all():
                entry.setdefault("not_finite", {})[key] = int((~finite).sum())
            # An infinite score (FRC of images that share no detail) leaves no interval.
            ok = bootstrap > 0 and len(per) > 1 and finite.all()
            intervals[key] = (
                [float(v) for v in np.percentile(values[draws].mean(1), [tail, 100 - tail])] if ok else None
            )
        if set(intervals) == {"value"}:
            entry["interval"] = intervals["value"]
            entry["per_condition"] = [s["value"] for s in per]
        else:
            entry["intervals"] = intervals
            entry["per_condition"] = per
        entry["higher_is_better"] = bool(metric.higher_is_better)
        if getattr(metric, "target", None) is not None:
            entry["target"] = metric.target
        out[name] = entry
    chosen = [int(i) for i in indices]
    return {"conditions": len(chosen), "members": members, "indices": chosen, "metrics": out}
