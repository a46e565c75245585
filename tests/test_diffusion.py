"""The continuous-time core (sciddpm.diffusion) and the DDPM/DDIM schedulers against closed forms."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from sciddpm.diffusion.parametrization import prediction_target, to_x0_eps
from sciddpm.diffusion.processes import VP
from sciddpm.diffusion.scheduler_configs import (
    VP_FIELDS,
    DDIMConfig,
    DDPMConfig,
    EulerConfig,
    UniPCConfig,
    reset_ignored_vp_fields,
)
from sciddpm.diffusion.schedulers import DDIM, DDPM
from sciddpm.diffusion.spacing import sampling_times

F64 = torch.float64
T = 1000
SCHEDULES = [(name, zt) for name in ("linear", "cosine") for zt in (False, True)]


@pytest.fixture(autouse=True)
def one_thread():
    """These tensors are tiny: on a busy 2-core machine, intra-op threading costs ~100x more than it saves."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def ddpm_alpha_bar(T: int = T) -> torch.Tensor:
    """alpha_bar_1..alpha_bar_T of DDPM's linear betas 1e-4..0.02 (Ho et al. 2020, Sec. 4)."""
    betas = torch.linspace(1e-4, 0.02, T, dtype=F64)
    return torch.cumprod(1 - betas, 0)


def nichol_alpha_bar(t: torch.Tensor, s: float = 0.008) -> torch.Tensor:
    """Nichol & Dhariwal 2021, Eq. 17."""
    f = lambda u: torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    return f(t) / f(torch.zeros((), dtype=F64))


# -- the schedule ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "zero_terminal_snr"), SCHEDULES)
def test_variance_preserving_and_monotone(name: str, zero_terminal_snr: bool) -> None:
    sched = VP(name, zero_terminal_snr)
    t = torch.linspace(0, 1, 1001, dtype=F64)
    alpha, sigma = sched.alpha(t), sched.sigma(t)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(t), rtol=0, atol=1e-12)
    assert alpha[0] == 1 and sigma[0] == 0
    assert (alpha.diff() <= 0).all() and (sched.log_snr(t)[1:-1].diff() <= 0).all()
    assert torch.isfinite(sched.log_snr(t[1:-1])).all()
    assert sched.alpha(torch.tensor([0.5], dtype=torch.float32)).dtype == torch.float32


def test_linear_matches_ddpm_betas() -> None:
    t = torch.arange(1, T + 1, dtype=F64) / T
    torch.testing.assert_close(VP("linear").alpha_bar(t), ddpm_alpha_bar(), rtol=0, atol=1e-3)


def test_cosine_matches_nichol_and_stays_finite() -> None:
    sched = VP("cosine")
    t = torch.linspace(0, 0.999, 1000, dtype=F64)
    torch.testing.assert_close(sched.alpha_bar(t), nichol_alpha_bar(t), rtol=1e-12, atol=0)
    one = torch.ones((), dtype=F64)
    assert sched.alpha(one) > 0 and sched.log_snr(one).item() == pytest.approx(-20.0)
    # with zero terminal SNR the cosine is Nichol's unclipped curve, ending exactly at 0
    torch.testing.assert_close(VP("cosine", True).alpha_bar(t), nichol_alpha_bar(t), rtol=1e-12, atol=0)


