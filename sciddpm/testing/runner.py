"""Running conformance checks: the check record, the component under test, outcomes and the error.

A :class:`Check` is one named point of a contract in :mod:`sciddpm.interfaces`, written as a
function of a :class:`Subject` (how to build fresh instances of the component, and example inputs).
A check passes by returning, fails by raising :class:`CheckFailed` with the value it saw, and
does not apply (no native writer, no example inputs given) by raising :class:`NotApplicable`.
Anything else a check meets, a factory that raises included, is a failure of that check with the
exception's text: the kit reports, it never passes a traceback from the core up.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "Check",
    "CheckFailed",
    "ConformanceError",
    "MissingInputs",
    "NotApplicable",
    "Outcome",
    "Subject",
    "checks",
    "run_check",
]

Status = Literal["pass", "fail", "not run"]


class CheckFailed(AssertionError):
    """A check saw a value its contract forbids; the message says the value and the contract."""


class NotApplicable(Exception):
    """The check does not apply to this component (the message says why)."""


class MissingInputs(NotApplicable):
    """The check needs example inputs that were not given: a failure in a test, not run in ``--check``."""


@dataclass(frozen=True)
class Check:
    """One named contract point of a kind: ``run(subject)`` returns, or raises CheckFailed/NotApplicable."""

    kind: str
    name: str
    #: What the contract says, in one line (printed next to a failure).
    contract: str
    run: Callable[[Subject], None]


@dataclass
class Subject:
    """The component under test: a label, a factory of fresh instances and the kit's inputs.

    ``build()`` returns a new instance each call (checks compare two instances and fit their own);
    ``config_class`` and ``params`` are the component's config class (None for a plain factory)
    and the parameters it is built with; ``inputs`` are the example inputs some kinds need
    (conditioner: raw conditions of single samples; metric: ``(generated, reference[, perfect])``;
    encoder: a DataSource to fit on).
    """

    kind: str
    label: str
    build: Callable[[], Any]
    config_class: type | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    inputs: Any = None
    _built: Any = None

    def instance(self) -> Any:
        """One instance shared by the checks that only read it (built on first use)."""
        if self._built is None:
            self._built = self.build()
        return self._built


@dataclass(frozen=True)
class Outcome:
    """The result of one check on one component: ``status`` and, unless it passed, why."""

    component: str
    kind: str
    check: str
    status: Status
    message: str = ""
    contract: str = ""

    def as_dict(self) -> dict[str, str]:
        """The outcome as JSON-able strings (``sciddpm plugins --check --json``)."""
        return {
            "component": self.component,
            "kind": self.kind,
            "check": self.check,
            "status": self.status,
            "message": self.message,
        }


class ConformanceError(AssertionError):
    """A component failed checks of its contract; ``outcomes`` are the failures, each in the message."""

    def __init__(self, outcomes: Sequence[Outcome]) -> None:
        self.outcomes = list(outcomes)
        lines = [
            f"{o.component} fails {len(self.outcomes)} check(s) of the {o.kind} contract:"
            for o in self.outcomes[:1]
        ]
        for o in self.outcomes:
            lines.append(f"  - {o.check}: {o.message}\n      contract: {o.contract}")
        super().__init__("\n".join(lines))


def checks(kind: str, *functions: Callable[[Subject], None]) -> tuple[Check, ...]:
    """The checks of ``kind`` made from ``check_NAME`` functions: named NAME, their docstring the contract."""
    return tuple(
        Check(kind, f.__name__.removeprefix("check_"), " ".join((f.__doc__ or "").split()), f)
        for f in functions
    )


def run_check(check: Check, subject: Subject, missing_inputs_fail: bool = True) -> Outcome:
    """Run one check, turning every way it can end into an :class:`Outcome` (never raises).

    A check that lacks example inputs fails (a test that forgot ``inputs=`` must not pass with
    nothing checked) unless ``missing_inputs_fail`` is False, as in ``sciddpm plugins --check``,
    where no inputs can be given and the check is reported as not run.
    """
    try:
        check.run(subject)
    except MissingInputs as exc:
        status: Status = "fail" if missing_inputs_fail else "not run"
        return Outcome(subject.label, subject.kind, check.name, status, str(exc), check.contract)
    except NotApplicable as exc:
        return Outcome(subject.label, subject.kind, check.name, "not run", str(exc), check.contract)
    except CheckFailed as exc:
        return Outcome(subject.label, subject.kind, check.name, "fail", str(exc), check.contract)
    except Exception as exc:  # a component's own error is a failure of the check it broke
        where = _component_frame(exc)
        message = f"raised {type(exc).__name__}: {exc}" + (f" (at {where})" if where else "")
        return Outcome(subject.label, subject.kind, check.name, "fail", message, check.contract)
    return Outcome(subject.label, subject.kind, check.name, "pass", "", check.contract)


def _component_frame(exc: BaseException) -> str:
    """``file:line`` of the innermost frame outside sciddpm.testing, to point at the component's code."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "sciddpm/testing/" not in f.filename]
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else ""
