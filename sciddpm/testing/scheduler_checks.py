"""Conformance checks of the Scheduler contract (see :class:`sciddpm.interfaces.Scheduler`).

Convergence is checked where the answer is known in closed form: data ``x0 ~ N(mu, s^2 I)``, whose
exact denoiser ``E[x0 | x_t]`` comes from :class:`~sciddpm.diffusion.mixture.GaussianMixture`.
The probability-flow ODE of Gaussian data is linear, so a deterministic sampler started from
``x_T`` at time ``T`` must end at ``mu + s (x_T - alpha_T mu) / sqrt(alpha_T^2 s^2 + sigma_T^2)``
(Song et al. 2021, Eq. 13 solved for a Gaussian); a stochastic one must end with mean ``mu`` and
std ``s``.
"""

from __future__ import annotations

import torch

from sciddpm.interfaces import PREDICTION_TYPES, Scheduler, StepOutput
from sciddpm.testing.modules import same
from sciddpm.testing.runner import CheckFailed, Subject, checks

__all__ = ["SCHEDULER_CHECKS"]

#: The Gaussian data of the convergence check: mean, std and dimension.
MEAN, STD, DIM = 1.5, 0.5, 4
#: Samples and steps of a converged run, deterministic (pathwise error) and stochastic (error of
#: the moments, which converge in distribution and more slowly), and the tolerance on the error in
#: data units (std 0.5): the stochastic error's Monte-Carlo floor at 4096 x 4 draws is about 0.011,
#: DDPM reaches 0.026 and DDIM 0.014; a sampler that does not converge stays near 0.2 or above.
SAMPLES = {False: 256, True: 4096}
CONVERGED_STEPS = {False: 100, True: 400}
TOLERANCE = 0.04
#: A deterministic sampler's error must at least halve from 100 to 400 steps (first order
#: quarters it), unless it is below this floor, where the built-in multistep samplers' errors
#: (1e-4 on data of std 0.5) stop shrinking monotonically. A sampler that skips its last step or
#: biases every sample keeps its error and fails.
FINE_STEPS, ERROR_FLOOR = 400, 2e-4


def _scheduler(subject: Subject, fresh: bool = True) -> Scheduler:
    sched = subject.build() if fresh else subject.instance()
    if not isinstance(sched, Scheduler):
        raise CheckFailed(f"built a {type(sched).__name__}, not a sciddpm.interfaces.Scheduler")
    return sched


def check_builds(subject: Subject) -> None:
    """The factory builds a Scheduler that declares its noise ``process`` (API 2)."""
    sched = _scheduler(subject, fresh=False)
    if not callable(getattr(getattr(sched, "process", None), "alpha_sigma", None)):
        raise CheckFailed("the scheduler declares no `process` with alpha_sigma(t)")


def check_timesteps(subject: Subject) -> None:
    """``set_timesteps(n)`` gives 1-D times in (0, 1], decreasing (a time at most twice);
    ``set_timesteps(0)`` raises ValueError.
    """
    sched = _scheduler(subject)
    for steps in (2, 5, 10, 50):
        sched.set_timesteps(steps)
        t = torch.as_tensor(sched.timesteps, dtype=torch.float64)
        if t.ndim != 1 or len(t) < 1:
            raise CheckFailed(f"set_timesteps({steps}) gave timesteps of shape {tuple(t.shape)}")
        if not ((t > 0) & (t <= 1)).all():
            raise CheckFailed(
                f"set_timesteps({steps}) gave times outside (0, 1]: {t.min():.4g} .. {t.max():.4g}"
            )
        if not (t[1:] <= t[:-1]).all() or not t[-1] < t[0]:
            raise CheckFailed(f"set_timesteps({steps}) gave times that do not decrease: {t.tolist()}")
        if len(t) > 2 and (t[2:] == t[:-2]).any():
            raise CheckFailed(f"set_timesteps({steps}) repeats a time more than twice: {t.tolist()}")
    try:
        sched.set_timesteps(0)
    except ValueError:
        return
    except Exception as exc:
        raise CheckFailed(f"set_timesteps(0) raised {type(exc).__name__}; expected ValueError") from None
    raise CheckFailed("set_timesteps(0) was accepted; expected ValueError")


