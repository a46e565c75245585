"""Conformance checks of the Metric contract and of every component's config class.

A metric's inputs are its own business (images, ensembles, captions), so its checks need
``inputs = (generated, reference)``, or ``(generated, reference, perfect)`` where ``perfect`` is
generated data equal to the reference in the metric's own layout (an ensemble of copies, for an
ensemble metric; the reference itself when omitted). The config checks apply to every kind.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from sciddpm.interfaces import Metric
from sciddpm.testing.runner import CheckFailed, MissingInputs, NotApplicable, Subject, checks

__all__ = ["CONFIG_CHECKS", "METRIC_CHECKS"]


def _metric(subject: Subject) -> Metric:
    metric = subject.instance()
    if not isinstance(metric, Metric):
        raise CheckFailed(f"built a {type(metric).__name__}, not a sciddpm.interfaces.Metric")
    return metric


def _inputs(subject: Subject) -> tuple[Any, Any, Any]:
    inputs = subject.inputs
    if inputs is None:
        raise MissingInputs(
            "no example inputs: pass inputs=(generated, reference[, perfect]), perfect in the layout of "
            "generated (an ensemble metric: members that all equal the reference)"
        )
    if not isinstance(inputs, (tuple, list)) or len(inputs) not in (2, 3):
        raise CheckFailed(
            f"inputs must be (generated, reference) or (generated, reference, perfect), got {inputs!r}"
        )
    generated, reference = inputs[0], inputs[1]
    return generated, reference, inputs[2] if len(inputs) == 3 else reference


def _values(result: Any, what: str) -> dict[str, float]:
    """The metric's result as named floats; raises CheckFailed for anything else or a non-finite value."""
    if isinstance(result, Mapping):
        values = dict(result)
    elif isinstance(result, (int, float)) and not isinstance(result, bool):
        values = {"value": result}
    else:
        raise CheckFailed(
            f"{what} returned a {type(result).__name__}; expected a float or a mapping of floats"
        )
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise CheckFailed(f"{what}: value {key!r} is {value!r}; expected a finite float")
    return values


def check_builds(subject: Subject) -> None:
    """The factory builds a Metric that declares ``higher_is_better``."""
    if not isinstance(_metric(subject).higher_is_better, bool):
        raise CheckFailed(
            f"higher_is_better is {_metric(subject).higher_is_better!r}; expected True or False"
        )


def check_returns_finite_floats(subject: Subject) -> None:
    """``metric(generated, reference)`` is a finite float or a mapping of named finite floats."""
    generated, reference, _ = _inputs(subject)
    _values(_metric(subject)(generated, reference), "metric(generated, reference)")


def check_deterministic(subject: Subject) -> None:
    """The same inputs give the same value."""
    generated, reference, _ = _inputs(subject)
    metric = _metric(subject)
    first, second = (_values(metric(generated, reference), "metric") for _ in range(2))
    if first != second:
        raise CheckFailed(f"two calls on the same inputs gave {first} and {second}")


def check_perfect_is_best(subject: Subject) -> None:
    """Generated data equal to the reference score at least as well as other data, in the declared
    direction.
    """
    generated, reference, perfect = _inputs(subject)
    metric = _metric(subject)
    result = metric(generated, reference)
    if isinstance(result, Mapping):
        raise NotApplicable("the metric returns a mapping, which declares no single direction")
    other = _values(result, "metric(generated, reference)")["value"]
    target = getattr(metric, "target", None)
    try:
        best = _values(metric(perfect, reference), "metric(perfect, reference)")["value"]
    except (ValueError, CheckFailed) as exc:
        if target is None:
            raise
        # A ratio with a target (spread-skill: spread / error) is undefined for perfect data, 0 / 0.
        raise NotApplicable(f"the metric is undefined for perfect data ({exc})") from None
    if best == other:
        raise CheckFailed(
            f"perfect data and the generated example both score {best:.6g}: give generated data that differ "
            "from the reference, or the metric ignores its input"
        )
    if target is not None:
        if not abs(best - target) < abs(other - target):
            raise CheckFailed(
                f"perfect data score {best:.6g}, other data {other:.6g}, but {target} (target) is ideal"
            )
        return
    better = best > other if metric.higher_is_better else best < other
    if not better:
        direction = "higher" if metric.higher_is_better else "lower"
        raise CheckFailed(f"perfect data score {best:.6g}, other data {other:.6g}, but {direction} is better")


def check_config_rejects_unknown_keys(subject: Subject) -> None:
    """The config class refuses a key it does not know (a typo must never be silently ignored)."""
    from sciddpm.spec import ConfigError, validate_params

    if subject.config_class is None:
        raise NotApplicable("a plain factory has no config class")
    try:
        validate_params(subject.config_class, {**subject.params, "no_such_option": 1}, path=(subject.kind,))
    except ConfigError:
        return
    raise CheckFailed(
        f"{subject.config_class.__name__} accepted the unknown key 'no_such_option'; set "
        'model_config = ConfigDict(extra="forbid")'
    )


def check_config_round_trips(subject: Subject) -> None:
    """The validated config survives JSON and back unchanged (run files and saved pipelines store it)."""
    if subject.config_class is None:
        raise NotApplicable("a plain factory has no config class")
    config = subject.config_class.model_validate(dict(subject.params))  # type: ignore[attr-defined]
    again = subject.config_class.model_validate_json(config.model_dump_json())  # type: ignore[attr-defined]
    if again != config:
        raise CheckFailed(f"{config!r} came back from JSON as {again!r}")


METRIC_CHECKS = checks(
    "metric",
    check_builds,
    check_returns_finite_floats,
    check_deterministic,
    check_perfect_is_best,
)
#: Checks of a component's config class, run for every kind after the kind's own checks.
CONFIG_CHECKS = checks(
    "any",
    check_config_rejects_unknown_keys,
    check_config_round_trips,
)