@pytest.mark.parametrize(("name", "zero_terminal_snr"), SCHEDULES)
def test_t_from_log_snr_inverts_log_snr(name: str, zero_terminal_snr: bool) -> None:
    sched = VP(name, zero_terminal_snr)
    t = torch.linspace(0, 0.999, 500, dtype=F64)
    torch.testing.assert_close(sched.t_from_log_snr(sched.log_snr(t)), t, rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_zero_terminal_snr(name: str) -> None:
    plain, zt = VP(name), VP(name, zero_terminal_snr=True)
    assert zt.alpha(1.0).item() == 0 and zt.sigma(1.0).item() == 1
    assert zt.log_snr(1.0).item() == -math.inf and plain.alpha(1.0).item() > 0
    assert zt.alpha(0.0).item() == 1  # the first (clean) end is kept, Lin et al. 2024 Alg. 1
    if name == "linear":  # sqrt(alpha_bar) is shifted and rescaled affinely
        a, a1 = plain.alpha(torch.linspace(0, 1, 11, dtype=F64)), plain.alpha(1.0)
        torch.testing.assert_close(zt.alpha(torch.linspace(0, 1, 11, dtype=F64)), (a - a1) / (1 - a1))


@pytest.mark.parametrize("spatial", [(7,), (3, 5), (2, 3, 4)])
def test_add_noise_marginals(spatial: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(0)
    sched = VP("linear")
    n, ts = 20000, torch.tensor([0.05, 0.4, 0.9])
    x0 = 5 * torch.randn(1, 2, *spatial, generator=g) + 3  # physical units, far from N(0, 1)
    for t in ts:
        eps = torch.randn(n, 2, *spatial, generator=g)
        x_t = sched.add_noise(x0.expand(n, *x0.shape[1:]), eps, t.expand(n))
        assert x_t.shape == eps.shape and x_t.dtype == torch.float32
        alpha, sigma = sched.alpha(t), sched.sigma(t)
        torch.testing.assert_close(x_t.mean(0), alpha * x0[0], rtol=0, atol=5 * sigma.item() / n**0.5)
        torch.testing.assert_close(x_t.var(0), sigma**2 * torch.ones_like(x0[0]), rtol=0.06, atol=0)
    with pytest.raises(ValueError, match="shape"):
        sched.add_noise(x0.expand(3, -1, -1, *([-1] * (len(spatial) - 1))), x0, torch.ones(2))


# -- prediction parametrisations ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "zero_terminal_snr", "prediction_type"),
    # eps with zero terminal SNR is refused: test_eps_with_zero_terminal_snr_is_refused
    [(n, zt, p) for n, zt in SCHEDULES for p in ("eps", "x0", "v") if not (zt and p == "eps")],
)
def test_prediction_round_trip(name: str, zero_terminal_snr: bool, prediction_type: str) -> None:
    g = torch.Generator().manual_seed(1)
    sched = VP(name, zero_terminal_snr)
    x0, eps = (
        10 * torch.randn(6, 3, 4, 4, generator=g, dtype=F64),
        torch.randn(6, 3, 4, 4, generator=g, dtype=F64),
    )
    t = torch.tensor([1e-3, 0.1, 0.5, 0.9, 0.999, 1.0], dtype=F64)
    if prediction_type == "eps":
        t = t[:-1]  # alpha(1) is tiny but nonzero: x0 from eps is ill-conditioned there
        x0, eps = x0[:-1], eps[:-1]
    x_t = sched.add_noise(x0, eps, t)
    out = sched.target(x0, eps, t, prediction_type)
    x0_hat, eps_hat = sched.to_x0_eps(out, x_t, t, prediction_type)
    torch.testing.assert_close(x0_hat, x0, rtol=0, atol=1e-8)
    torch.testing.assert_close(eps_hat, eps, rtol=0, atol=1e-8)


def test_v_matches_salimans_ho_and_x0_at_t0_is_finite() -> None:
    x0, eps = torch.randn(2, 1, 8), torch.randn(2, 1, 8)
    alpha, sigma = math.cos(0.3), math.sin(0.3)
    torch.testing.assert_close(prediction_target(x0, eps, alpha, sigma, "v"), alpha * eps - sigma * x0)
    x0_hat, eps_hat = to_x0_eps(x0, x0, 1.0, 0.0, "x0")  # t = 0: x_t = x0, eps undefined -> 0
    assert torch.equal(x0_hat, x0) and torch.equal(eps_hat, torch.zeros_like(x0))
    with pytest.raises(ValueError, match="prediction_type"):
        to_x0_eps(x0, x0, alpha, sigma, "score")  # type: ignore[arg-type]


# -- the DDPM posterior ---------------------------------------------------------------------------


@pytest.mark.parametrize("skip", [1, 20])
def test_posterior_matches_ho_et_al(skip: int) -> None:
    """Ho et al. 2020 Eq. 7 with beta_t = 1 - alpha_bar_t / alpha_bar_s, from the schedule's alpha_bar."""
    sched = VP("linear")
    t = torch.arange(skip, T + 1, skip, dtype=F64) / T
    s = t - skip / T
    ab_t, ab_s = sched.alpha_bar(t), sched.alpha_bar(s)
    beta = 1 - ab_t / ab_s
    mean_x0 = ab_s.sqrt() * beta / (1 - ab_t)
    mean_xt = (1 - beta).sqrt() * (1 - ab_s) / (1 - ab_t)
    var = (1 - ab_s) / (1 - ab_t) * beta
    for got, want in zip(sched.posterior(t, s), (mean_x0, mean_xt, var), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_posterior_close_to_discrete_ddpm() -> None:
    """Against DDPM's own discrete linear betas: equal up to the continuous-time approximation.

    The continuous beta is the midpoint one (1.1e-4 vs 1e-4 at the first step), hence the tolerance.
    """
    ab = ddpm_alpha_bar()
    betas = 1 - ab / torch.cat([torch.ones(1, dtype=F64), ab[:-1]])
    ab_prev = torch.cat([torch.ones(1, dtype=F64), ab[:-1]])
    want = (ab_prev.sqrt() * betas / (1 - ab), (1 - betas).sqrt() * (1 - ab_prev) / (1 - ab))
    t = torch.arange(1, T + 1, dtype=F64) / T
    got = VP("linear").posterior(t, t - 1 / T)
    for g_, w in zip(got[:2], want, strict=True):
        torch.testing.assert_close(g_, w, rtol=0, atol=5e-3)
    var_ho = (1 - ab_prev) / (1 - ab) * betas
    torch.testing.assert_close(got[2], var_ho, rtol=0, atol=5e-4)  # var <= 0.02, 9% off at step 2


@pytest.mark.parametrize("spacing", ["trailing", "leading", "linspace"])
def test_ddpm_step_draws_the_posterior(spacing: str) -> None:
    sched = DDPM(DDPMConfig(spacing=spacing))
    sched.set_timesteps(50)
    x_t, x0 = torch.randn(3, 2, 5, 6), 4 * torch.randn(3, 2, 5, 6) + 1
    i = 10
    t, s = sched.timesteps[i].item(), sched.timesteps[i + 1].item()
    out = sched.step(x0, i, x_t, "x0", generator=torch.Generator().manual_seed(7))
    c_x0, c_xt, var = (c.item() for c in sched.process.posterior(t, s))
    noise = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(out.prev_sample, c_x0 * x0 + c_xt * x_t + var**0.5 * noise)
    assert torch.equal(out.x0, x0)


@pytest.mark.parametrize("cls", [DDPM, DDIM])
def test_last_step_returns_x0(cls: type) -> None:
    sched = cls((DDPMConfig if cls is DDPM else DDIMConfig)())
    sched.set_timesteps(10)
    x_t, model_output = torch.randn(2, 1, 16), torch.randn(2, 1, 16)
    out = sched.step(model_output, 9, x_t, "v", generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.prev_sample, out.x0, rtol=0, atol=0)


def test_ddim_eta_one_has_ddpm_variance() -> None:
    """Song et al. 2021 Eq. 16: eta = 1 draws from the DDPM posterior when given the true eps."""
    sched = DDIM(DDIMConfig(eta=1.0))
    ddpm = DDPM(DDPMConfig())
    for s_ in (sched, ddpm):
        s_.set_timesteps(20)
    x0, eps = torch.randn(4, 1, 9, dtype=F64), torch.randn(4, 1, 9, dtype=F64)
    t = sched.timesteps[5].item()
    x_t = sched.add_noise(x0, eps, torch.tensor(t))
    a = sched.step(eps, 5, x_t, "eps", generator=torch.Generator().manual_seed(3)).prev_sample
    b = ddpm.step(eps, 5, x_t, "eps", generator=torch.Generator().manual_seed(3)).prev_sample
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("cls", "spacing"),
    # diffusers' DDIM with linspace spacing steps to t - T // steps rather than to the next grid time
    [(DDPM, "trailing"), (DDPM, "leading"), (DDPM, "linspace"), (DDIM, "trailing"), (DDIM, "leading")],
)
def test_matches_diffusers_given_the_same_alpha_bar(cls: type, spacing: str) -> None:
    diffusers = pytest.importorskip("diffusers")
    kw = {"schedule": "cosine", "zero_terminal_snr": True, "spacing": spacing}
    ours = cls(DDPMConfig(**kw) if cls is DDPM else DDIMConfig(**kw))
    alpha_bar = ours.process.alpha_bar(torch.arange(1, T + 1, dtype=F64) / T)
    common = {"trained_betas": (1 - alpha_bar / alpha_bar.roll(1).index_fill(0, torch.tensor(0), 1)).numpy()}
    common |= {"clip_sample": False, "prediction_type": "v_prediction", "timestep_spacing": spacing}
    if cls is DDPM:
        ref = diffusers.DDPMScheduler(variance_type="fixed_small", **common)
    else:
        ref = diffusers.DDIMScheduler(set_alpha_to_one=True, steps_offset=0, **common)
    ref.alphas_cumprod = alpha_bar.float()  # theirs is a float32 cumprod of the betas
    ref.set_timesteps(20)
    ours.set_timesteps(20)
    torch.testing.assert_close(torch.as_tensor(ref.timesteps, dtype=F64) + 1, ours.timesteps * T)
    x, v = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    for i, t in enumerate(ref.timesteps):
        want = ref.step(v, t, x, generator=torch.Generator().manual_seed(i)).prev_sample
        got = ours.step(v, i, x, "v", generator=torch.Generator().manual_seed(i)).prev_sample
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# -- sampling Gaussian data with the exact denoiser -----------------------------------------------

MU = torch.tensor([3.0, -2.0, 0.5, 10.0], dtype=F64)
_A = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.8, 0.6, 0.0, 0.0], [-0.5, 0.3, 0.4, 0.0], [0.2, -0.7, 0.1, 1.5]])
SIGMA = (_A @ _A.T).to(F64)  # non-diagonal covariance, eigenvalues ~0.1..3