def check_step_shapes(subject: Subject) -> None:
    """``step`` returns a StepOutput with ``prev_sample`` and ``x0`` shaped like ``x_t``; a bad index raises
    IndexError.
    """
    sched = _scheduler(subject)
    sched.set_timesteps(5)
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(2, 3, 5, 7, generator=g)
    out = sched.step(torch.zeros_like(x_t), 0, x_t, "x0", noise=torch.randn(x_t.shape, generator=g))
    if not isinstance(out, StepOutput):
        raise CheckFailed(f"step returned a {type(out).__name__}, not a sciddpm.interfaces.StepOutput")
    for name in ("prev_sample", "x0"):
        value = getattr(out, name)
        if tuple(value.shape) != tuple(x_t.shape):
            raise CheckFailed(f"step's {name} has shape {tuple(value.shape)}; x_t has {tuple(x_t.shape)}")
    n = len(sched.timesteps)
    try:
        sched.step(torch.zeros_like(x_t), n, x_t, "x0", noise=torch.zeros_like(x_t))
    except IndexError:
        return
    except Exception as exc:
        raise CheckFailed(f"step at index {n} raised {type(exc).__name__}; expected IndexError") from None
    raise CheckFailed(f"step at index {n} (past the {n} timesteps) was accepted; expected IndexError")


def _error(sched: Scheduler, prediction_type: str, steps: int) -> float:
    """Distance of a run's samples to the exact answer (pathwise, or in mean and std when stochastic).

    The loop is the one of :func:`sciddpm.diffusion.loop.run` with the batch's step noise drawn
    from one generator: the per-sample noise streams of ``run`` cost a generator call per sample
    per step, which 4096 samples x 400 steps cannot afford in a unit test.
    """
    from sciddpm.diffusion.mixture import GaussianMixture
    from sciddpm.diffusion.preconditioning import Preconditioned
    from sciddpm.seeding import noise_for

    f64 = torch.float64
    data = GaussianMixture(
        torch.ones(1, dtype=f64), torch.full((1, DIM), MEAN, dtype=f64), torch.tensor([STD], dtype=f64)
    )
    model = data.model(sched.process, prediction_type, sched.sigma_data)  # type: ignore[arg-type]
    denoise = Preconditioned(model, sched, prediction_type, raw=True)  # type: ignore[arg-type]
    sched.set_timesteps(steps)
    samples = SAMPLES[bool(sched.stochastic)]
    x_start = noise_for((DIM,), 0, 0, samples).to(f64) * sched.init_noise_sigma
    g = torch.Generator().manual_seed(1)
    x = x_start
    for i, t in enumerate(sched.timesteps):
        x0 = denoise(x, torch.full((samples,), float(t), dtype=f64))
        noise = torch.randn(x.shape, generator=g, dtype=f64) if sched.stochastic else None
        x = sched.step(x0, i, x, "x0", noise=noise).prev_sample  # type: ignore[arg-type]
    if sched.stochastic:
        return float((x.mean(0) - MEAN).abs().mean() + (x.std(0) - STD).abs().mean())
    alpha, sigma = sched.process.alpha_sigma(torch.tensor(float(sched.timesteps[0]), dtype=f64))
    exact = MEAN + STD * (x_start - alpha * MEAN) / (alpha**2 * STD**2 + sigma**2).sqrt()
    return float((x - exact).pow(2).mean().sqrt())


def check_converges_on_gaussian(subject: Subject) -> None:
    """With the exact denoiser of Gaussian data, samples converge to the exact answer as steps grow, for
    every prediction type accepted.
    """
    sched = _scheduler(subject)
    accepted = []
    for prediction_type in PREDICTION_TYPES:
        try:
            sched.check_prediction_type(prediction_type)  # type: ignore[arg-type]
        except ValueError:
            continue
        accepted.append(prediction_type)
        steps = CONVERGED_STEPS[bool(sched.stochastic)]
        coarse, fine = _error(sched, prediction_type, 5), _error(sched, prediction_type, steps)
        kind = "mean and std" if sched.stochastic else "pathwise RMS"
        if not fine <= TOLERANCE:
            raise CheckFailed(
                f"{prediction_type}: after {steps} steps the {kind} error is {fine:.4g} "
                f"(tolerance {TOLERANCE}; 5 steps: {coarse:.4g})"
            )
        if not fine <= coarse + (TOLERANCE if sched.stochastic else 1e-9):
            raise CheckFailed(
                f"{prediction_type}: the {kind} error grows with steps: {coarse:.4g} at 5, "
                f"{fine:.4g} at {steps}"
            )
        if not sched.stochastic:
            finer = _error(sched, prediction_type, FINE_STEPS)
            if not (finer <= 0.5 * fine or finer <= ERROR_FLOOR):
                raise CheckFailed(
                    f"{prediction_type}: the pathwise error does not shrink with steps: {fine:.4g} at "
                    f"{steps}, {finer:.4g} at {FINE_STEPS} (a convergent sampler at least halves it)"
                )
    if not accepted:
        raise CheckFailed(f"check_prediction_type refuses every prediction type {PREDICTION_TYPES}")


