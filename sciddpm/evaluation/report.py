"""One evaluation of generated samples against reference data: every metric, intervals, memorisation.

:func:`evaluate` computes registered metrics with percentile bootstrap intervals (Efron &
Tibshirani 1993: generated and reference sets resampled with replacement, metric recomputed) and,
given the training data, the memorisation check. A metric that declares ``bootstrap = False``
gets no interval: ``prdc``, whose neighbour radii shrink on resamples with repeated points, and
``kid``, whose estimate already loops over random subsets (a bootstrap would repeat that loop
for every resample).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sciddpm.evaluation.features import FeatureFn, check_pair, pooled_features
from sciddpm.evaluation.memorization import memorization

__all__ = ["DEFAULT_METRICS", "evaluate", "metric_values"]

#: Metrics :func:`evaluate` computes when none are named.
DEFAULT_METRICS = ("wasserstein", "sliced_wasserstein", "spectrum", "frechet", "kid", "prdc")


def metric_values(result: Any) -> dict[str, float]:
    """A metric's result as named floats: a mapping's items, or ``{"value": result}`` for one number."""
    return (
        {k: float(v) for k, v in result.items()} if isinstance(result, Mapping) else {"value": float(result)}
    )


def evaluate(
    generated: Any,
    reference: Any,
    *,
    metrics: Sequence[str | Mapping[str, Any]] = DEFAULT_METRICS,
    training: Any = None,
    features: FeatureFn | None = None,
    conditions: Any = None,
    predict: Any = None,
    bootstrap: int = 50,
    level: float = 0.95,
    seed: int = 0,
    registry: Any = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Every metric of ``generated`` vs ``reference`` (``(N, C, *spatial)``), with intervals; JSON-able.

    ``metrics`` are registry names or ``{"type": ..., ...}`` specs (plugins' domain metrics too).
    With ``training`` (the model's training data) the memorisation check runs on ``features``
    (default: pooled features of the reference). With ``conditions`` (one per generated sample)
    and ``predict`` (a classifier or regressor of real data), ``condition_agreement`` is added.
    Returns ``{"generated": N1, "reference": N2, "metrics": {name: {"value" | key: ..., "interval":
    [lo, hi] | None, "higher_is_better": bool}}, "memorization": {...} | None,
    "condition_agreement": {...} | None}``. Raises ValueError for samples of different shapes, and the
    registry's UnknownComponentError (listing the installed metrics) for an unknown name.
    """
    from sciddpm.progress import progress_bar
    from sciddpm.registry import get_registry
    from sciddpm.spec import ComponentSpec

    g, r = check_pair(generated, reference)
    registry = registry or get_registry()
    built = {ComponentSpec.coerce(m).type: registry.build("metric", m) for m in metrics}
    rng = np.random.default_rng(seed)
    draws = [(rng.integers(0, len(g), len(g)), rng.integers(0, len(r), len(r))) for _ in range(bootstrap)]
    out: dict[str, Any] = {}
    with progress_bar(len(built) * (1 + bootstrap), "evaluate", progress, unit="metric run") as bar:
        for name, metric in built.items():
            value = metric_values(metric(g, r))
            bar.update(1)
            entry: dict[str, Any] = {
                **value,
                "higher_is_better": bool(metric.higher_is_better),
                "interval": None,
            }
            if getattr(metric, "target", None) is not None:
                entry["target"] = metric.target
            if getattr(metric, "bootstrap", True) and "value" in value and bootstrap > 0:
                samples = []
                for gi, ri in draws:
                    samples.append(metric_values(metric(g[gi], r[ri]))["value"])
                    bar.update(1)
                tail = 100 * (1 - level) / 2
                entry["interval"] = [float(v) for v in np.percentile(samples, [tail, 100 - tail])]
            else:
                bar.update(bootstrap)
            out[name] = entry
    report: dict[str, Any] = {"generated": len(g), "reference": len(r), "metrics": out, "memorization": None}
    if training is not None:
        t = check_pair(generated, training)[1]
        extract = features or pooled_features(r)
        report["memorization"] = memorization(extract(g), extract(t)).summary()
    report["condition_agreement"] = None
    report["ensembles"] = None  # a conditional model's domain metrics: sciddpm.evaluation.ensembles
    if conditions is not None and predict is not None:
        from sciddpm.evaluation.conditional import condition_agreement

        report["condition_agreement"] = condition_agreement(g.float(), conditions, predict)
    report["interval_level"] = level
    report["bootstrap"] = bootstrap
    return report