def gaussian_denoiser(sched: VP, x_t: torch.Tensor, t: float, prediction_type: str) -> torch.Tensor:
    """Exact E[x0 | x_t] for x0 ~ N(MU, SIGMA), returned as an eps, x0 or v prediction."""
    alpha, sigma = sched.alpha(t).item(), sched.sigma(t).item()
    x = x_t.reshape(len(x_t), -1).to(F64)
    cov_t = alpha**2 * SIGMA + sigma**2 * torch.eye(4, dtype=F64)
    x0 = MU + (x - alpha * MU) @ (alpha * torch.linalg.solve(cov_t, SIGMA))
    if prediction_type == "x0":
        out = x0
    elif prediction_type == "eps":
        out = (x - alpha * x0) / sigma
    else:
        out = alpha * (x - alpha * x0) / sigma - sigma * x0
    return out.to(x_t.dtype).reshape(x_t.shape)


def sample_gaussian(
    sched: DDPM | DDIM, steps: int, prediction_type: str, exact_start: bool = True
) -> torch.Tensor:
    """Sample 10000 draws; start from the exact marginal at ``timesteps[0]``, or from N(0, I)."""
    n = 10000
    g = torch.Generator().manual_seed(2024)
    sched.set_timesteps(steps)
    x = torch.randn(n, 4, generator=g, dtype=F64)
    if exact_start:  # N(0, I) is only approximately the marginal at t=1 unless alpha(1) = 0
        alpha, sigma = sched.process.alpha(sched.timesteps[0]), sched.process.sigma(sched.timesteps[0])
        x = alpha * MU + x @ torch.linalg.cholesky(alpha**2 * SIGMA + sigma**2 * torch.eye(4, dtype=F64)).T
    x = x.float().reshape(n, 2, 2)  # samples of shape (C=2, 2): one spatial dim
    for i, t in enumerate(sched.timesteps.tolist()):
        out = gaussian_denoiser(sched.process, x, t, prediction_type)
        x = sched.step(out, i, x, prediction_type, generator=g).prev_sample
    return x.reshape(n, 4).to(F64)


