"""Step schedules optimised for one model: where to spend a small budget of network evaluations.

Standard spacings (uniform in t, log-SNR, Karras) are generic guesses. A model's trajectories
bend most where its data's structure is decided, and at 10 evaluations where the steps go
decides most of the error. :func:`optimize_timesteps` places them for a given model, solver and
budget, as in "optimised time steps" (Xue et al. 2024, https://arxiv.org/abs/2402.17376) and
"Align Your Steps" (Sabour et al. 2024, https://arxiv.org/abs/2404.14507): it draws calibration
noise, solves the probability-flow ODE accurately from it once (``reference_steps`` evaluations
per sample), then moves the ``steps - 1`` free noise levels (all ``steps`` with a Gaussian start,
:mod:`sciddpm.diffusion.gaussian`) to minimise the RMS distance of the short run's samples to those
reference samples. It descends that error's gradient through the short runs
(:mod:`sciddpm.diffusion.descent`: a forward and a backward pass per iteration, memory of one run
per batch), or, for a model that passes no gradient, searches derivative-free (scipy's
Nelder-Mead, then Powell: a thousand or more short runs). Its cost is reported; it is paid once
per model and budget.

Calibrate on noise seeds you will not sample with: the schedule is fitted to the calibration
samples, and a small ``n`` overfits them (check with :func:`trajectory_rmse` on fresh noise).
"""

from __future__ import annotations

import itertools
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from sciddpm.diffusion import descent
from sciddpm.diffusion.gaussian import GaussianStart, alpha_sigma_at_1, noise_at_1
from sciddpm.diffusion.loop import build_scheduler, sample_callable
from sciddpm.diffusion.preconditioning import Preconditioned
from sciddpm.interfaces import PredictionType, Scheduler
from sciddpm.progress import progress_bar
from sciddpm.registry import get_registry
from sciddpm.seeding import noise_for

