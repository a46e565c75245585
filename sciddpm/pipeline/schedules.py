"""A pipeline's fitted sampling schedules: kept with the model, chosen by ``scheduler="fitted"``.

Fitting the sampling times to a model (:func:`sciddpm.diffusion.timesteps.optimize_timesteps`) is
paid once per solver and budget. :class:`Schedules` keeps every fit a pipeline made (its
scheduler spec with the times, its calibration error, whether it expects the Gaussian start, and
which model it was fitted on), is saved in ``pipeline.json`` with the start beside it
(``gaussian_start.json`` and ``.safetensors``, :mod:`sciddpm.persistence`), and gives
``Pipeline.sample(steps=10, scheduler="fitted")`` the best fit for that budget, with its start.

A schedule depends on the model only through its trajectories, so one fitted on a model serves
another trained on similar data (the same process, solver and budget), with that model's own
Gaussian start (docs/benchmarks.md, "Fitting schedules"): :meth:`Schedules.adopt` copies another
pipeline's fits, marked with where they came from.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from sciddpm.config import saved_scheduler_spec
from sciddpm.diffusion.gaussian import START_CONFIG, GaussianStart

__all__ = ["FITTED", "FittedSchedule", "Schedules"]

#: The scheduler name that picks a pipeline's own fitted schedule for the requested steps.
FITTED = "fitted"


@dataclass(frozen=True)
class FittedSchedule:
    """One fit: ``scheduler`` (a spec with its ``timesteps``), its calibration errors, its origin.

    ``rmse`` and ``rmse_start`` are the calibration errors after the fit and of the best starting
    schedule (model-space RMS); ``with_start`` says the times expect the pipeline's Gaussian start;
    ``origin`` is "this model" or where the schedule was adopted from; ``condition`` and
    ``guidance_scale`` what it was fitted under (None and 1: unconditional, unguided).
    """

    scheduler: dict[str, Any]
    rmse: float
    rmse_start: float
    with_start: bool = False
    origin: str = "this model"
    condition: Any = None
    guidance_scale: float = 1.0
    seconds: float = field(default=0.0, compare=False)

    @property
    def steps(self) -> int:
        """The number of steps (the length of the spec's ``timesteps``)."""
        return len(self.scheduler["timesteps"])

    @property
    def solver(self) -> str:
        """The scheduler's registry name (``"unipc"``, ``"dpmpp_2m"``, ...)."""
        return str(self.scheduler["type"])


class Schedules:
    """The fitted schedules of one pipeline and the Gaussian start those marked ``with_start`` expect."""

    def __init__(
        self, entries: list[FittedSchedule] | None = None, start: GaussianStart | None = None
    ) -> None:
        self.entries: list[FittedSchedule] = list(entries or [])
        self.start = start

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[FittedSchedule]:
        return iter(self.entries)

    def __repr__(self) -> str:
        fits = ", ".join(f"{e.solver}/{e.steps}{'+start' if e.with_start else ''}" for e in self.entries)
        return f"Schedules([{fits}])"

    def add(
        self,
        result: Any,
        *,
        origin: str = "this model",
        condition: Any = None,
        guidance_scale: float = 1.0,
    ) -> FittedSchedule | None:
        """Keep an :class:`~sciddpm.diffusion.timesteps.OptimizedSteps`; returns its entry.

        It replaces an earlier fit of the same scheduler spec (but its times), steps, start use,
        condition and guidance. A result fitted with another Gaussian start than the one kept
        replaces that start, and the fits made with the old one are dropped with a warning (they
        expect the old start). A fit under a condition that is not one number or string (a tensor,
        one per sample) is not kept: returns None.
        """
        condition = _plain(condition)
        if condition is _NOT_PLAIN:
            return None
        with_start = result.start is not None
        if with_start:
            self._keep_start(result.start, "a fit with another Gaussian start")
        entry = FittedSchedule(
            scheduler=dict(result.scheduler),
            rmse=float(result.rmse),
            rmse_start=float(result.rmse_start),
            with_start=with_start,
            origin=origin,
            condition=condition,
            guidance_scale=float(guidance_scale),
            seconds=float(result.seconds),
        )
        self.entries = [e for e in self.entries if _key(e) != _key(entry)] + [entry]
        return entry

    def choose(
        self, steps: int, solver: str | None = None, condition: Any = None, guidance_scale: float = 1.0
    ) -> FittedSchedule:
        """The fit for ``steps`` (and ``solver``, if given) with the lowest calibration error.

        Fits made under ``condition`` and ``guidance_scale`` come first; without one, any fit for
        ``steps`` is used with a warning naming what it was fitted under. Raises ValueError naming
        the fits there are when none has ``steps``.
        """
        matches = [e for e in self.entries if e.steps == steps and solver in (None, e.solver)]
        if not matches:
            have = sorted({(e.solver, e.steps) for e in self.entries})
            listed = ", ".join(f"{s} at steps={k}" for s, k in have) or "none"
            raise ValueError(
                f"no fitted schedule for steps={steps}"
                + (f" and {solver!r}" if solver else "")
                + f" (fitted: {listed}); run pipe.optimize_timesteps(steps={steps}) first, or adopt a "
                "similar model's with pipe.schedules.adopt(other.schedules)"
            )
        wanted = (_plain(condition), float(guidance_scale))
        exact = [e for e in matches if (e.condition, e.guidance_scale) == wanted]
        if exact:
            return min(exact, key=lambda e: e.rmse)
        chosen = min(matches, key=lambda e: e.rmse)
        warnings.warn(
            f"no schedule fitted for condition={condition!r}, guidance_scale={guidance_scale} at "
            f"steps={steps}; using the one fitted for condition={chosen.condition!r}, "
            f"guidance_scale={chosen.guidance_scale} (fit one with pipe.optimize_timesteps(condition=...))",
            stacklevel=3,
        )
        return chosen

    def resolve(
        self,
        scheduler: Any,
        steps: int,
        start: GaussianStart | None,
        condition: Any = None,
        guidance_scale: float = 1.0,
    ) -> tuple[Any, GaussianStart | None]:
        """``(scheduler, start)`` to sample with: a fit's spec and start where ``scheduler == "fitted"``.

        Anything else is returned unchanged. Raises what :meth:`choose` raises.
        """
        if not (isinstance(scheduler, str) and scheduler == FITTED):
            return scheduler, start
        entry = self.choose(steps, condition=condition, guidance_scale=guidance_scale)
        if entry.with_start and start is None:
            start = self.start
        return dict(entry.scheduler), start

    def adopt(
        self, other: Schedules, origin: str, start: GaussianStart | None = None
    ) -> list[FittedSchedule]:
        """Copy ``other``'s fits, marked as from ``origin``; returns the copies.

        Each copy replaces a fit of this pipeline with the same scheduler spec, steps, start use,
        condition and guidance. Use a model trained on similar data (the same noise process).
        The other pipeline's Gaussian start is never copied: on the benchmark its times carried
        over well, but sampled from its start they were 3-5x less accurate than this model's own
        fit (docs/benchmarks.md). Fits that expect a start are adopted with ``start``, this
        model's own (``pipe.gaussian_start(source)``), or the one this pipeline keeps; without
        either they are left out with a warning.
        """
        copies = [replace(e, origin=origin if e.origin == "this model" else e.origin) for e in other.entries]
        if any(e.with_start for e in copies):
            if start is not None:
                self._keep_start(start, "the start given for the adopted fits")
            elif self.start is None:
                left = sum(e.with_start for e in copies)
                warnings.warn(
                    f"{left} adopted fit(s) expect a Gaussian start and this pipeline has none; they are "
                    "left out: give start=pipe.gaussian_start(source), fitted on this model's data",
                    stacklevel=2,
                )
                copies = [e for e in copies if not e.with_start]
        keys = {_key(e) for e in copies}
        self.entries = [e for e in self.entries if _key(e) not in keys] + copies
        return copies

    def _keep_start(self, start: GaussianStart | None, what: str) -> None:
        # Fits made with another start expect it: they go, with a warning naming how many.
        if _same_start(self.start, start):
            return
        dropped = [e for e in self.entries if e.with_start]
        if dropped:
            warnings.warn(
                f"{what} replaces the kept one; dropped {len(dropped)} fitted schedule(s) made with it",
                stacklevel=3,
            )
        self.entries = [e for e in self.entries if not e.with_start]
        self.start = start

    def save(self, directory: str | Path) -> list[dict[str, Any]]:
        """Write the start (if a fit expects one) into ``directory``; returns the fits as JSON."""
        if self.start is not None and any(e.with_start for e in self.entries):
            self.start.save(directory)
        return [asdict(e) for e in self.entries]

    @classmethod
    def load(cls, directory: str | Path, saved: list[Mapping[str, Any]]) -> Schedules:
        """The fits :meth:`save` returned (``saved``), with the start read from ``directory``.

        Raises ValueError for a malformed entry; fits whose start file is missing are dropped with
        a warning.
        """
        entries = []
        for item in saved:
            scheduler = item.get("scheduler")
            if isinstance(scheduler, Mapping):
                scheduler = saved_scheduler_spec(scheduler)  # VP fields an earlier version ignored
                if scheduler.get("type") in ("unipc", "dpmpp_3m"):
                    # Fitted before lower_order_uneven existed (third order on every step): keep it so.
                    scheduler = {"lower_order_uneven": False, **scheduler}
                item = {**item, "scheduler": scheduler}
            try:
                entries.append(FittedSchedule(**item))
            except TypeError as exc:
                raise ValueError(
                    f"{directory}: a saved fitted schedule is malformed ({exc}): {item!r}"
                ) from None
        start = None
        if any(e.with_start for e in entries):
            if (Path(directory) / START_CONFIG).exists():
                start = GaussianStart.load(directory)
            else:  # the model is whole without them: keep it loadable
                warnings.warn(
                    f"{directory} lists fitted schedules that expect a Gaussian start, but has no "
                    f"{START_CONFIG}; those schedules are dropped",
                    stacklevel=3,
                )
                entries = [e for e in entries if not e.with_start]
        return cls(entries, start)


_NOT_PLAIN = object()


def _plain(condition: Any) -> Any:
    """``condition`` as a JSON value (a number or string; a numpy scalar's item), or _NOT_PLAIN."""
    if condition is None or isinstance(condition, (int, float, str)):
        return condition
    item = getattr(condition, "item", None)
    if callable(item) and getattr(condition, "ndim", None) == 0:
        return item()
    return _NOT_PLAIN


def _key(entry: FittedSchedule) -> tuple:
    # One fit per scheduler spec (order, process parameters), budget, start use, condition, guidance.
    spec = {k: v for k, v in entry.scheduler.items() if k not in ("timesteps", "shifts")}
    return (
        json.dumps(spec, sort_keys=True),
        entry.steps,
        entry.with_start,
        entry.condition,
        entry.guidance_scale,
    )


def _same_start(a: GaussianStart | None, b: GaussianStart | None) -> bool:
    if a is None or b is None:
        return a is b
    if a is b:
        return True
    return (
        a.eigvals.shape == b.eigvals.shape
        and math.isclose(a.residual, b.residual)
        and bool(torch.equal(a.mean, b.mean) and torch.equal(a.eigvals, b.eigvals))
        and bool(torch.equal(a.eigvecs, b.eigvecs))
    )
