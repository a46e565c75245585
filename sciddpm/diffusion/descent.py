"""Gradient descent on sampling times: the short run made differentiable in its noise levels.

The calibration error of a schedule (:mod:`sciddpm.diffusion.timesteps`) is the RMS distance of
``steps``-step runs to accurate reference runs from the same noise. Every solver update is a smooth
function of its noise levels, and so is the model's output, so the error has a gradient with
respect to the log noise levels, obtained by backpropagation through the whole run (as in
"Learning fast samplers", Watson et al. 2022, https://arxiv.org/abs/2202.05830, and the
time-step optimisation of Xue et al. 2024, which this replaces a derivative-free search for). One
gradient costs about three short runs (forward, and the backward through each evaluation's
input and time, not the network's weights), where a derivative-free search spends thousands of
runs; :func:`descend` takes ``iterations`` Adam steps (Kingma & Ba 2015, Algorithm 1) with a cosine
learning rate, keeps the best schedule seen, and on a step that makes the error jump (a
trajectory crossing into another mode) returns to the best one with half the learning rate.

:func:`run` is the solver driven in its own units (``x = x_t / alpha`` at ``sigma = sigma_t /
alpha``, :mod:`sciddpm.diffusion.solvers`) with the Gaussian start's carry and first-step
correction (:mod:`sciddpm.diffusion.gaussian`): the arithmetic of the one sampling loop
(:func:`sciddpm.diffusion.loop.run`) without its float times, tested equal to it. The schedule
the descent finds is scored again by that loop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from sciddpm.diffusion.gaussian import GaussianStart
from sciddpm.diffusion.preconditioning import Preconditioned
from sciddpm.diffusion.processes import NoiseProcess
from sciddpm.diffusion.solvers import SOLVERS, Level

__all__ = ["Descent", "calibration_objective", "descend", "passes_gradient", "run", "ve_denoiser"]

F64 = torch.float64

#: An error at least this many times the best one seen makes :func:`descend` step back.
JUMP = 1.5


def ve_denoiser(
    model: Preconditioned, process: NoiseProcess
) -> Callable[[torch.Tensor, Level], torch.Tensor]:
    """``D(x, sigma)`` in the solvers' units, differentiable in ``x`` and a tensor ``sigma``.

    ``model`` is the network as the denoiser of ``process`` (``D(x_t, t) -> x0``, ``t`` of shape
    ``(B,)``); ``x`` is ``x_t / alpha`` at the VE-equivalent noise level ``sigma`` (a float or a 0-dim
    tensor), and the time is ``process.t_from_sigma_ve(sigma)``, as the schedulers compute it.
    """

    def denoise(x: torch.Tensor, sigma: Level) -> torch.Tensor:
        t = process.t_from_sigma_ve(torch.as_tensor(sigma, dtype=F64))
        return model(x * process.alpha(t), t.expand(len(x)))

    return denoise


def run(
    denoise: Callable[[torch.Tensor, Level], torch.Tensor],
    x: torch.Tensor,
    sigmas: Sequence[Level],
    solver: str,
    options: dict[str, Any],
    *,
    start: GaussianStart | None = None,
    alpha_sigma_1: tuple[float, float] = (0.0, 1.0),
    shifts: Sequence[Level] | None = None,
) -> torch.Tensor:
    """The final sample of ``solver`` over ``sigmas`` (decreasing, ending at 0), differentiable in them.

    ``x`` is the state at ``sigmas[0]`` in the solvers' units, or with a ``start`` the ``x_t`` at
    t = 1 (whose ``(alpha, sigma)`` is ``alpha_sigma_1``), carried along the start's flow to
    ``sigmas[0]`` and corrected by the first evaluation with its x0 estimate moved alike
    (:func:`sciddpm.diffusion.gaussian.correct_first`). ``options`` go to the solver (e.g. UniPC's
    ``order``). With ``shifts`` (one per evaluation, the first 0) evaluation ``k`` denoises at the
    level ``sigma * exp(shifts[k])`` (the schedulers' ``shifts``). Returns the sample in data units
    (the solvers' units at sigma 0), shaped like ``x``.
    """
    if shifts is not None and float(shifts[0]) != 0:
        raise ValueError(f"the first shift must be 0 (the level the run starts at), got {float(shifts[0])}")
    if start is not None:
        x = start.transport(x, *alpha_sigma_1, sigmas[0]).to(x.dtype)
    gen = SOLVERS[solver](x, list(sigmas), **options)
    try:
        x, sigma = next(gen)
        first, k = True, 0
        while True:
            if shifts is not None and k >= len(shifts):
                raise ValueError(
                    f"{len(shifts)} shifts for a run of more evaluations; give one per evaluation"
                )
            shift = 0.0 if shifts is None else shifts[k]
            factor = shift.exp() if isinstance(shift, torch.Tensor) else math.exp(shift)
            denoised = denoise(x, sigma * factor if shifts is not None else sigma)
            k += 1
            if first and start is not None:
                corrected = start.correct(x, denoised, 1.0, sigma, *alpha_sigma_1).to(x.dtype)
                moved = start.denoise(corrected, 1.0, sigma) - start.denoise(x, 1.0, sigma)
                x, denoised = corrected, denoised + moved.to(denoised)
            first = False
            x, sigma = gen.send((denoised, x))
    except StopIteration as stop:
        return stop.value


def passes_gradient(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x_t: torch.Tensor, t: float
) -> bool:
    """Whether ``model(x_t, t)`` passes gradients to its input and time (one evaluation on ``x_t[:1]``).

    False for a model evaluated under ``torch.no_grad`` or outside torch, or one that cuts its
    time's gradient (``t.item()``, ``t.long()``). The network itself is probed, not its conversion
    to x0, whose own dependence on the time would pass a gradient whatever the network does.
    """
    with torch.enable_grad():
        x = x_t[:1].detach().clone().requires_grad_(True)
        time = torch.full((1,), t, dtype=F64, requires_grad=True)
        out = model(x, time)
        if not out.requires_grad:
            return False
        # A network that turns its time into a number (.item(), .long()) passes no time gradient.
        return torch.autograd.grad(out.sum(), time, allow_unused=True)[0] is not None


def calibration_objective(
    denoise: Callable[[torch.Tensor, Level], torch.Tensor],
    x: torch.Tensor,
    reference: torch.Tensor,
    weights: torch.Tensor,
    sigmas_of: Callable[[torch.Tensor], list[Level]],
    solver: str,
    options: dict[str, Any],
    *,
    start: GaussianStart | None = None,
    alpha_sigma_1: tuple[float, float] = (0.0, 1.0),
    batch_size: int | None = None,
    shifts_of: Callable[[torch.Tensor], list[Level]] | None = None,
) -> Callable[[np.ndarray], tuple[float, np.ndarray]]:
    """``u -> (error, d error / d u)``: the weighted RMS distance of runs from ``x`` to ``reference``.

    ``sigmas_of(u)`` gives the run's noise levels (0-dim tensors where they depend on ``u``), and
    ``shifts_of(u)``, if given, its evaluation shifts (:func:`run`);
    ``x``, ``start`` and ``alpha_sigma_1`` are as in :func:`run`; ``weights (n,)`` sum to 1 and
    weight each sample's mean square. The runs go ``batch_size`` samples at a time (all at once
    when None), each batch's graph freed after its backward pass, so memory is that of one
    batch's run; the gradient is the same.
    """
    step = len(x) if batch_size is None else batch_size

    def value_and_grad(u_np: np.ndarray) -> tuple[float, np.ndarray]:
        u = torch.tensor(u_np, dtype=F64, requires_grad=True)
        total, grad = 0.0, torch.zeros_like(u)
        for first in range(0, len(x), step):
            part = slice(first, first + step)
            with torch.enable_grad():
                shifts = None if shifts_of is None else shifts_of(u)
                y = run(
                    denoise, x[part], sigmas_of(u), solver, options,
                    start=start, alpha_sigma_1=alpha_sigma_1, shifts=shifts,
                )  # fmt: skip
                squares = (y.double() - reference[part].to(y).double()).pow(2).flatten(1).mean(1)
                loss = (weights[part].to(squares) * squares).sum()
            total += float(loss.detach())
            grad += torch.autograd.grad(loss, u)[0]
        if not math.isfinite(total):  # a run diverged: no usable value or gradient
            return math.inf, np.zeros_like(u_np)
        value = math.sqrt(total)
        # d sqrt(m) = dm / (2 sqrt(m)).
        return value, (grad / (2 * value) if value > 0 else grad).numpy()

    return value_and_grad


@dataclass
class Descent:
    """What :func:`descend` found: the best ``u`` and its error, the error of every iteration."""

    u: np.ndarray
    value: float
    history: list[float] = field(default_factory=list)
    timed_out: bool = False


def descend(
    value_and_grad: Callable[[np.ndarray], tuple[float, np.ndarray]],
    u0: np.ndarray,
    *,
    iterations: int,
    learning_rate: float,
    deadline: float = math.inf,
    valid: Callable[[np.ndarray], bool] = lambda u: True,
    project: Callable[[np.ndarray], np.ndarray] | None = None,
    on_iteration: Callable[[float, float], None] | None = None,
) -> Descent:
    """Minimise ``value_and_grad(u) -> (error, d error / d u)`` by Adam from ``u0``.

    ``iterations`` gradient evaluations, the learning rate falling from ``learning_rate`` to a
    twentieth of it along a cosine (Loshchilov & Hutter 2017); an error over :data:`JUMP` times the
    best, not finite, or at a point where ``valid(u)`` fails (levels out of order) sends ``u`` back
    to the best point with half the learning rate and fresh moments; an invalid point is not
    evaluated. ``project(u)``, if given, maps every step back onto the allowed region (levels in
    order and in range), so a step past the region's edge is clipped there, not undone. Stops
    early, with
    ``timed_out``, when ``time.perf_counter()`` passes ``deadline``. ``on_iteration(error,
    best)`` is called after each evaluation (a progress bar). Returns the best :class:`Descent`.
    """
    best = Descent(np.array(u0, dtype=float), math.inf)
    u = torch.tensor(u0, dtype=F64, requires_grad=True)
    adam: torch.optim.Adam | None = None
    scale = 1.0
    for k in range(iterations):
        if time.perf_counter() > deadline:
            best.timed_out = True
            break
        point = u.detach().numpy().copy()
        value, grad = value_and_grad(point) if valid(point) else (math.inf, np.zeros_like(point))
        best.history.append(value)
        ok = math.isfinite(value) and bool(np.isfinite(grad).all())
        if ok and value < best.value:
            best.u, best.value = point, value
        if on_iteration is not None:
            on_iteration(value, best.value)
        if not ok or value > JUMP * best.value:
            # The step crossed a ridge of the error (a trajectory switching mode): go back.
            with torch.no_grad():
                u.copy_(torch.from_numpy(best.u))
            scale, adam = scale / 2, None
            continue
        if adam is None:
            adam = torch.optim.Adam([u], lr=learning_rate)
        cosine = 0.5 * (1 + math.cos(math.pi * k / iterations))
        for group in adam.param_groups:
            group["lr"] = scale * learning_rate * (1 / 20 + (1 - 1 / 20) * cosine)
        u.grad = torch.as_tensor(grad, dtype=F64)
        adam.step()
        if project is not None:  # projected gradient descent: back onto the allowed region
            with torch.no_grad():
                u.copy_(torch.from_numpy(project(u.detach().numpy().copy())))
    return best
