"""Gradient schedule fitting (sciddpm.diffusion.descent): gradients, the differentiated run, the descent."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from sciddpm.diffusion import descent, solvers
from sciddpm.diffusion.gaussian import GaussianStart
from sciddpm.diffusion.loop import build_scheduler, sample_callable
from sciddpm.diffusion.mixture import GaussianMixture
from sciddpm.diffusion.preconditioning import Preconditioned
from sciddpm.diffusion.processes import make_process
from sciddpm.seeding import noise_for

F64 = torch.float64
ODE_SOLVERS = [
    ("euler", {}),
    ("heun", {}),
    ("dpmpp_2m", {}),
    ("dpmpp_3m", {}),
    ("dpmpp_2m_sde", {"eta": 0.0}),
    ("unipc", {"order": 2}),
    ("unipc", {"order": 3}),
]
# Levels with one step longer than MAX_EXTRAPOLATION (9 -> 1) and one where Heun corrects
# exponentially, so every branch of the updates is differentiated.
LEVELS = [80.0, 9.0, 1.0, 0.6, 0.2, 0.05]


@pytest.fixture(scope="module")
def mixture():
    gm = GaussianMixture.random(4, 3, seed=2, spread=1.5)
    process = make_process("vp")
    return gm, process, gm.model(process, "eps")


def _denoiser(process, model):
    return descent.ve_denoiser(Preconditioned(model, build_scheduler("unipc"), "eps", raw=True), process)


@pytest.mark.parametrize(("solver", "options"), ODE_SOLVERS)
def test_every_ode_solver_is_differentiable_in_its_levels(mixture, solver, options) -> None:
    gm, _, _ = mixture
    x = noise_for((4,), 3, 0, 16).double() * LEVELS[0]

    def final(levels: list) -> torch.Tensor:
        return solvers.sample(gm.denoise, x, [*levels, 0.0], solver, **options)

    ls = torch.tensor(LEVELS[1:], dtype=F64).log().requires_grad_(True)
    out = final([LEVELS[0], *ls.exp().unbind()]).pow(2).sum()
    (grad,) = torch.autograd.grad(out, ls)
    h = 1e-6
    for i in range(len(ls)):
        up, down = ls.detach().clone(), ls.detach().clone()
        up[i] += h
        down[i] -= h
        fd = (
            final([LEVELS[0], *up.exp().tolist()]).pow(2).sum()
            - final([LEVELS[0], *down.exp().tolist()]).pow(2).sum()
        ) / (2 * h)
        assert float(grad[i]) == pytest.approx(float(fd), rel=1e-5, abs=1e-7), i


@pytest.mark.parametrize(("solver", "options"), ODE_SOLVERS)
@pytest.mark.parametrize("with_start", [False, True])
def test_the_differentiated_run_is_the_sampling_loop(mixture, solver, options, with_start) -> None:
    gm, process, model = mixture
    start = (
        GaussianStart.fit(gm.sample(4000, generator=torch.Generator().manual_seed(0))) if with_start else None
    )
    levels = LEVELS[1:] if with_start else LEVELS
    times = process.t_from_sigma_ve(torch.tensor(levels, dtype=F64)).tolist()
    spec = {"type": solver, **options, "timesteps": times}
    x = noise_for((4,), 5, 0, 32).double()
    if not with_start:
        x = x * float(
            process.sigma(torch.tensor(times[0], dtype=F64)).hypot(
                process.alpha(torch.tensor(times[0], dtype=F64))
            )
        )
    expected = sample_callable(model, x, spec, len(times), "eps", start=start)
    alpha_sigma_1 = tuple(float(v) for v in process.alpha_sigma(torch.tensor(1.0, dtype=F64)))
    x_solver = x if with_start else x / float(process.alpha(torch.tensor(times[0], dtype=F64)))
    got = descent.run(
        _denoiser(process, model),
        x_solver,
        [*levels, 0.0],
        solver,
        options,
        start=start,
        alpha_sigma_1=alpha_sigma_1,
    )
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-9)


def test_the_objective_gradient_matches_finite_differences_and_ignores_the_batch_size(mixture) -> None:
    gm, process, model = mixture
    start = GaussianStart.fit(gm.sample(4000, generator=torch.Generator().manual_seed(0)))
    x = noise_for((4,), 6, 0, 40).double()
    reference = sample_callable(model, x, {"type": "unipc", "order": 3, "spacing": "log_snr"}, 100, "eps")
    weights = torch.full((40,), 1 / 40, dtype=F64)
    alpha_sigma_1 = tuple(float(v) for v in process.alpha_sigma(torch.tensor(1.0, dtype=F64)))
    kwargs = {"start": start, "alpha_sigma_1": alpha_sigma_1}
    args = (
        _denoiser(process, model),
        x,
        reference,
        weights,
        lambda ls: [*ls.exp().unbind(), 0.0],
        "unipc",
        {"order": 3},
    )
    whole = descent.calibration_objective(*args, **kwargs)
    batched = descent.calibration_objective(*args, batch_size=7, **kwargs)
    ls = np.log(LEVELS[1:])
    value, grad = whole(ls)
    value_b, grad_b = batched(ls)
    assert value_b == pytest.approx(value, rel=1e-12)
    np.testing.assert_allclose(grad_b, grad, rtol=1e-9, atol=1e-12)
    # The value is the weighted RMS the sampling loop gives.
    times = process.t_from_sigma_ve(torch.tensor(LEVELS[1:], dtype=F64)).tolist()
    y = sample_callable(
        model, x, {"type": "unipc", "order": 3, "timesteps": times}, len(times), "eps", start=start
    )
    assert value == pytest.approx(float((y - reference).pow(2).mean().sqrt()), rel=1e-9)
    h = 1e-6
    for i in range(len(ls)):
        e = np.eye(len(ls))[i] * h
        assert grad[i] == pytest.approx((whole(ls + e)[0] - whole(ls - e)[0]) / (2 * h), rel=1e-4, abs=1e-8)


def test_passes_gradient_tells_a_no_grad_model_apart(mixture) -> None:
    _, _, model = mixture
    x = torch.randn(3, 4, dtype=F64)
    assert descent.passes_gradient(model, x, 0.5)

    @torch.no_grad()
    def frozen(x_t, t):
        return model(x_t, t)

    # An eps-model's conversion to x0 depends on the time itself: the network is what is probed.
    assert not descent.passes_gradient(frozen, x, 0.5)


def test_descend_finds_a_quadratic_minimum_and_keeps_the_best() -> None:
    target = np.array([1.0, -2.0, 0.5])

    def value_and_grad(u):
        r = u - target
        return float(r @ r), 2 * r

    found = descent.descend(value_and_grad, np.zeros(3), iterations=300, learning_rate=0.1)
    np.testing.assert_allclose(found.u, target, atol=1e-2)
    assert found.value == min(found.history) and not found.timed_out


def test_descend_steps_back_from_a_jump_and_never_evaluates_an_invalid_point() -> None:
    seen = []

    def value_and_grad(u):
        seen.append(u.copy())
        # A cliff at u > 0.25: a step onto it must send the descent back below it.
        value = 1.0 - u[0] + (100.0 if u[0] > 0.25 else 0.0)
        return value, np.array([-1.0])

    found = descent.descend(value_and_grad, np.zeros(1), iterations=40, learning_rate=0.1)
    assert found.u[0] <= 0.25 and found.value == pytest.approx(1 - found.u[0])
    assert any(v > 50 for v in found.history)  # it did step onto the cliff, and came back

    seen.clear()
    bounded = descent.descend(
        value_and_grad, np.zeros(1), iterations=20, learning_rate=0.1, valid=lambda u: u[0] < 0.15
    )
    assert seen and all(u[0] < 0.15 for u in seen)  # points out of bounds cost no evaluation
    assert math.inf in bounded.history and bounded.u[0] < 0.15


def test_descend_stops_at_its_deadline() -> None:
    found = descent.descend(
        lambda u: (float(u @ u), 2 * u),
        np.ones(2),
        iterations=10,
        learning_rate=0.1,
        deadline=time.perf_counter() - 1,
    )
    assert found.timed_out and found.history == [] and found.value == math.inf


@pytest.mark.parametrize(("solver", "options"), [("unipc", {"order": 3}), ("heun", {}), ("euler", {})])
def test_shifted_evaluations_are_the_schedulers_shifts(mixture, solver, options) -> None:
    gm, process, model = mixture
    start = GaussianStart.fit(gm.sample(4000, generator=torch.Generator().manual_seed(0)))
    levels = LEVELS[1:]
    times = process.t_from_sigma_ve(torch.tensor(levels, dtype=F64)).tolist()
    probe = build_scheduler({"type": solver, **options, "timesteps": times})
    probe.set_timesteps(len(times))
    shifts = [0.0, *(0.1 * (-1) ** k for k in range(1, len(probe.timesteps)))]
    spec = {"type": solver, **options, "timesteps": times, "shifts": shifts}
    seen = []

    def recording(x_t, t):
        seen.append(float(t[0]))
        return model(x_t, t)

    x = noise_for((4,), 5, 0, 16).double()
    expected = sample_callable(recording, x, spec, len(times), "eps", start=start)
    unshifted = solvers.evaluation_sigmas(solver, [*levels, 0.0], **options)
    wanted = process.t_from_sigma_ve(
        torch.tensor(unshifted, dtype=F64) * torch.tensor(shifts, dtype=F64).exp()
    )
    np.testing.assert_allclose(seen, wanted.tolist(), rtol=1e-12)
    alpha_sigma_1 = tuple(float(v) for v in process.alpha_sigma(torch.tensor(1.0, dtype=F64)))
    got = descent.run(
        _denoiser(process, model), x, [*levels, 0.0], solver, options,
        start=start, alpha_sigma_1=alpha_sigma_1, shifts=shifts,
    )  # fmt: skip
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-9)
    assert not torch.allclose(
        expected, sample_callable(model, x, {**spec, "shifts": None}, len(times), "eps", start=start)
    )


def test_bad_shifts_are_refused() -> None:
    times = [0.9, 0.5, 0.2]
    with pytest.raises(ValueError, match="the first shift must be 0"):
        build_scheduler({"type": "unipc", "timesteps": times, "shifts": [0.1, 0.0, 0.0]})
    with pytest.raises(ValueError, match="finite"):
        build_scheduler({"type": "unipc", "timesteps": times, "shifts": [0.0, math.inf, 0.0]})
    sched = build_scheduler({"type": "unipc", "timesteps": times, "shifts": [0.0, 0.1]})
    with pytest.raises(ValueError, match="2 evaluation shifts but 3 steps make 3 evaluations"):
        sched.set_timesteps(3)