__all__ = ["OptimizedSteps", "optimize_timesteps", "stratify_pool", "trajectory_rmse"]

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: How the times are searched: by gradient descent through the runs, derivative-free (Nelder-Mead
#: then Powell), or "auto": gradients where the model passes them.
Method = Literal["auto", "gradient", "derivative_free"]
F64 = torch.float64
#: How many of the best starting schedules are also tried with their lowest level raised.
FLOORED = 4


@dataclass
class OptimizedSteps:
    """The result of :func:`optimize_timesteps`.

    ``timesteps`` goes into the scheduler's config (``{"type": "unipc", "timesteps": [...]}``);
    ``rmse`` is the calibration error before (best starting schedule) and after; ``start_spacing``
    names the starting schedule the winning search began from. ``start`` is the
    :class:`~sciddpm.diffusion.gaussian.GaussianStart` the times were fitted with (sample with it), or None.
    """

    timesteps: list[float]
    scheduler: dict[str, Any]
    start_spacing: str
    rmse_start: float
    rmse: float
    model_evaluations: int
    seconds: float
    start: GaussianStart | None = field(default=None, repr=False)
    history: list[float] = field(default_factory=list, repr=False)
    #: True when ``max_seconds`` ended the search: the result is the best schedule found by then.
    timed_out: bool = False
    #: The part of ``seconds`` spent searching, after the reference run and the starting schedules.
    search_seconds: float = 0.0
    #: The fitted evaluation shifts (also in ``scheduler``), or None.
    shifts: list[float] | None = None


def trajectory_rmse(
    model: Model,
    noise: torch.Tensor,
    reference: torch.Tensor,
    scheduler: str | Mapping[str, Any],
    steps: int,
    prediction_type: PredictionType = "eps",
    *,
    weights: torch.Tensor | None = None,
    **params: Any,
) -> float:
    """RMS (per element) distance of a ``steps``-step run from ``noise`` to ``reference`` samples.

    ``weights`` (one per sample, summing to 1) weight the per-sample mean squares, as a stratified
    calibration set needs; None weights every sample alike. ``params`` go to
    :func:`~sciddpm.diffusion.loop.sample_callable` (e.g. ``start=`` a GaussianStart, with ``noise`` then
    the ``x_t`` at t = 1).
    """
    x = sample_callable(model, noise, scheduler, steps, prediction_type, **params)
    squares = (x.double() - reference.double()).pow(2)
    if weights is None:
        value = float(squares.mean().sqrt())
    else:
        value = float((weights * squares.flatten(1).mean(1)).sum().sqrt())
    return value if math.isfinite(value) else math.inf


@torch.no_grad()
def optimize_timesteps(
    model: Model,
    shape: Sequence[int],
    scheduler: str | Mapping[str, Any] = "unipc",
    steps: int = 10,
    prediction_type: PredictionType = "eps",
    *,
    n: int = 256,
    seed: int = 12345,
    reference_steps: int = 200,
    spacings: Sequence[str] = ("trailing", "linspace", "log_snr", "karras"),
    max_evaluations: int | None = None,
    process: str | None = None,
    start: GaussianStart | None = None,
    restarts: int = 1,
    pool: int | None = None,
    progress: bool = False,
    max_seconds: float | None = None,
    method: Method = "auto",
    iterations: int = 100,
    learning_rate: float = 0.1,
    batch_size: int | None = None,
    shifts: bool = False,
    **params: Any,
) -> OptimizedSteps:
    """Optimise the ``steps`` sampling times of ``scheduler`` for ``model(x_t, t) -> prediction``.

    ``shape`` is one sample's shape ``(C, *spatial)`` (or ``(D,)``); ``n`` calibration samples start
    from :func:`~sciddpm.seeding.noise_for` noise with ``seed`` (use a seed you do not sample
    with). The reference is ``unipc`` (order 3) with ``reference_steps`` log-SNR-spaced steps, which
    must be far more accurate than any ``steps``-step run (raise it if the returned error is not
    much above the reference's own error). The search starts from the best of ``spacings`` and
    keeps the first time fixed (where the noise is drawn) and the times decreasing. ``restarts``
    > 1 searches again from the next-best starting schedules and keeps the best result.
    ``process`` and ``params`` configure the scheduler as in
    :func:`~sciddpm.diffusion.loop.sample_callable`. Returns an :class:`OptimizedSteps` whose
    ``scheduler`` spec samples with the optimised times.

    ``method`` "gradient" descends the calibration error's gradient through the short runs
    (:mod:`sciddpm.diffusion.descent`): ``iterations`` Adam steps of ``learning_rate`` (on the log
    noise levels, kept in order and above t = 1e-4) from each start, each costing a forward and a
    backward pass through a short run on the ``n`` samples, ``batch_size`` at a time (None: all at once; the
    batch bounds memory, the graph of one run). "derivative_free" is the earlier search, about
    ``max_evaluations`` (default 2000) short runs of Nelder-Mead then Powell from each start,
    about ten times the cost; ``max_evaluations`` given to the gradient search is ignored with a
    warning. "auto" (default) takes "gradient" where the model passes gradients to its input and time,
    else "derivative_free" with a warning; "gradient" on such a model raises ValueError.

    With ``shifts=True`` (gradient search only) a second descent of ``iterations`` steps, from the
    fitted times, also fits for every evaluation after the first the log factor by which the
    model's noise level departs from the solver's level (the schedulers' ``shifts``: the model is
    asked for its estimate as if the noise were ``sigma exp(shift)``, as in time-shifted sampling,
    Li et al. 2024, https://arxiv.org/abs/2305.15583); it is kept only if the calibration error
    falls. It lets the last evaluations undo the blur of an estimate made at a high last level, so
    it pays at very few evaluations: on the sampler benchmark at NFE 5 it cut the error 1.7x, at
    NFE 10 it gained little (docs/benchmarks.md). The returned spec then carries ``shifts``.

    With a ``start`` (:class:`~sciddpm.diffusion.gaussian.GaussianStart` of the model-space data), the first
    time is free too: each short run carries the noise analytically from t = 1 to its first time,
    and the search also starts from each spacing squeezed below lower first levels (named like
    ``"trailing from sigma 38"`` in ``start_spacing``), so it finds how far the Gaussian flow can be
    trusted for this model. Sample the result with the same ``start`` (``result.start``): without
    it the run would start from pure noise at that low first level.

    With a ``pool`` (>= 2 ``n``), the ``n`` calibration samples are chosen from ``pool`` noises:
    the ``3 n // 4`` on which ``steps``-step runs of the standard spacings and a ``4 * steps``-step
    run disagree most, and a uniform draw of the rest, weighted so the calibration error estimates
    the RMS over the whole pool. At a few evaluations the error is mostly a count of trajectories
    that end in another mode; this spends the reference runs on the trajectories near such a
    switch, so the schedule is fitted to many more of them than ``n`` plain draws hold. The choice
    costs ``pool * (len(spacings) + 4) * steps`` evaluations, in batches of ``n``.

    ``max_seconds`` bounds the wall time of the search after its fixed set-up (the reference run
    and the starting schedules, which it cannot shorten): when it is spent, the best schedule found
    so far is returned with ``timed_out=True``, never one worse than the best starting spacing.
    """
    from scipy.optimize import minimize

    if steps < 2:
        raise ValueError(f"steps must be >= 2 to leave a time to optimise, got {steps}")
    if n < 1:
        raise ValueError(f"n must be >= 1 calibration samples, got {n}")
    if restarts < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts}")
    if pool is not None and pool < 2 * n:
        raise ValueError(
            f"pool={pool} must be at least 2 * n = {2 * n}: the n calibration samples are chosen "
            "from it; give pool=None to calibrate on n plain draws"
        )
    if max_evaluations is not None and max_evaluations < 2:
        raise ValueError(f"max_evaluations must be >= 2 (one per search phase), got {max_evaluations}")
    if method not in ("auto", "gradient", "derivative_free"):
        raise ValueError(f"method must be 'auto', 'gradient' or 'derivative_free', got {method!r}")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1 gradient steps, got {iterations}")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 or None (all n at once), got {batch_size}")
    if max_seconds is not None and not max_seconds >= 0:
        raise ValueError(f"max_seconds must be >= 0 or None (no limit), got {max_seconds}")
    if reference_steps <= steps:
        raise ValueError(
            f"reference_steps={reference_steps} must be well above steps={steps}: the reference "
            "run stands in for the exact ODE solution"
        )
    spec = _spec(scheduler, process, params)
    spec.pop("shifts", None)  # a spec fitted before: its shifts belong to its times
    probe = build_scheduler(spec)
    if "lower_order_uneven" in type(probe.config).model_fields:
        # The fit measures every step's error on the model, which the rule only guesses at from
        # the step lengths; so fitted schedules keep third order on every step unless asked.
        spec.setdefault("lower_order_uneven", False)
    if "timesteps" not in type(probe.config).model_fields:
        raise ValueError(
            f"scheduler {spec['type']!r} takes no user-given timesteps; optimise a solver scheduler "
            "such as 'unipc', 'dpmpp_2m', 'dpmpp_3m', 'euler' or 'heun'"
        )
    if probe.stochastic:
        raise ValueError(
            f"scheduler {spec['type']!r} is stochastic: its samples do not follow the ODE trajectory "
            "the schedule is fitted to; optimise a deterministic solver"
        )
    started = time.perf_counter()
    counter = _Counter(model)
    # The reference shares the process (schedule, sigma range) but not solver options such as
    # Heun's s_noise, which unipc's config would reject.
    ref_fields = get_registry().get("scheduler", "unipc").config_class().model_fields
    shared = {k: v for k, v in spec.items() if k in ref_fields and k != "timesteps"}
    ref_spec = {**shared, "type": "unipc", "order": 3, "spacing": "log_snr", "lower_order_uneven": False}
    ref_sched = build_scheduler(ref_spec)
    ref_sched.set_timesteps(reference_steps)
    # With a start, every run (the reference too) begins at t = 1 and is carried to its first time,
    # which is the identity where that time is 1 (a capped sigma_max would otherwise move it).
    noise = noise_for(tuple(shape), seed, 0, n if pool is None else pool)
    x_start = noise * ref_sched.init_noise_sigma if start is None else noise_at_1(ref_sched, noise)
    weights = None
    if pool is not None:
        chosen, weights = stratify_pool(
            counter, x_start, spec, ref_spec, spacings, steps, n, seed, prediction_type, start
        )
        x_start = x_start[chosen]
    reference = sample_callable(counter, x_start, ref_sched, reference_steps, prediction_type, start=start)
    # Every run starts from the same x at the same time as the reference (or, with a start,
    # is carried there from it).
    t_first = float(ref_sched.timesteps[0])

    process_of = probe.process
    candidates: dict[str, tuple[float, list[float]]] = {}
    for spacing in spacings:
        sched = build_scheduler({**spec, "spacing": spacing})
        # The evaluation times of one step each; Heun's extra evaluations are not free knots.
        times = sched.sigmas_for(steps)[:-1]
        t = process_of.t_from_sigma_ve(torch.tensor(times, dtype=torch.float64)).tolist()
        t = [t_first, *(v for v in t[1:] if v < t_first)]
        if len(t) != steps:
            continue
        candidates[spacing] = (
            _error(counter, x_start, reference, spec, t, prediction_type, start, weights),
            t,
        )
    if start is not None:
        # Each spacing squeezed (linearly in log sigma, last level kept) below lower first levels,
        # where the Gaussian flow stands in for the model above them.
        for spacing, (_, t) in list(candidates.items()):
            ls = process_of.sigma_ve(torch.tensor(t, dtype=torch.float64)).log()
            top = ls[0] - math.log(2)
            while top > ls[-1] + math.log(4):
                squeezed = ls[-1] + (ls - ls[-1]) * (top - ls[-1]) / (ls[0] - ls[-1])
                times = process_of.t_from_sigma_ve(squeezed.exp()).tolist()
                error = _error(counter, x_start, reference, spec, times, prediction_type, start, weights)
                candidates[f"{spacing} from sigma {math.exp(top):.3g}"] = (error, times)
                top -= math.log(2)
    # The error hardly changes with the lowest levels (the last steps barely move a sample), so a
    # gradient cannot lift them to where fewer, longer final steps free evaluations for higher
    # levels: the best starting schedules are also tried with their lowest level raised 2, 4 and 8
    # times (squeezed from below, the first level kept). On the sampler benchmark this lifted the
    # gradient search out of a local optimum 1.5x worse (docs/benchmarks.md).
    for name, (_, t) in sorted(candidates.items(), key=lambda item: item[1][0])[:FLOORED]:
        ls = process_of.sigma_ve(torch.tensor(t, dtype=torch.float64)).log()
        for factor in (2, 4, 8):
            bottom = ls[-1] + math.log(factor)
            if bottom > ls[0] - math.log(4):
                break
            squeezed = ls[0] + (ls - ls[0]) * (ls[0] - bottom) / (ls[0] - ls[-1])
            times = [t[0], *process_of.t_from_sigma_ve(squeezed.exp()).tolist()[1:]]
            error = _error(counter, x_start, reference, spec, times, prediction_type, start, weights)
            candidates[f"{name} down to sigma {math.exp(bottom):.3g}"] = (error, times)
    if not candidates:
        raise ValueError(f"none of the spacings {list(spacings)} gives {steps} distinct times")
    ranked = sorted(candidates.items(), key=lambda item: item[1][0])
    start_spacing, (rmse_start, times0) = ranked[0]
    if not math.isfinite(rmse_start):
        raise ValueError(f"every start spacing diverged for {spec['type']!r}; check the model and process")

    def log_sigma(times: list[float]) -> np.ndarray:
        return process_of.sigma_ve(torch.tensor(times, dtype=torch.float64)).log().numpy()

    ls_first = float(log_sigma([t_first])[0])
    # Without a start the first time is the reference's; with one it is free below it.
    first_free = start is not None

    def times_at(ls: np.ndarray) -> list[float] | None:
        # The times of the free log-sigmas, or None unless they decrease below the first.
        t = process_of.t_from_sigma_ve(torch.tensor(np.exp(ls), dtype=torch.float64)).tolist()
        times = t if first_free else [t_first, *t]
        if (
            any(not 0 < v <= 1 for v in times)
            or any(a <= b for a, b in itertools.pairwise(times))
            or not ls[0] <= ls_first
        ):
            return None
        return times

    def times_of(u: np.ndarray) -> list[float] | None:
        # Decreasing log-sigmas below the first as softplus increments, so every u is a valid order.
        return times_at(ls_first - np.cumsum(np.logaddexp(0.0, u)))

    def u_of(times: list[float]) -> np.ndarray:
        increments = -np.diff(log_sigma([t_first, *times] if first_free else times))
        # A start at t_first itself gets a small first increment so the search can move it.
        floor = np.full_like(increments, 1e-6)
        floor[0] = 1e-2 if first_free else 1e-6
        return np.log(np.expm1(np.maximum(increments, floor)))

    searching = time.perf_counter()
    deadline = math.inf if max_seconds is None else searching + max_seconds
    solver = build_scheduler({**spec, "timesteps": times0})
    denoise = descent.ve_denoiser(Preconditioned(counter, solver, prediction_type, raw=True), process_of)
    alpha_sigma_1 = alpha_sigma_at_1(probe)
    x_solver = x_start if first_free else x_start / float(process_of.alpha(torch.tensor(t_first, dtype=F64)))
    if method != "derivative_free" and not descent.passes_gradient(counter, x_start, t_first):
        if method == "gradient":
            raise ValueError(
                "method='gradient' needs a model that passes gradients to its input and time; this one "
                "does not (evaluated under torch.no_grad, or outside torch?): use method='derivative_free'"
            )
        method = "derivative_free"
        if shifts:
            raise ValueError(
                "shifts=True needs a model that passes gradients to its input and time; this one does not"
            )
        warnings.warn(
            "the model passes no gradient to its input and time (evaluated under torch.no_grad, or "
            "outside torch?), so the times are searched derivative-free, at about ten times the "
            "cost; give a differentiable model (Pipeline.denoiser_fn(..., grad=True)), or "
            "method='derivative_free' to silence this",
            stacklevel=2,
        )
    if method == "derivative_free" and shifts:
        raise ValueError("shifts=True needs the gradient search; give method='gradient' or 'auto'")
    if method != "derivative_free":
        method = "gradient"
        if max_evaluations is not None:
            warnings.warn(
                f"max_evaluations={max_evaluations} bounds the derivative-free search; the gradient "
                f"search takes iterations={iterations} (give method='derivative_free' for the former)",
                stacklevel=2,
            )
        weights_all = torch.full((len(x_start),), 1 / len(x_start), dtype=F64) if weights is None else weights

        # The descent moves the free log-sigmas themselves: each is then a local knob (an
        # increment parametrisation couples every later level to each step and made Adam's
        # steps overshoot), and a step that breaks their order is refused by `valid`.
        # With `shifts`, u ends with the shift of every evaluation after the first.
        free = steps if first_free else steps - 1
        solver.set_timesteps(steps)
        evaluations = len(solver.timesteps)

        def sigmas_of(u: torch.Tensor) -> list[Any]:
            return [*([] if first_free else [math.exp(ls_first)]), *u[:free].exp().unbind(), 0.0]

        def shifts_of(u: torch.Tensor) -> list[Any]:
            return [0.0, *u[free:].unbind()]

        # The levels stay in order (a margin of 1e-3 in log sigma), below the first (or at it,
        # where it is free) and above t = 1e-4; a shift within a factor e^2.
        ls_floor = float(process_of.sigma_ve(torch.tensor(1e-4, dtype=F64)).log())

        def project(u: np.ndarray) -> np.ndarray:
            top = ls_first + (1e-3 if first_free else 0.0)
            for i in range(free):
                u[i] = min(max(u[i], ls_floor + 1e-3 * (free - i)), top - 1e-3)
                top = u[i]
            u[free:] = np.clip(u[free:], -2.0, 2.0)
            return u

        objectives = [
            descent.calibration_objective(
                denoise, x_solver, reference, weights_all, sigmas_of, solver.solver,
                solver.solver_options(), start=start, alpha_sigma_1=alpha_sigma_1,
                batch_size=batch_size, shifts_of=fitted_shifts,
            )
            for fitted_shifts in ((None, shifts_of) if shifts else (None,))
        ]  # fmt: skip
    phases = 2 if method == "gradient" and shifts else 1
    budget = 2000 if max_evaluations is None else max_evaluations
    total = (iterations * phases if method == "gradient" else budget) * min(restarts, len(ranked))
    bar = progress_bar(
        total, "optimize_timesteps", progress, unit="iteration" if method == "gradient" else "run"
    )
    history: list[float] = []
    seen: dict[str, Any] = {"value": math.inf, "u": None}

    def objective(u: np.ndarray) -> float:
        if time.perf_counter() > deadline:
            raise _OutOfTime
        times = times_of(u)
        value = (
            math.inf
            if times is None
            else _error(counter, x_start, reference, spec, times, prediction_type, start, weights)
        )
        history.append(value)
        bar.update(1)
        if value < seen["value"]:
            seen.update(value=value, u=np.array(u, copy=True))
            bar.set_postfix(rmse=f"{value:.4g}")
        return value if math.isfinite(value) else 1e6

    def report(value: float, best_value: float) -> None:
        bar.update(1)
        bar.set_postfix(rmse=f"{best_value:.4g}")

    # The error is rugged in the times (a few trajectories switch mode as they move), so a local
    # search ends in the optimum nearest its start; restarts search from the next-best starts.
    best_times, best, best_shifts = times0, rmse_start, None
    timed_out = False
    try:  # the bar is closed on an interrupt too
        for name, (error, times_init) in ranked[:restarts]:
            if not math.isfinite(error) or timed_out:
                break
            u, value = u_of(times_init), error
            found_times: list[float] | None = times_init
            found_shifts: list[float] | None = None
            if method == "gradient":
                # The times first; with `shifts`, then times and shifts together from there (fitted
                # jointly from the start they made the NFE-10 fits worse, docs/benchmarks.md).
                ls_init = log_sigma(times_init)
                u = ls_init if first_free else ls_init[1:]
                for phase, value_and_grad in enumerate(objectives):
                    found = descent.descend(
                        value_and_grad,
                        u if phase == 0 else np.concatenate([u, np.zeros(evaluations - 1)]),
                        iterations=iterations,
                        learning_rate=learning_rate,
                        deadline=deadline,
                        valid=lambda v: times_at(v[:free]) is not None,
                        project=project,
                        on_iteration=report,
                    )
                    history.extend(found.history)
                    timed_out = found.timed_out
                    if found.value == math.inf:
                        break
                    # Scored again by the sampling loop itself, which the samples will come from.
                    times = times_at(found.u[:free])
                    fitted = [0.0, *map(float, found.u[free:])] if phase == 1 else None
                    error = _error(
                        counter, x_start, reference, _with_shifts(spec, fitted), times,
                        prediction_type, start, weights,
                    )  # fmt: skip
                    if error < value:
                        value, found_times, found_shifts = error, times, fitted
                    if timed_out:
                        break
                    u = found.u[:free]
            else:
                seen.update(value=value, u=u)
                for search, options in (
                    (
                        "Nelder-Mead",
                        {"maxfev": budget // 2, "xatol": 1e-4, "fatol": 1e-7, "adaptive": True},
                    ),
                    ("Powell", {"maxfev": budget // 2, "xtol": 1e-4, "ftol": 1e-7}),
                ):
                    try:
                        result = minimize(objective, u, method=search, options=options)
                    except _OutOfTime:  # the budget is spent: keep the best point evaluated so far
                        u, value, timed_out = seen["u"], float(seen["value"]), True
                        break
                    if result.fun < value:
                        u, value = result.x, float(result.fun)
                found_times = times_of(u)
            if value < best and found_times is not None:
                best_times, best, start_spacing, best_shifts = found_times, value, name, found_shifts
    finally:
        bar.close()
    return OptimizedSteps(
        timesteps=[float(t) for t in best_times],
        scheduler={**_with_shifts(spec, best_shifts), "timesteps": [float(t) for t in best_times]},
        shifts=best_shifts,
        start_spacing=start_spacing,
        rmse_start=rmse_start,
        rmse=best,
        model_evaluations=counter.calls,
        seconds=time.perf_counter() - started,
        start=start,
        history=history,
        timed_out=timed_out,
        search_seconds=time.perf_counter() - searching,
    )


class _OutOfTime(Exception):
    """Raised inside the search's objective when ``max_seconds`` is spent."""


class _Counter:
    """Counts model evaluations (a batched call counts once per sample row)."""

    def __init__(self, model: Model) -> None:
        self.model, self.calls = model, 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += len(x)
        return self.model(x, t)


def _spec(scheduler: str | Mapping[str, Any] | Scheduler, process: str | None, params: dict) -> dict:
    if isinstance(scheduler, Scheduler):
        raise TypeError("give the scheduler as a name or spec, e.g. 'unipc' or {'type': 'unipc', 'order': 3}")
    spec = {"type": scheduler} if isinstance(scheduler, str) else dict(scheduler)
    if process is not None:
        spec["process"] = process
    return {**spec, **params}


def _with_shifts(spec: Mapping[str, Any], shifts: list[float] | None) -> dict[str, Any]:
    return dict(spec) if shifts is None else {**spec, "shifts": shifts}


def _error(
    model: Model,
    x_start: torch.Tensor,
    reference: torch.Tensor,
    spec: Mapping[str, Any],
    times: list[float],
    prediction_type: PredictionType,
    start: GaussianStart | None,
    weights: torch.Tensor | None = None,
) -> float:
    sched = build_scheduler({**spec, "timesteps": times})
    return trajectory_rmse(
        model, x_start, reference, sched, len(times), prediction_type, weights=weights, start=start
    )


def stratify_pool(
    model: Model,
    x_pool: torch.Tensor,
    spec: Mapping[str, Any],
    fine_spec: Mapping[str, Any],
    spacings: Sequence[str],
    steps: int,
    n: int,
    seed: int,
    prediction_type: PredictionType,
    start: GaussianStart | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The indices of ``n`` of the ``x_pool`` starts and their weights (summing to 1).

    At a few evaluations the error is mostly the few samples whose run ends in another mode than
    the exact trajectory: a count, too small in ``n`` plain draws to rank schedules, and rugged in
    the times. Stratified sampling (Cochran, "Sampling Techniques", 1977, ch. 5) spends the
    calibration runs where that count lives: every ``steps``-step run of ``spacings`` is compared
    with a ``4 * steps``-step run, no reference needed, and the 3n/4 samples on which they disagree
    most are all kept (weight 1/pool each), the other n/4 drawn uniformly from the rest (weighted
    up to stand for it), so the weighted mean square is an unbiased estimate of that over the whole pool.
    It is not always a less variable estimate than n plain draws (the weighted-up rest can hold
    much of the error); what it buys is that the search sees the pool's near-switch trajectories.
    """
    score = torch.zeros(len(x_pool), dtype=torch.float64)
    for first in range(0, len(x_pool), n):  # batches of n, the size the calibration runs use
        x = x_pool[first : first + n]
        fine = sample_callable(model, x, fine_spec, 4 * steps, prediction_type, start=start).double()
        for spacing in spacings:
            coarse = sample_callable(
                model, x, {**spec, "spacing": spacing}, steps, prediction_type, start=start
            )
            gap = (coarse.double() - fine).pow(2).flatten(1).mean(1).nan_to_num(math.inf)
            score[first : first + n] = torch.maximum(score[first : first + n], gap)
    order = torch.argsort(score, descending=True)
    hard, rest = order[: 3 * n // 4], order[3 * n // 4 :]
    pick = torch.randperm(len(rest), generator=torch.Generator().manual_seed(seed))[: n - len(hard)]
    chosen = torch.cat([hard, rest[pick]])
    # Each kept sample stands for itself, each drawn one for len(rest) / (its count) of the rest.
    weights = torch.full((n,), len(rest) / (n - len(hard)), dtype=torch.float64)
    weights[: len(hard)] = 1.0
    return chosen, weights / len(x_pool)