def assert_gaussian(x: torch.Tensor, cov_tol: float) -> None:
    """Mean within 4 standard errors (+0.01); covariance within ``cov_tol`` (relative Frobenius norm)."""
    assert torch.isfinite(x).all()
    mean_err = (x.mean(0) - MU).abs()
    assert (mean_err < 4 * SIGMA.diagonal().sqrt() / len(x) ** 0.5 + 0.01).all(), f"mean error {mean_err}"
    cov_err = torch.linalg.matrix_norm(torch.cov(x.T) - SIGMA) / torch.linalg.matrix_norm(SIGMA)
    assert cov_err < cov_tol, f"relative covariance error {cov_err:.3f} >= {cov_tol}"


# Covariance tolerances: sampling noise ~0.015 at n=10000, plus each sampler's discretisation bias
# measured at n=40000 (DDPM-1000: 0.006, DDIM-100: 0.033, DDIM-200 eta=0.5: 0.019).
@pytest.mark.parametrize("prediction_type", ["eps", "x0", "v"])
@pytest.mark.parametrize(
    ("cls", "config", "steps", "cov_tol"),
    [
        (DDPM, DDPMConfig(), 1000, 0.035),
        (DDIM, DDIMConfig(), 100, 0.06),
        (DDIM, DDIMConfig(schedule="cosine", eta=0.5, spacing="leading"), 200, 0.05),
    ],
    ids=["ddpm-1000", "ddim-100", "ddim-cosine-eta0.5-leading-200"],
)
def test_samples_gaussian_data(
    cls: type, config: DDPMConfig, steps: int, cov_tol: float, prediction_type: str
) -> None:
    assert_gaussian(sample_gaussian(cls(config), steps, prediction_type), cov_tol)


