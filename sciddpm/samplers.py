"""Samplers on the VE-equivalent probability-flow ODE/SDE, k-diffusion style.

Every sampler works on ``x = x_t / alpha`` at noise level ``sigma = sigma_t / alpha``
(Karras et al. 2022, Eq. 4 with s(t) = alpha), where the process is
``x = x0 + sigma eps`` whatever the training process was, and sees the model only
through the denoiser ``D(x, sigma) = E[x0 | x]``. So one sampler drives any process.

A sampler is a generator with one signature, ``sampler(x, sigmas, noise, **options)``:
it yields ``(x, sigma)`` where it needs the denoiser, receives ``D(x, sigma)``, and
returns the final sample. ``sigmas`` decreases and may end at 0. ``noise()`` gives a
standard normal draw shaped like ``x`` (at most one per evaluation). The same
generator serves the callable driver :func:`sample` and the step-by-step
:class:`~sciddpm.interfaces.Scheduler` interface, so there is one copy of each update.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Generator, Sequence
from typing import Any

import torch

__all__ = [
    "SAMPLERS",
    "Denoised",
    "dpmpp_2m",
    "dpmpp_2m_sde",
    "dpmpp_3m",
    "euler",
    "euler_ancestral",
    "evaluation_sigmas",
    "heun",
    "karras_sigmas",
    "log_snr_sigmas",
    "sample",
    "unipc",
]

#: Yields ``(x, sigma)`` to denoise, is sent ``D(x, sigma)``, returns the final ``x``.
Denoised = Generator[tuple[torch.Tensor, float], torch.Tensor, torch.Tensor]
Noise = Callable[[], torch.Tensor]


def _no_noise() -> torch.Tensor:
    raise ValueError("this sampler is stochastic here and needs noise")


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> list[float]:
    """``n`` levels from sigma_max to sigma_min, uniform in ``sigma^(1/rho)`` (Karras et al. 2022, Eq. 5)."""
    if n == 1:
        return [sigma_max]
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return [(hi + i / (n - 1) * (lo - hi)) ** rho for i in range(n)]


def log_snr_sigmas(n: int, sigma_min: float, sigma_max: float) -> list[float]:
    """``n`` noise levels uniform in log-SNR, i.e. in ``log sigma`` (Lu et al. 2022, Sec. 3.3 "logSNR")."""
    if n == 1:
        return [sigma_max]
    lo, hi = math.log(sigma_min), math.log(sigma_max)
    return [math.exp(hi + i / (n - 1) * (lo - hi)) for i in range(n)]


def euler(x: torch.Tensor, sigmas: Sequence[float], noise: Noise = _no_noise) -> Denoised:
    """Euler steps on the probability-flow ODE ``dx/dsigma = (x - D) / sigma`` (Karras et al. 2022, Eq. 4)."""
    for sigma, sigma_next in itertools.pairwise(sigmas):
        denoised = yield x, sigma
        x = x + (x - denoised) / sigma * (sigma_next - sigma)
    return x


def _ancestral(sigma: float, sigma_next: float, eta: float) -> tuple[float, float]:
    """``(sigma_down, sigma_up)`` of an ancestral step (k-diffusion's ``get_ancestral_step``)."""
    if sigma_next == 0:
        return 0.0, 0.0
    up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(sigma_next**2 - up**2), up


def euler_ancestral(
    x: torch.Tensor, sigmas: Sequence[float], noise: Noise = _no_noise, eta: float = 1.0, s_noise: float = 1.0
) -> Denoised:
    """Ancestral Euler: Euler to sigma_down, then noise of std sigma_up (k-diffusion's ancestral step)."""
    for sigma, sigma_next in itertools.pairwise(sigmas):
        denoised = yield x, sigma
        down, up = _ancestral(sigma, sigma_next, eta)
        x = x + (x - denoised) / sigma * (down - sigma)
        if up > 0:
            x = x + noise() * (s_noise * up)
    return x


def heun(
    x: torch.Tensor,
    sigmas: Sequence[float],
    noise: Noise = _no_noise,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float | None = None,
    s_noise: float = 1.0,
) -> Denoised:
    """Heun's 2nd-order method with optional churn, Karras et al. 2022 (Algorithm 2).

    Two evaluations per step, one on the last step when it ends at sigma = 0. The first step takes
    no churn: its state is the initial noise, which already has the first noise level.
    """
    n = len(sigmas) - 1
    for i, (sigma, sigma_next) in enumerate(itertools.pairwise(sigmas)):
        churn = i > 0 and s_tmin <= sigma <= (math.inf if s_tmax is None else s_tmax)
        gamma = min(s_churn / n, math.sqrt(2) - 1) if churn else 0.0
        sigma_hat = min(sigma * (1 + gamma), sigmas[0])
        if sigma_hat > sigma:
            x = x + noise() * (s_noise * math.sqrt(sigma_hat**2 - sigma**2))
        denoised = yield x, sigma_hat
        d = (x - denoised) / sigma_hat
        x_next = x + d * (sigma_next - sigma_hat)
        if sigma_next > 0:
            denoised_next = yield x_next, sigma_next
            d_next = (x_next - denoised_next) / sigma_next
            x_next = x + (d + d_next) / 2 * (sigma_next - sigma_hat)
        x = x_next
    return x


def dpmpp_2m(x: torch.Tensor, sigmas: Sequence[float], noise: Noise = _no_noise) -> Denoised:
    """DPM-Solver++(2M), Lu et al. 2022b (Algorithm 2), in lambda = -log sigma."""
    old, h_last = None, 0.0
    for sigma, sigma_next in itertools.pairwise(sigmas):
        denoised = yield x, sigma
        if sigma_next == 0:
            x = denoised
            continue
        h = math.log(sigma / sigma_next)
        d = denoised
        if old is not None:
            r = h_last / h
            d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old
        x = (sigma_next / sigma) * x - math.expm1(-h) * d
        old, h_last = denoised, h
    return x


def dpmpp_3m(
    x: torch.Tensor, sigmas: Sequence[float], noise: Noise = _no_noise, eta: float = 0.0, s_noise: float = 1.0
) -> Denoised:
    """DPM-Solver++(3M) in lambda = -log sigma (Lu et al. 2022b, Sec. 4; k-diffusion's 3M; eta = 0: ODE)."""
    d1_, d2_, h1, h2 = None, None, None, None
    for sigma, sigma_next in itertools.pairwise(sigmas):
        denoised = yield x, sigma
        if sigma_next == 0:
            x = denoised
            continue
        h = math.log(sigma / sigma_next)
        h_eta = h * (eta + 1)
        x = math.exp(-h_eta) * x - math.expm1(-h_eta) * denoised
        phi_2 = math.expm1(-h_eta) / h_eta + 1
        if h2 is not None:
            r0, r1 = h1 / h, h2 / h
            d1_0 = (denoised - d1_) / r0
            d1_1 = (d1_ - d2_) / r1
            d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            phi_3 = phi_2 / h_eta - 0.5
            x = x + phi_2 * d1 - phi_3 * d2
        elif h1 is not None:
            x = x + phi_2 * (denoised - d1_) / (h1 / h)
        if eta > 0:
            x = x + noise() * (sigma_next * math.sqrt(-math.expm1(-2 * h * eta)) * s_noise)
        d1_, d2_, h1, h2 = denoised, d1_, h, h1
    return x


def dpmpp_2m_sde(
    x: torch.Tensor,
    sigmas: Sequence[float],
    noise: Noise = _no_noise,
    eta: float = 1.0,
    s_noise: float = 1.0,
    solver_type: str = "midpoint",
) -> Denoised:
    """SDE-DPM-Solver++(2M), Lu et al. 2022b (Appendix B); eta = 0 is the 2M ODE solver."""
    old, h_last = None, 0.0
    for sigma, sigma_next in itertools.pairwise(sigmas):
        denoised = yield x, sigma
        if sigma_next == 0:
            x = denoised
            continue
        h = math.log(sigma / sigma_next)
        eta_h = eta * h
        decay = -math.expm1(-h - eta_h)
        x = (sigma_next / sigma) * math.exp(-eta_h) * x + decay * denoised
        if old is not None:
            r = h_last / h
            if solver_type == "heun":
                x = x + (1 - decay / (h + eta_h)) * (denoised - old) / r
            else:
                x = x + 0.5 * decay * (denoised - old) / r
        if eta > 0:
            x = x + noise() * (sigma_next * math.sqrt(-math.expm1(-2 * eta_h)) * s_noise)
        old, h_last = denoised, h
    return x


def _unipc_update(
    x: torch.Tensor,
    sigma: float,
    sigma_next: float,
    history: list[tuple[float, torch.Tensor]],
    order: int,
    denoised_next: torch.Tensor | None = None,
) -> torch.Tensor:
    """One UniP (``denoised_next`` None) or UniC step of Zhao et al. 2023 (Alg. 2-3), B(h) = e^h - 1 ("bh2").

    ``history`` ends with ``(lambda, D)`` at ``sigma``; ``order`` counts the points used.
    """
    lam, m0 = history[-1]
    h = math.log(sigma / sigma_next)
    hh = -h
    h_phi_1 = math.expm1(hh)
    b_h = math.expm1(hh)
    rks, d1s = [], []
    for i in range(1, order):
        lam_i, m_i = history[-(i + 1)]
        rk = (lam_i - lam) / h
        rks.append(rk)
        d1s.append((m_i - m0) / rk)
    rks.append(1.0)
    h_phi_k, factorial, b = h_phi_1 / hh - 1, 1, []
    for i in range(1, order + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    r = torch.tensor([[rk ** (i - 1) for rk in rks] for i in range(1, order + 1)], dtype=torch.float64)
    b_vec = torch.tensor(b, dtype=torch.float64)
    x_next = (sigma_next / sigma) * x - h_phi_1 * m0
    if denoised_next is None:
        if d1s:
            rhos = [0.5] if order == 2 else torch.linalg.solve(r[:-1, :-1], b_vec[:-1]).tolist()
            x_next = x_next - b_h * sum(rho * d for rho, d in zip(rhos, d1s, strict=True))
        return x_next
    rhos = [0.5] if order == 1 else torch.linalg.solve(r, b_vec).tolist()
    corr = sum(rho * d for rho, d in zip(rhos[:-1], d1s, strict=True)) if d1s else 0.0
    return x_next - b_h * (corr + rhos[-1] * (denoised_next - m0))


def unipc(x: torch.Tensor, sigmas: Sequence[float], noise: Noise = _no_noise, order: int = 2) -> Denoised:
    """UniPC, Zhao et al. 2023 (Algorithms 2-3): UniP-``order`` + the bh2 UniC, at no extra evaluation.

    The corrector reuses the evaluation at the predicted point; the order warms up from 1. A step to
    sigma = 0 returns the denoiser output, which is exact there, so no order is lowered at the end.
    """
    history: list[tuple[float, torch.Tensor]] = []
    x_last, last_order = x, 0
    for i, (sigma, sigma_next) in enumerate(itertools.pairwise(sigmas)):
        denoised = yield x, sigma
        if i > 0:  # UniC: correct x at sigma with the model output just obtained there
            x = _unipc_update(x_last, sigmas[i - 1], sigma, history, last_order, denoised)
        history.append((-math.log(sigma), denoised))
        if sigma_next == 0:
            x = denoised
            continue
        last_order = min(order, len(history))
        x_last = x
        x = _unipc_update(x, sigma, sigma_next, history, last_order)
    return x


#: The samplers by registry name.
SAMPLERS: dict[str, Callable[..., Denoised]] = {
    "euler": euler,
    "euler_a": euler_ancestral,
    "heun": heun,
    "dpmpp_2m": dpmpp_2m,
    "dpmpp_3m": dpmpp_3m,
    "dpmpp_2m_sde": dpmpp_2m_sde,
    "unipc": unipc,
}


def sample(
    denoiser: Callable[[torch.Tensor, float], torch.Tensor],
    x: torch.Tensor,
    sigmas: Sequence[float],
    sampler: str | Callable[..., Denoised] = "dpmpp_2m",
    noise: Noise = _no_noise,
    callback: Callable[[int, torch.Tensor, float, torch.Tensor], None] | None = None,
    **options: Any,
) -> torch.Tensor:
    """Run ``sampler`` from ``x`` at ``sigmas[0]`` with ``denoiser(x, sigma) -> D``.

    ``callback(i, x, sigma, D)`` sees every evaluation.
    """
    gen = (SAMPLERS[sampler] if isinstance(sampler, str) else sampler)(x, list(sigmas), noise, **options)
    try:
        x, sigma = next(gen)
        for i in range(1 << 62):
            denoised = denoiser(x, sigma)
            if callback is not None:
                callback(i, x, sigma, denoised)
            x, sigma = gen.send(denoised)
    except StopIteration as stop:
        return stop.value
    raise AssertionError("unreachable")


def evaluation_sigmas(sampler: str, sigmas: Sequence[float], **options: Any) -> list[float]:
    """The noise levels at which ``sampler`` evaluates the denoiser on ``sigmas`` (its NFE = their count).

    Found by a dry run on a scalar: the levels never depend on the data.
    """
    seen: list[float] = []

    def record(x: torch.Tensor, sigma: float) -> torch.Tensor:
        seen.append(sigma)
        return x

    zero = torch.zeros((), dtype=torch.float64)
    sample(record, zero, sigmas, sampler, noise=lambda: zero, **options)
    return seen
