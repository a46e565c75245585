"""The conformance kit: check that a component keeps its contract, as one call or as pytest cases.

``check_component(kind, name_or_factory, **params)`` runs every check of ``kind`` (the contracts in
:mod:`sciddpm.interfaces`, point by point, plus the config class's) and raises one
:class:`ConformanceError` listing each failed check with the value seen and what the contract says.
``parametrize_with_checks(cases)`` turns the same checks into separate pytest cases with readable
ids, as scikit-learn's ``parametrize_with_checks`` does for estimators::

    from sciddpm.testing import Case, check_component, parametrize_with_checks

    check_component("data", "mylab/folder", path="tests/data")

    @parametrize_with_checks([Case("encoder", "standardize"), Case("denoiser", "unet", {"channels": [8]})])
    def test_conformance(check):
        check()

The component is a registry name (built through the registry, parameters validated by its config
class), a :class:`~sciddpm.hooks.Component` record not installed yet, or any callable that returns
one (called with the parameters). ``inputs`` gives the examples some kinds need: a conditioner's raw
conditions (a list, or a DataSource to fit on and take them from), a metric's ``(generated,
reference[, perfect])``, a DataSource to fit an encoder on. A check that cannot apply (no native
writer, no example inputs) is reported as not run, with the reason, never as passed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sciddpm.testing.conditioner_checks import CONDITIONER_CHECKS
from sciddpm.testing.data_checks import DATA_CHECKS
from sciddpm.testing.denoiser_checks import DENOISER_CHECKS
from sciddpm.testing.encoder_checks import ENCODER_CHECKS
from sciddpm.testing.metric_checks import CONFIG_CHECKS, METRIC_CHECKS
from sciddpm.testing.runner import Check, ConformanceError, Outcome, Subject, run_check
from sciddpm.testing.scheduler_checks import SCHEDULER_CHECKS

__all__ = [
    "CHECKS",
    "Case",
    "Check",
    "ConformanceError",
    "Outcome",
    "check_component",
    "checks_for",
    "parametrize_with_checks",
    "run_checks",
    "subject",
]

#: The checks of each kind, in the order they run (the config checks come last for every kind).
CHECKS: dict[str, tuple[Check, ...]] = {
    "encoder": ENCODER_CHECKS,
    "denoiser": DENOISER_CHECKS,
    "conditioner": CONDITIONER_CHECKS,
    "scheduler": SCHEDULER_CHECKS,
    "data": DATA_CHECKS,
    "metric": METRIC_CHECKS,
}

#: Config fields the kit fills in when a test leaves them unset (a pipeline fills them from the data).
_SIZED = {"encoder": {"dims": 2, "in_channels": 2}, "denoiser": {"dims": 2, "in_channels": 2}}


def _sized(kind: str, inputs: Any) -> dict[str, Any]:
    """The data-determined config fields for ``kind``: from a DataSource in ``inputs`` when given."""
    from sciddpm.interfaces import DataSource

    source = inputs if isinstance(inputs, DataSource) else None
    if kind in _SIZED:
        if source is None:
            return _SIZED[kind]
        return {"dims": len(source.sample_shape) - 1, "in_channels": source.sample_shape[0]}
    if kind != "conditioner":
        return {}
    if source is not None:
        return {"data_shape": list(source.sample_shape), "num_classes": source.num_classes or None}
    return {"data_shape": [2, 8, 8], "num_classes": 3}


def checks_for(kind: str) -> tuple[Check, ...]:
    """Every check of ``kind`` (encoder, denoiser, conditioner, scheduler, data, metric), config checks last.

    Raises ValueError for an unknown kind.
    """
    if kind not in CHECKS:
        raise ValueError(f"unknown component kind {kind!r}; kinds are {', '.join(CHECKS)}")
    return CHECKS[kind] + CONFIG_CHECKS


@dataclass(frozen=True)
class Case:
    """One component to check: its kind, a name/record/factory, parameters, example inputs, an id."""

    kind: str
    component: Any
    params: Mapping[str, Any] = field(default_factory=dict)
    inputs: Any = None
    id: str | None = None

    def label(self) -> str:
        """The id of this case's pytest cases: ``id``, else the component's name."""
        if self.id:
            return self.id
        if isinstance(self.component, str):
            return self.component
        return str(
            getattr(self.component, "name", None) or getattr(self.component, "__qualname__", "component")
        )


def subject(
    kind: str,
    component: Any,
    params: Mapping[str, Any] | None = None,
    inputs: Any = None,
    registry: Any = None,
) -> Subject:
    """The :class:`~sciddpm.testing.runner.Subject` for a component given as the kit takes it.

    ``component`` is a registry name (looked up in ``registry``, default the process-wide one), a
    :class:`~sciddpm.hooks.Component` record or a callable called with ``params``. Raises ValueError
    for an unknown kind and the registry's UnknownComponentError for an unknown name.
    """
    from sciddpm.hooks import Component

    checks_for(kind)
    params = dict(params or {})
    if isinstance(component, str):
        from sciddpm.pipeline.pipeline import complete_spec
        from sciddpm.registry import get_registry
        from sciddpm.spec import ComponentSpec

        registry = registry or get_registry()
        entry = registry.get(kind, component)
        sized = {k: v for k, v in _sized(kind, inputs).items() if k not in params}
        spec = complete_spec(registry, kind, ComponentSpec(type=entry.full_name, **params), sized)
        params = spec.params
        return Subject(
            kind, entry.full_name, lambda: registry.build(kind, spec), entry.config_class(), params, inputs
        )
    if isinstance(component, Component):
        from sciddpm.registry import resolve_reference

        config = resolve_reference(component.config, component.name)
        factory = resolve_reference(component.factory, component.name)
        fields = getattr(config, "model_fields", {})
        sized = {k: v for k, v in _sized(kind, inputs).items() if k in fields and params.get(k) is None}
        params = {**params, **sized}
        return Subject(
            kind, component.name, lambda: factory(config.model_validate(params)), config, params, inputs
        )
    from sciddpm.registry import interface_for

    if isinstance(component, interface_for(kind)):
        raise TypeError(
            f"check_component got a {type(component).__name__} instance; the kit builds several fresh ones, "
            f"so pass the class, or a factory such as `lambda: {type(component).__name__}(...)`"
        )
    if callable(component):
        label = getattr(component, "__qualname__", type(component).__name__)
        return Subject(kind, label, lambda: component(**params), None, params, inputs)
    raise TypeError(
        f"cannot check {component!r}: give a registry name, a sciddpm.hooks.Component or a factory "
        "(a class or function returning a fresh component; the kit builds several)"
    )


def run_checks(target: Subject, missing_inputs_fail: bool = True) -> list[Outcome]:
    """Every check of the subject's kind, as outcomes; after a failed ``builds`` the rest are not run.

    A check lacking example inputs fails, or, with ``missing_inputs_fail=False``, is not run.
    """
    outcomes: list[Outcome] = []
    for check in checks_for(target.kind):
        if outcomes and outcomes[0].check == "builds" and outcomes[0].status == "fail":
            outcomes.append(
                Outcome(
                    target.label,
                    target.kind,
                    check.name,
                    "not run",
                    "the component did not build",
                    check.contract,
                )
            )
            continue
        outcomes.append(run_check(check, target, missing_inputs_fail))
    return outcomes


def check_component(
    kind: str, component: Any, /, *, inputs: Any = None, registry: Any = None, **params: Any
) -> list[Outcome]:
    """Run every check of ``kind`` on ``component`` built with ``params``; returns the outcomes.

    ``inputs`` are the kind's examples (see the module docstring); ``registry`` the registry to
    look names up in (default: the process-wide one). Raises ConformanceError listing every failed
    check, with the value seen and the contract, when any fails; checks that could not run are in
    the returned outcomes with ``status == "not run"`` and the reason.
    """
    outcomes = run_checks(subject(kind, component, params, inputs, registry))
    failed = [o for o in outcomes if o.status == "fail"]
    if failed:
        raise ConformanceError(failed)
    return outcomes


class _CaseCheck:
    """One check of one case as a pytest parameter: calling it runs the check."""

    def __init__(self, case: Case, check: Check, subjects: dict[int, Subject]) -> None:
        self.case, self.check, self._subjects = case, check, subjects

    def __call__(self) -> None:
        import pytest

        key = id(self.case)
        if key not in self._subjects:
            c = self.case
            self._subjects[key] = subject(c.kind, c.component, c.params, c.inputs)
        outcome = run_check(self.check, self._subjects[key])
        if outcome.status == "not run":
            pytest.skip(f"{outcome.check} does not apply: {outcome.message}")
        if outcome.status == "fail":
            raise ConformanceError([outcome])

    def __repr__(self) -> str:
        return f"{self.case.label()}-{self.check.name}"


def parametrize_with_checks(cases: Iterable[Case | Sequence[Any]]) -> Callable[[Any], Any]:
    """A ``pytest.mark.parametrize("check", ...)`` over every check of every case, ids ``name-check``.

    Each case is a :class:`Case` or a tuple ``(kind, component[, params[, inputs]])``. The
    decorated test takes one argument, ``check``, and calls it; a failed check raises
    ConformanceError with the value seen and the contract, a check that does not apply skips with
    the reason. Components are built when their first check runs, not at collection.
    """
    import pytest

    subjects: dict[int, Subject] = {}
    params = []
    for item in cases:
        case = item if isinstance(item, Case) else Case(*item)
        for check in checks_for(case.kind):
            bound = _CaseCheck(case, check, subjects)
            params.append(pytest.param(bound, id=repr(bound)))
    return pytest.mark.parametrize("check", params)
