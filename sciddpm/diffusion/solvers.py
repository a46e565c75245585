"""Every update rule: DDPM and DDIM steps, and the solvers on the VE-equivalent probability-flow ODE/SDE.

:func:`ddpm_step` and :func:`ddim_step` update ``x_t`` of a VP process in its own units, so they
also run where ``alpha = 0`` (zero terminal SNR). The solvers (k-diffusion's layout) work on
``x = x_t / alpha`` at noise level ``sigma = sigma_t / alpha`` (Karras et al. 2022, Eq. 4 with
s(t) = alpha), where every process reads ``x = x0 + sigma eps``, and see the model only through the
denoiser ``D(x, sigma) = E[x0 | x]``; so one solver drives any process.

A solver is a generator with one signature, ``solver(x, sigmas, noise, **options)``: it yields
``(x, sigma)`` where it needs the denoiser and is sent ``(D, x)``: the denoiser's output and the
caller's state at that level, which is the yielded ``x`` unless the caller edited it (inpainting,
tiling, a guidance correction); every update continues from the state it is sent. It returns the
final sample. ``sigmas`` decreases and may end at 0; its levels may be 0-dim tensors, and the
final sample is then differentiable in them (schedule fitting, :mod:`sciddpm.diffusion.descent`),
while floats take plain ``math`` as before. ``noise()`` gives a standard normal draw
shaped like ``x`` (at most one per evaluation). The same generator serves the callable driver
:func:`sample` and the step-by-step schedulers of :mod:`sciddpm.diffusion.schedulers`, so there is
one copy of each update.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Generator, Sequence
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from sciddpm.diffusion.processes import VP

__all__ = [
    "SOLVERS",
    "Solver",
    "ddim_step",
    "ddpm_step",
    "dpmpp_2m",
    "dpmpp_2m_sde",
    "dpmpp_3m",
    "euler",
    "euler_ancestral",
    "evaluation_sigmas",
    "heun",
    "sample",
    "third_order_step",
    "unipc",
]

#: The longest step, in lambda = -log sigma, over which a multistep solver extrapolates the
#: denoiser from earlier evaluations. D(lambda) saturates (D -> x as sigma -> 0, D -> E[x0] as
#: sigma -> inf), so a polynomial fitted to earlier points overshoots over a long step: the step
#: into sigma_min of linspace/leading spacings (lambda jumps by 3.5 on VP, 33 on EDM) made 2M and
#: UniPC-2 up to 3.7x less accurate than Euler. Such a step is taken at first order (the
#: exponential Euler step, which is Euler's step in sigma), exact for a constant D. 2 = sigma falls
#: by e^2 = 7.4x. On the benchmark's VP process no trailing step is that long, Karras and log-SNR
#: steps only at 5 steps or fewer, and the last step of linspace/leading up to 50 steps
#: (docs/benchmarks.md: none of them lost accuracy).
MAX_EXTRAPOLATION = 2.0

#: Heun corrects a step in its exponential form when sigma falls by more than this factor.
HEUN_EXPONENTIAL_RATIO = 2.0

#: Where a third-order multistep step (DPM-Solver++(3M), UniPC order 3) extrapolates a quadratic
#: through its last three evaluations: on a step no longer than :data:`THIRD_ORDER_MAX_STEP` in
#: lambda, after a step no less than half the one before that, and, if it is longer than
#: :data:`THIRD_ORDER_SHORT_STEP`, no longer than the step before it (times this factor, for
#: rounding); elsewhere the step is second order. An extrapolation's error grows with the step's
#: length against its stencil's, and faster for a quadratic than for a line (variable-step
#: multistep methods, Hairer, Norsett & Wanner, Solving ODEs I, Sec. III.5): across the turn of D
#: from growth to plateau (sigma near the data's scale), long growing steps (Karras spacing, the
#: end of linspace/trailing ones) made 3M and UniPC-3 up to 4.9x less accurate than their
#: second-order versions on issue 21's mixture. Short steps keep third order whatever their
#: growth: the 50-step Karras schedule of the sampler benchmark grows at every step and gains 3x
#: from it. diffusers lowers the order of the final steps for the same reason
#: (``lower_order_final``). docs/benchmarks.md ("Solver order across processes") has the measures.
#: The rule compares step lengths in lambda, not the ``h (1 + eta)`` of 3M's SDE form.
THIRD_ORDER_GROWTH = 1.02
#: The longest step before the one before, as a multiple of that one, for third order.
THIRD_ORDER_SPREAD = 2.0
#: The longest step taken at third order, in lambda.
THIRD_ORDER_MAX_STEP = 1.4
#: Steps up to this long in lambda take third order however much they grow.
THIRD_ORDER_SHORT_STEP = 0.3

#: Yields ``(x, sigma)`` to denoise, is sent ``(D(x, sigma), x)``, returns the final ``x``.
Solver = Generator[tuple[torch.Tensor, float], tuple[torch.Tensor, torch.Tensor], torch.Tensor]
Noise = Callable[[], torch.Tensor]


def _no_noise() -> torch.Tensor:
    raise ValueError("this solver is stochastic here and needs noise")


# -- DDPM and DDIM: updates of x_t on a VP process -------------------------------------------------


def ddpm_step(
    process: VP, x_t: torch.Tensor, x0: torch.Tensor, t: float, s: float, noise: torch.Tensor | None
) -> torch.Tensor:
    """Ancestral step t -> s < t: a draw of q(x_s | x_t, x0), Ho et al. 2020 Eq. 6-7 (Algorithm 2).

    ``x_t``, ``x0`` and ``noise`` are ``(B, C, *spatial)``; returns ``x_s`` like them. Raises
    ValueError when the step has variance and ``noise`` is None.
    """
    c_x0, c_xt, var = (c.item() for c in process.posterior(t, s))
    mean = c_x0 * x0 + c_xt * x_t
    if var == 0:
        return mean
    if noise is None:
        raise ValueError(f"ddpm_step from t={t} to s={s} has nonzero variance and needs noise")
    return mean + math.sqrt(var) * noise


def ddim_step(
    process: VP,
    x0: torch.Tensor,
    eps: torch.Tensor,
    t: float,
    s: float,
    eta: float,
    noise: torch.Tensor | None,
) -> torch.Tensor:
    """Generalised step t -> s < t of Song et al. 2021 (DDIM) Eq. 12, with sigma_t(eta) from Eq. 16.

    ``x0``, ``eps`` (the model's estimates at ``x_t``) and ``noise`` are ``(B, C, *spatial)``;
    returns ``x_s``. Raises ValueError when ``eta > 0`` gives the step variance and ``noise`` is None.
    """
    alpha_s, sigma_s = (c.item() for c in process.alpha_sigma(s))
    std = eta * math.sqrt(process.posterior(t, s)[2].item())
    x_s = alpha_s * x0 + math.sqrt(max(sigma_s**2 - std**2, 0.0)) * eps
    if std == 0:
        return x_s
    if noise is None:
        raise ValueError(f"ddim_step with eta={eta} from t={t} to s={s} needs noise")
    return x_s + std * noise


#: A noise level: a float, or a 0-dim tensor whose gradient reaches the schedule (schedule fitting,
#: :mod:`sciddpm.diffusion.timesteps`). Floats take the ``math`` path, so sampling is unchanged.
Level = float | torch.Tensor


def _log(v: Level) -> Level:
    return v.log() if isinstance(v, torch.Tensor) else math.log(v)


def _exp(v: Level) -> Level:
    return v.exp() if isinstance(v, torch.Tensor) else math.exp(v)


def _expm1(v: Level) -> Level:
    return v.expm1() if isinstance(v, torch.Tensor) else math.expm1(v)


def _sqrt(v: Level) -> Level:
    return v.sqrt() if isinstance(v, torch.Tensor) else math.sqrt(v)


def _vector(values: Sequence[Level]) -> torch.Tensor:
    """A float64 vector of ``values``, differentiable in those that are tensors."""
    if any(isinstance(v, torch.Tensor) for v in values):
        return torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in values])
    return torch.tensor(values, dtype=torch.float64)


def _values(v: torch.Tensor) -> list[Level]:
    """``v``'s entries: floats, or 0-dim tensors while ``v`` carries a gradient."""
    return list(v.unbind()) if v.requires_grad else v.tolist()


# -- the solvers on x / alpha at sigma / alpha ----------------------------------------------------


def euler(x: torch.Tensor, sigmas: Sequence[float], noise: Noise = _no_noise) -> Solver:
    """Euler steps on the probability-flow ODE ``dx/dsigma = (x - D) / sigma`` (Karras et al. 2022, Eq. 4)."""
    for sigma, sigma_next in itertools.pairwise(sigmas):
        denoised, x = yield x, sigma
        x = x + (x - denoised) / sigma * (sigma_next - sigma)
    return x


def _ancestral(sigma: float, sigma_next: float, eta: float) -> tuple[float, float]:
    """``(sigma_down, sigma_up)`` of an ancestral step (k-diffusion's ``get_ancestral_step``)."""
    if sigma_next == 0:
        return 0.0, 0.0
    up = min(sigma_next, eta * _sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return _sqrt(sigma_next**2 - up**2), up


def euler_ancestral(
    x: torch.Tensor, sigmas: Sequence[float], noise: Noise = _no_noise, eta: float = 1.0, s_noise: float = 1.0
) -> Solver:
    """Ancestral Euler: Euler to sigma_down, then noise of std sigma_up (k-diffusion's ancestral step)."""
    for sigma, sigma_next in itertools.pairwise(sigmas):
        denoised, x = yield x, sigma
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
) -> Solver:
    """Heun's 2nd-order method with optional churn: Karras et al. 2022 (Algorithm 2), long steps excepted.

    Two evaluations per step, one on the last step when it ends at sigma = 0. The first step takes
    no churn: its state is the initial noise, which already has the first noise level. The
    corrector continues from the state at the trial point, ``x_trial + (d_next - d) / 2 dt``, which
    is Heun's ``x + (d + d_next) / 2 dt`` when the caller left the trial point as it was.

    Written with the denoiser, Heun's trapezoid in sigma adds ``(sigma / sigma_next - 1) / 2``
    times ``D_next - D`` to the trial point: a weight without bound in the step's ratio (11 000 on
    a 2-step flow run from sigma = 22 026, 2 753 at 5 trailing steps, where Heun was 176x less
    accurate than Euler on 512 draws). On a step where sigma falls by more than
    :data:`HEUN_EXPONENTIAL_RATIO` the corrector is the exponential trapezoid instead, weight
    ``1 - (1 - sigma_next / sigma) / h`` with ``h = log(sigma / sigma_next)``, at most 1: exact for
    a D linear in lambda = -log sigma (the second-order exponential time differencing of Cox &
    Matthews 2002, ETD2RK). Both weights are ``h / 2 + O(h^2)``, so the step stays second order;
    the evaluations do not change. This departs from Algorithm 2 wherever a schedule has such
    steps: on EDM's own 18-step Karras schedule, the last five corrected steps (sigma < 0.3), and
    costs accuracy in some cells (docs/benchmarks.md, "Solver order across processes").
    """
    n = len(sigmas) - 1
    for i, (sigma, sigma_next) in enumerate(itertools.pairwise(sigmas)):
        churn = i > 0 and s_tmin <= sigma <= (math.inf if s_tmax is None else s_tmax)
        gamma = min(s_churn / n, math.sqrt(2) - 1) if churn else 0.0
        sigma_hat = min(sigma * (1 + gamma), sigmas[0])
        if sigma_hat > sigma:
            x = x + noise() * (s_noise * _sqrt(sigma_hat**2 - sigma**2))
        denoised, x = yield x, sigma_hat
        d = (x - denoised) / sigma_hat
        x_next = x + d * (sigma_next - sigma_hat)
        if sigma_next > 0:
            denoised_next, x_next = yield x_next, sigma_next
            if sigma_hat > HEUN_EXPONENTIAL_RATIO * sigma_next:
                h = _log(sigma_hat / sigma_next)
                x_next = x_next + (1 + _expm1(-h) / h) * (denoised_next - denoised)
            else:
                d_next = (x_next - denoised_next) / sigma_next
                x_next = x_next + (d_next - d) / 2 * (sigma_next - sigma_hat)
        x = x_next
    return x


def third_order_step(h: Level, h1: Level, h2: Level) -> bool:
    """Whether a multistep solver may extrapolate a quadratic over a step of ``h`` (in lambda).

    ``h1`` and ``h2`` are the two steps before it, newest first; the rule is in
    :data:`THIRD_ORDER_GROWTH`'s comment. 0-dim tensors are compared as numbers.
    """
    steady = h <= THIRD_ORDER_SHORT_STEP or h <= THIRD_ORDER_GROWTH * h1
    return bool(h <= THIRD_ORDER_MAX_STEP and steady and h2 <= THIRD_ORDER_SPREAD * h1)


def dpmpp_2m(x: torch.Tensor, sigmas: Sequence[float], noise: Noise = _no_noise) -> Solver:
    """DPM-Solver++(2M), Lu et al. 2022b (Algorithm 2), in lambda = -log sigma.

    A step longer than :data:`MAX_EXTRAPOLATION` in lambda is a first-order step.
    """
    old, h_last = None, 0.0
    for sigma, sigma_next in itertools.pairwise(sigmas):
        denoised, x = yield x, sigma
        if sigma_next == 0:
            x = denoised
            continue
        h = _log(sigma / sigma_next)
        d = denoised
        if old is not None and h <= MAX_EXTRAPOLATION:
            r = h_last / h
            d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old
        x = (sigma_next / sigma) * x - _expm1(-h) * d
        old, h_last = denoised, h
    return x


def dpmpp_3m(
    x: torch.Tensor,
    sigmas: Sequence[float],
    noise: Noise = _no_noise,
    eta: float = 0.0,
    s_noise: float = 1.0,
    lower_order_uneven: bool = True,
) -> Solver:
    """DPM-Solver++(3M) in lambda = -log sigma (Lu et al. 2022b, Sec. 4; k-diffusion's 3M; eta = 0: ODE).

    Its second step, and any step with one earlier evaluation, is the 2M (midpoint) step, as in
    diffusers, so with ``eta = 0`` it lowers its order to exactly :func:`dpmpp_2m`; so is a step
    where :func:`third_order_step` refuses the quadratic (unless ``lower_order_uneven`` is False:
    schedules fitted on the model, which measure every step's error); a step longer than
    :data:`MAX_EXTRAPOLATION` in lambda is a first-order step.
    """
    d1_, d2_, h1, h2 = None, None, None, None
    for sigma, sigma_next in itertools.pairwise(sigmas):
        denoised, x = yield x, sigma
        if sigma_next == 0:
            x = denoised
            continue
        h = _log(sigma / sigma_next)
        h_eta = h * (eta + 1)
        x = _exp(-h_eta) * x - _expm1(-h_eta) * denoised
        phi_2 = _expm1(-h_eta) / h_eta + 1
        third = h2 is not None and (not lower_order_uneven or third_order_step(h, h1, h2))
        if third and h <= MAX_EXTRAPOLATION:
            r0, r1 = h1 / h, h2 / h
            d1_0 = (denoised - d1_) / r0
            d1_1 = (d1_ - d2_) / r1
            d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            phi_3 = phi_2 / h_eta - 0.5
            x = x + phi_2 * d1 - phi_3 * d2
        elif h1 is not None and h <= MAX_EXTRAPOLATION:
            x = x - _expm1(-h_eta) / 2 * (denoised - d1_) / (h1 / h)
        if eta > 0:
            x = x + noise() * (sigma_next * _sqrt(-_expm1(-2 * h * eta)) * s_noise)
        d1_, d2_, h1, h2 = denoised, d1_, h, h1
    return x


def dpmpp_2m_sde(
    x: torch.Tensor,
    sigmas: Sequence[float],
    noise: Noise = _no_noise,
    eta: float = 1.0,
    s_noise: float = 1.0,
    solver_type: str = "midpoint",
) -> Solver:
    """SDE-DPM-Solver++(2M), Lu et al. 2022b (Appendix B); eta = 0 is the 2M ODE solver.

    A step longer than :data:`MAX_EXTRAPOLATION` in lambda is a first-order step.
    """
    old, h_last = None, 0.0
    for sigma, sigma_next in itertools.pairwise(sigmas):
        denoised, x = yield x, sigma
        if sigma_next == 0:
            x = denoised
            continue
        h = _log(sigma / sigma_next)
        eta_h = eta * h
        decay = -_expm1(-h - eta_h)
        x = (sigma_next / sigma) * _exp(-eta_h) * x + decay * denoised
        if old is not None and h <= MAX_EXTRAPOLATION:
            r = h_last / h
            if solver_type == "heun":
                x = x + (1 - decay / (h + eta_h)) * (denoised - old) / r
            else:
                x = x + 0.5 * decay * (denoised - old) / r
        if eta > 0:
            x = x + noise() * (sigma_next * _sqrt(-_expm1(-2 * eta_h)) * s_noise)
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
    h = _log(sigma / sigma_next)
    hh = -h
    h_phi_1 = _expm1(hh)
    b_h = _expm1(hh)
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
    r = torch.stack([_vector([rk ** (i - 1) for rk in rks]) for i in range(1, order + 1)])
    b_vec = _vector(b)
    x_next = (sigma_next / sigma) * x - h_phi_1 * m0
    if denoised_next is None:
        if d1s:
            rhos = [0.5] if order == 2 else _values(torch.linalg.solve(r[:-1, :-1], b_vec[:-1]))
            x_next = x_next - b_h * sum(rho * d for rho, d in zip(rhos, d1s, strict=True))
        return x_next
    rhos = [0.5] if order == 1 else _values(torch.linalg.solve(r, b_vec))
    corr = sum(rho * d for rho, d in zip(rhos[:-1], d1s, strict=True)) if d1s else 0.0
    return x_next - b_h * (corr + rhos[-1] * (denoised_next - m0))


def unipc(
    x: torch.Tensor,
    sigmas: Sequence[float],
    noise: Noise = _no_noise,
    order: int = 2,
    lower_order_uneven: bool = True,
) -> Solver:
    """UniPC, Zhao et al. 2023 (Algorithms 2-3): UniP-``order`` + the bh2 UniC, at no extra evaluation.

    The corrector reuses the evaluation at the predicted point; the order warms up from 1. A step to
    sigma = 0 returns the denoiser output, which is exact there. A step longer than
    :data:`MAX_EXTRAPOLATION` in lambda is predicted at order 1 (and corrected by UniC-1). With
    ``order=3``, a step where :func:`third_order_step` refuses the quadratic is predicted at order
    2 (and corrected by UniC-2), unless ``lower_order_uneven`` is False (schedules fitted on the
    model, which measure every step's error). The order is not otherwise lowered at the end
    (diffusers' ``lower_order_final``). The correction is added to the caller's state at the
    predicted point (the predicted point itself unless the caller edited it).
    """
    history: list[tuple[float, torch.Tensor]] = []
    x_last, last_order = x, 0
    for i, (sigma, sigma_next) in enumerate(itertools.pairwise(sigmas)):
        predicted = x
        denoised, x = yield x, sigma
        if i > 0:  # UniC: correct x at sigma with the model output just obtained there
            corrected = _unipc_update(x_last, sigmas[i - 1], sigma, history, last_order, denoised)
            x = x + (corrected - predicted)
        history.append((-_log(sigma), denoised))
        if sigma_next == 0:
            x = denoised
            continue
        h = _log(sigma / sigma_next)
        last_order = 1 if h > MAX_EXTRAPOLATION else min(order, len(history))
        if last_order >= 3 and lower_order_uneven:
            (lam2, _), (lam1, _), (lam0, _) = history[-3:]
            last_order = last_order if third_order_step(h, lam0 - lam1, lam1 - lam2) else 2
        x_last = x
        x = _unipc_update(x, sigma, sigma_next, history, last_order)
    return x


#: The solvers by registry name.
SOLVERS: dict[str, Callable[..., Solver]] = {
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
    solver: str | Callable[..., Solver] = "dpmpp_2m",
    noise: Noise = _no_noise,
    callback: Callable[[int, torch.Tensor, float, torch.Tensor], None] | None = None,
    **options: Any,
) -> torch.Tensor:
    """Run ``solver`` (a name in :data:`SOLVERS` or a solver) from ``x`` at ``sigmas[0]``.

    The denoiser is ``denoiser(x, sigma) -> D``, in VE units (``x = x_t / alpha``, any shape);
    returns the final sample like ``x``. ``callback(i, x, sigma, D)`` sees every evaluation. This is
    the low-level driver for trying a solver on a closed-form denoiser (and for
    :func:`evaluation_sigmas`); models, pipelines and ``sample_callable`` go through the one
    sampling loop, :func:`sciddpm.diffusion.loop.run`, with its seeding and denoiser wrapper.
    Raises KeyError for an unknown name.
    """
    gen = (SOLVERS[solver] if isinstance(solver, str) else solver)(x, list(sigmas), noise, **options)
    try:
        x, sigma = next(gen)
        for i in range(1 << 62):
            denoised = denoiser(x, sigma)
            if callback is not None:
                callback(i, x, sigma, denoised)
            x, sigma = gen.send((denoised, x))
    except StopIteration as stop:
        return stop.value
    raise AssertionError("unreachable")


def evaluation_sigmas(solver: str, sigmas: Sequence[float], **options: Any) -> list[float]:
    """The noise levels at which ``solver`` evaluates the denoiser on ``sigmas`` (its NFE = their count).

    Found by a dry run on a scalar: the levels never depend on the data.
    """
    seen: list[float] = []

    def record(x: torch.Tensor, sigma: float) -> torch.Tensor:
        seen.append(sigma)
        return x

    zero = torch.zeros((), dtype=torch.float64)
    sample(record, zero, sigmas, solver, noise=lambda: zero, **options)
    return seen