@pytest.mark.parametrize("prediction_type", ["x0", "v"])
@pytest.mark.parametrize(("cls", "steps", "cov_tol"), [(DDPM, 1000, 0.035), (DDIM, 100, 0.06)])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_zero_terminal_snr_samples_gaussian_data(
    schedule: str, cls: type, steps: int, cov_tol: float, prediction_type: str
) -> None:
    """With alpha(1) = 0, N(0, I) is the exact marginal at t=1: no start-up mismatch (Lin et al. 2024)."""
    sched = cls((DDPMConfig if cls is DDPM else DDIMConfig)(schedule=schedule, zero_terminal_snr=True))
    x = sample_gaussian(sched, steps, prediction_type, exact_start=False)
    assert sched.timesteps[0] == 1.0 and sched.process.alpha(1.0) == 0
    assert_gaussian(x, cov_tol)


def test_eps_with_zero_terminal_snr_is_refused() -> None:
    sched = DDPM(DDPMConfig(zero_terminal_snr=True))
    x = torch.randn(2, 1, 4)
    with pytest.raises(ValueError, match="zero_terminal_snr"):
        sched.check_prediction_type("eps")
    with pytest.raises(ValueError, match="zero_terminal_snr"):
        sched.target(x, x, torch.full((2,), 0.5), "eps")
    with pytest.raises(ValueError, match="zero_terminal_snr"):
        sched.step(x, 0, x, "eps")
    DDPM(DDPMConfig()).check_prediction_type("eps")
    sched.check_prediction_type("v")


# -- training side and configuration --------------------------------------------------------------


def test_sample_t_and_c_noise() -> None:
    sched = DDPM(DDPMConfig(train_steps=50))
    t = sched.sample_t(4096, generator=torch.Generator().manual_seed(0))
    k = t * 50
    assert t.shape == (4096,) and t.dtype == torch.float32
    torch.testing.assert_close(k, k.round())
    assert k.min() == 1 and k.max() == 50
    torch.testing.assert_close(t, sched.sample_t(4096, generator=torch.Generator().manual_seed(0)))
    torch.testing.assert_close(sched.c_noise(t), 1000 * t)
    assert torch.equal(sched.loss_weight(t), torch.ones_like(t))


def test_sampling_times() -> None:
    torch.testing.assert_close(
        sampling_times(1000, 4, "trailing") * 1000, torch.tensor([1000, 750, 500, 250.0], dtype=F64)
    )
    torch.testing.assert_close(
        sampling_times(1000, 4, "leading") * 1000, torch.tensor([751, 501, 251, 1.0], dtype=F64)
    )
    torch.testing.assert_close(
        sampling_times(10, 4, "linspace") * 10, torch.tensor([10, 7, 4, 1.0], dtype=F64)
    )
    for spacing in ("trailing", "leading", "linspace"):
        for steps in (1, 7, 333, 1000):
            t = sampling_times(1000, steps, spacing)
            assert len(t) == steps and (t.diff() < 0).all() and t.min() > 0 and t.max() <= 1
    with pytest.raises(ValueError, match="steps"):
        DDIM(DDIMConfig(train_steps=10)).set_timesteps(11)
    with pytest.raises(ValueError, match="steps"):
        DDIM(DDIMConfig()).set_timesteps(0)