def check_training_side(subject: Subject) -> None:
    """``sample_t`` gives reproducible ``(B,)`` times in [0, 1]; ``add_noise`` is ``alpha x0 + sigma eps`` of
    the declared process; ``target`` is what an exact denoiser of each accepted type outputs; ``loss_weight``,
    ``c_noise`` and ``c_in`` are finite ``(B,)``."""
    from sciddpm.diffusion.parametrization import from_x0, per_sample

    sched = _scheduler(subject)
    n = 6
    t = sched.sample_t(n, generator=torch.Generator().manual_seed(0))
    again = sched.sample_t(n, generator=torch.Generator().manual_seed(0))
    if tuple(t.shape) != (n,) or not ((t >= 0) & (t <= 1)).all():
        raise CheckFailed(f"sample_t({n}) gave {t.tolist()}; expected {n} times in [0, 1]")
    if not torch.equal(t, again):
        raise CheckFailed("sample_t with two generators of one seed gave different times")
    g = torch.Generator().manual_seed(1)
    x0, eps = (
        torch.randn(n, 2, 5, generator=g, dtype=torch.float64),
        torch.randn(n, 2, 5, generator=g, dtype=torch.float64),
    )
    t = t.to(torch.float64)
    alpha, sigma = (per_sample(c, x0) for c in sched.process.alpha_sigma(t))
    x_t = sched.add_noise(x0, eps, t)
    same(x_t, alpha * x0 + sigma * eps, "add_noise vs alpha(t) x0 + sigma(t) eps of the process")
    for prediction_type in PREDICTION_TYPES:
        try:
            sched.check_prediction_type(prediction_type)  # type: ignore[arg-type]
        except ValueError:
            continue
        exact = from_x0(x0, x_t, alpha, sigma, prediction_type, sched.sigma_data)  # type: ignore[arg-type]
        same(sched.target(x0, eps, t, prediction_type), exact, f"target for {prediction_type!r}", rtol=1e-4)  # type: ignore[arg-type]
        weight = sched.loss_weight(t, prediction_type)  # type: ignore[arg-type]
        if tuple(weight.shape) != (n,) or not torch.isfinite(weight).all() or (weight < 0).any():
            raise CheckFailed(
                f"loss_weight for {prediction_type!r} is {weight.tolist()}; expected {n} finite >= 0"
            )
    for name in ("c_noise", "c_in"):
        value = getattr(sched, name)(t)
        if tuple(value.shape) != (n,) or not torch.isfinite(value).all():
            raise CheckFailed(f"{name}(t) is {value.tolist()}; expected {n} finite values")


def check_same_run_same_samples(subject: Subject) -> None:
    """Running the same instance twice with the same seed gives the same samples (no state leaks between
    runs).
    """
    from sciddpm.diffusion.loop import sample_callable
    from sciddpm.diffusion.mixture import GaussianMixture

    sched = _scheduler(subject)
    model = GaussianMixture.random(DIM, 3).model(sched.process, "x0", sched.sigma_data)
    first, second = (sample_callable(model, (64, DIM), sched, 7, "x0", seed=3) for _ in range(2))
    if not torch.equal(first, second):
        raise CheckFailed(f"two runs of the same instance differ by up to {(first - second).abs().max():.3g}")


SCHEDULER_CHECKS = checks(
    "scheduler",
    check_builds,
    check_timesteps,
    check_step_shapes,
    check_converges_on_gaussian,
    check_training_side,
    check_same_run_same_samples,
)