@pytest.mark.parametrize(
    ("cls", "kwargs", "field"),
    [
        (DDPMConfig, {"beta_schedule": "linear"}, "beta_schedule"),
        (DDPMConfig, {"eta": 0.0}, "eta"),
        (DDIMConfig, {"eta": -0.1}, "eta"),
        (DDIMConfig, {"eta": 1.5}, "eta"),
        (DDIMConfig, {"schedule": "quadratic"}, "schedule"),
        (DDPMConfig, {"train_steps": 0}, "train_steps"),
        (DDPMConfig, {"spacing": "karras"}, "spacing"),
    ],
)
def test_bad_config_is_an_error(cls: type, kwargs: dict, field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        cls(**kwargs)


@pytest.mark.parametrize("process", ["ve", "edm", "flow"])
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("schedule", "cosine"),
        ("beta_start", 5e-4),
        ("beta_end", 0.012),
        ("discrete_betas", True),
        ("zero_terminal_snr", True),
    ],
)
def test_a_vp_schedule_field_on_another_process_is_refused_naming_it(process, field, value) -> None:
    # Issue 21, item 4: accepted, saved and ignored before.
    assert field in VP_FIELDS
    with pytest.raises(ValidationError, match=rf"{field}=.*process='{process}'.*set process='vp'"):
        EulerConfig(process=process, **{field: value})


def test_vp_schedule_fields_at_their_defaults_load_on_any_process() -> None:
    # What a saved config of another process carries: every field, at its default.
    saved = UniPCConfig(process="ve").model_dump(mode="json")
    assert UniPCConfig.model_validate(saved).process == "ve"
    assert EulerConfig(process="vp", beta_end=0.012, zero_terminal_snr=True).beta_end == 0.012


def test_loading_resets_only_the_vp_fields_a_non_vp_solver_ignored() -> None:
    ve = {"type": "unipc", "process": "ve", "beta_end": 0.012, "schedule": "cosine", "order": 3}
    reset = reset_ignored_vp_fields(ve, UniPCConfig)
    assert reset == {**ve, "beta_end": 0.02, "schedule": "linear"}
    UniPCConfig(**{k: v for k, v in reset.items() if k != "type"})  # must not raise
    vp = {"type": "unipc", "beta_end": 0.012, "schedule": "cosine"}
    assert reset_ignored_vp_fields(vp, UniPCConfig) == vp
    # Only solver configs: a plugin's own field named like a VP one is left alone.
    assert reset_ignored_vp_fields({**ve, "type": "mine"}, DDIMConfig) == {**ve, "type": "mine"}


def test_config_round_trips() -> None:
    config = DDIMConfig(
        schedule="cosine", zero_terminal_snr=True, eta=0.3, spacing="leading", train_steps=500
    )
    assert DDIMConfig.model_validate_json(config.model_dump_json()) == config


# -- min-SNR loss weighting -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ddpm", "ddim", "euler", "dpmpp_2m"])
def test_min_snr_weight_matches_the_closed_form(name: str) -> None:
    from sciddpm.registry import get_registry

    gamma = 5.0
    sched = get_registry().build("scheduler", name, schedule="cosine", loss_weighting="min_snr")
    t = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)
    snr = sched.process.log_snr(t).exp()
    clipped = snr.clamp(max=gamma)
    torch.testing.assert_close(sched.loss_weight(t, "eps"), clipped / snr)
    torch.testing.assert_close(sched.loss_weight(t, "v"), clipped / (snr + 1))
    torch.testing.assert_close(sched.loss_weight(t, "x0"), clipped)
    assert (snr > gamma).any() and (snr < gamma).any()  # both branches of the min are exercised
    assert sched.loss_weight(t.float(), "v").dtype == torch.float32
    with pytest.raises(ValueError, match="depends on the denoiser's prediction type"):
        sched.loss_weight(t)


def test_min_snr_weight_on_rectified_flow_is_the_x0_weight_in_flow_units() -> None:
    from sciddpm.registry import get_registry

    sched = get_registry().build("scheduler", "euler", process="flow", loss_weighting="min_snr")
    t = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0], dtype=torch.float64)
    snr = ((1 - t) / t) ** 2
    # x0 = x_t - t * flow, so the x0 error is t times the flow error.
    torch.testing.assert_close(sched.loss_weight(t, "flow"), snr.clamp(max=5.0) * t**2)
    for prediction_type in ("v", "x0"):
        assert torch.isfinite(sched.loss_weight(t, prediction_type)).all()


def test_loss_weighting_defaults_to_uniform_and_is_validated() -> None:
    from sciddpm.config import ConfigError, validate_pipeline
    from sciddpm.registry import get_registry

    t = torch.rand(8)
    for name in ("ddpm", "unipc"):
        sched = get_registry().build("scheduler", name)
        assert torch.equal(sched.loss_weight(t, "eps"), torch.ones_like(t))
    with pytest.raises((ConfigError, ValueError), match="loss_weighting"):
        validate_pipeline({"scheduler": {"type": "ddpm", "loss_weighting": "min-snr"}})
