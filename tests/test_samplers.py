"""Processes, prediction conversions, the samplers' convergence order and the solver schedulers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tiny import TINY_UNET

from sciddpm.config import ConfigError
from sciddpm.diffusion.loop import sample_callable
from sciddpm.diffusion.mixture import GaussianMixture
from sciddpm.diffusion.parametrization import from_x0, prediction_target, to_x0_eps
from sciddpm.diffusion.processes import make_process
from sciddpm.diffusion.solvers import evaluation_sigmas, sample
from sciddpm.diffusion.spacing import karras_sigmas, log_snr_sigmas
from sciddpm.registry import get_registry

F64 = torch.float64
PROCESSES = ["vp", "ve", "edm", "flow"]
SOLVERS = ["euler", "euler_a", "heun", "dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde", "unipc"]
ALL = ["ddpm", "ddim", *SOLVERS]


# -- processes and conversions --------------------------------------------------------------------


@pytest.mark.parametrize("name", PROCESSES)
def test_process_inverts_its_noise_level(name: str) -> None:
    process = make_process(name)
    t = torch.linspace(0.02, 0.98, 49, dtype=F64)
    torch.testing.assert_close(process.t_from_sigma_ve(process.sigma_ve(t)), t, rtol=0, atol=1e-10)
    torch.testing.assert_close(process.sigma_ve(t), (-process.log_snr(t) / 2).exp())
    assert (process.log_snr(t).diff() < 0).all()


def test_process_closed_forms() -> None:
    t = torch.tensor([0.25, 0.5], dtype=F64)
    torch.testing.assert_close(make_process("flow").alpha(t), 1 - t)
    torch.testing.assert_close(make_process("edm", sigma_max=80.0, rho=7.0).sigma(t), 80 * t**7)
    torch.testing.assert_close(make_process("ve", sigma_min=0.01, sigma_max=100.0).sigma(t), 0.01 * 1e4**t)
    with pytest.raises(ValueError, match="process must be one of"):
        make_process("vpp")


@pytest.mark.parametrize("prediction_type", ["eps", "x0", "v", "flow", "edm"])
@pytest.mark.parametrize("name", PROCESSES)
def test_conversions_are_exact_inverses(name: str, prediction_type: str) -> None:
    process = make_process(name)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(5, 2, 3, generator=g, dtype=F64), torch.randn(5, 2, 3, generator=g, dtype=F64)
    t = torch.tensor([0.3, 0.45, 0.6, 0.75, 0.9], dtype=F64)  # EDM's sigma(0.05) = 6e-8 is ill-conditioned
    x_t = process.add_noise(x0, eps, t)
    a, s = process.alpha(t).view(-1, 1, 1), process.sigma(t).view(-1, 1, 1)
    sd = 0.5  # sigma_data, used by edm only
    out = prediction_target(x0, eps, a, s, prediction_type, sd)
    x0_back, eps_back = to_x0_eps(out, x_t, a, s, prediction_type, sd)
    torch.testing.assert_close(x0_back, x0, rtol=0, atol=1e-12)
    torch.testing.assert_close(eps_back, eps, rtol=0, atol=1e-12)
    # the denoiser D = x0 and the model output are each other's inverse
    torch.testing.assert_close(from_x0(x0, x_t, a, s, prediction_type, sd), out, rtol=0, atol=1e-12)


def test_mixture_denoiser_is_the_posterior_mean() -> None:
    """Monte Carlo check of E[x0 | x] for a one-component mixture (a Gaussian, closed form)."""
    gm = GaussianMixture(
        torch.ones(1, dtype=F64), torch.tensor([[1.0, -2.0]], dtype=F64), torch.tensor([0.5], dtype=F64)
    )
    x = torch.tensor([[0.0, 0.0]], dtype=F64)
    want = gm.means + 0.25 / (0.25 + 4.0) * (x - gm.means)
    torch.testing.assert_close(gm.denoise(x, 2.0), want)


# -- spacings -------------------------------------------------------------------------------------


def test_spacings() -> None:
    k = karras_sigmas(5, 0.002, 80.0, 7.0)
    assert k[0] == pytest.approx(80) and k[-1] == pytest.approx(0.002)
    assert np.allclose(np.diff(np.array(k) ** (1 / 7)), np.diff(np.array(k) ** (1 / 7))[0])
    ls = log_snr_sigmas(6, 0.01, 100.0)
    assert np.allclose(np.diff(np.log(ls)), -np.log(1e4) / 5)


@pytest.mark.parametrize("spacing", ["linspace", "trailing", "leading", "log_snr", "karras"])
@pytest.mark.parametrize("process", PROCESSES)
def test_scheduler_grids(process: str, spacing: str) -> None:
    sched = get_registry().build("scheduler", "dpmpp_2m", process=process, spacing=spacing)
    sched.set_timesteps(7)
    t = sched.timesteps
    assert len(t) == 7 and (t.diff() < 0).all() and t.min() > 0 and t.max() <= 1
    assert sched.sigmas[-1] == 0 and len(sched.sigmas) == 8


def test_user_timesteps() -> None:
    sched = get_registry().build("scheduler", "euler", timesteps=[0.9, 0.5, 0.1])
    sched.set_timesteps(3)
    torch.testing.assert_close(sched.timesteps, torch.tensor([0.9, 0.5, 0.1], dtype=F64))
    with pytest.raises(ValueError, match="steps=3"):
        sched.set_timesteps(10)
    with pytest.raises(ConfigError, match="decreasing"):
        get_registry().build("scheduler", "euler", timesteps=[0.1, 0.5])


def test_heun_nfe_is_two_per_step_but_the_last() -> None:
    sched = get_registry().build("scheduler", "heun")
    sched.set_timesteps(5)
    assert len(sched.timesteps) == 9  # 2 * 5 - 1: the step to sigma = 0 is an Euler step
    sigmas = sched.sigmas
    want = [sigmas[0], sigmas[1], sigmas[1], sigmas[2], sigmas[2], sigmas[3], sigmas[3], sigmas[4], sigmas[4]]
    assert evaluation_sigmas("heun", sigmas) == want


# -- convergence order on the closed-form mixture -------------------------------------------------

GM = GaussianMixture.random(4, 5, seed=0, stds=(0.5, 1.0))
SIGMA_MIN, SIGMA_MAX = 0.2, 80.0


@pytest.fixture(scope="module")
def start_and_reference() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(128, 4, generator=torch.Generator().manual_seed(0), dtype=F64) * math.hypot(SIGMA_MAX, 2)
    ref = sample(GM.denoise, x, log_snr_sigmas(4001, SIGMA_MIN, SIGMA_MAX), "heun")
    return x, ref


def _slope(errors: list[float], steps: list[int]) -> float:
    return -float(np.polyfit(np.log(steps), np.log(errors), 1)[0])


# (sampler, options, order, step counts): global order; 3M's first (Euler) step makes its global
# error O(h^2) though its later steps are third order; UniPC-p with UniC is order p + 1.
ORDERS = [
    ("euler", {}, 1, [32, 64, 128, 256]),
    ("heun", {}, 2, [16, 32, 64, 128]),
    ("dpmpp_2m", {}, 2, [64, 128, 256]),
    ("dpmpp_2m_sde", {"eta": 0.0, "solver_type": "heun"}, 2, [64, 128, 256]),
    ("dpmpp_3m", {}, 2, [32, 64, 128, 256]),
    ("unipc", {"order": 1}, 2, [32, 64, 128, 256]),
    ("unipc", {"order": 2}, 3, [64, 128, 256]),
    ("unipc", {"order": 3}, 4, [64, 128, 256]),
]


@pytest.mark.parametrize(
    ("name", "options", "order", "steps"), ORDERS, ids=[f"{n}{o}" for n, o, *_ in ORDERS]
)
def test_convergence_order(
    start_and_reference, name: str, options: dict, order: int, steps: list[int]
) -> None:
    x, ref = start_and_reference
    errors = []
    for n in steps:
        out = sample(GM.denoise, x, log_snr_sigmas(n + 1, SIGMA_MIN, SIGMA_MAX), name, **options)
        errors.append((out - ref).pow(2).mean().sqrt().item())
    assert errors[-1] < 1e-2
    assert _slope(errors, steps) >= order - 0.3, errors


def test_dpmpp_3m_beats_2m_and_unipc_through_the_scheduler_interface() -> None:
    """The step interface (one model call per step) reproduces the driver, on a VP process."""
    process = make_process("vp")
    model = GM.model(process, "eps")
    errs = {}
    x_T = torch.randn(64, 4, generator=torch.Generator().manual_seed(1), dtype=F64)
    ref = sample_callable(model, x_T, "heun", 200, "eps", spacing="log_snr")
    for name in ("ddim", "euler", "dpmpp_2m", "dpmpp_3m", "unipc"):
        params = {} if name == "ddim" else {"spacing": "log_snr"}
        spacing = {"spacing": "linspace"} if name == "ddim" else params
        out = sample_callable(model, x_T, name, 20, "eps", **spacing)
        errs[name] = (out - ref).pow(2).mean().sqrt().item()
    assert errs["dpmpp_2m"] < errs["euler"] and errs["dpmpp_3m"] < errs["dpmpp_2m"]
    assert errs["unipc"] < errs["dpmpp_2m"]


# -- the step interface ---------------------------------------------------------------------------


# eps on rectified flow is left out: eps cannot recover x0 where alpha = 0 (refused, tested below).
@pytest.mark.parametrize(
    ("process", "prediction_type"),
    [(p, k) for p in PROCESSES for k in ("eps", "x0", "v", "flow", "edm") if (p, k) != ("flow", "eps")],
)
def test_every_process_and_prediction_reaches_the_same_ode_solution(
    process: str, prediction_type: str
) -> None:
    """The PF-ODE in sigma/alpha does not depend on the process: same start, same end."""
    proc = make_process(process)
    sched = get_registry().build(
        "scheduler",
        "dpmpp_3m",
        process=process,
        spacing="log_snr",
        sigma_max=80.0,
        sigma_min=0.01,
        sigma_data=0.5,  # used by edm only
    )
    sched.set_timesteps(60)
    x_ve = torch.randn(32, 4, generator=torch.Generator().manual_seed(2), dtype=F64) * 80
    x_t = x_ve * proc.alpha(sched.timesteps[0])
    out = sample_callable(GM.model(proc, prediction_type, 0.5), x_t, sched, 60, prediction_type)
    ref = sample(GM.denoise, x_ve, [*log_snr_sigmas(60, 0.01, 80.0), 0.0], "dpmpp_3m")
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-8)


@pytest.mark.parametrize("name", ALL)
def test_seeds_do_not_depend_on_batch_size(name: str) -> None:
    model = GM.model(make_process("vp"), "v")
    params = {"eta": 0.5} if name == "ddim" else {"s_churn": 1.0} if name == "heun" else {}
    a = sample_callable(model, (6, 2, 2), name, 6, "v", seed=3, **params)
    b = sample_callable(model, (6, 2, 2), name, 6, "v", seed=3, **params)
    c = sample_callable(model, (2, 2, 2), name, 6, "v", seed=3, **params)
    assert torch.equal(a, b)
    torch.testing.assert_close(a[:2], c, rtol=0, atol=1e-5)
    assert torch.isfinite(a).all()


def test_callback_sees_x0_at_every_evaluation() -> None:
    seen = []
    sample_callable(
        GM.model(make_process("vp"), "eps"),
        (3, 4),
        "heun",
        4,
        "eps",
        callback=lambda i, x, x0: seen.append(i),
    )
    assert seen == list(range(7))


def test_stochastic_samplers_use_the_given_noise() -> None:
    sched = get_registry().build("scheduler", "dpmpp_2m_sde")
    assert sched.stochastic
    sched.set_timesteps(4)
    x = torch.randn(2, 3)
    out0 = sched.step(torch.zeros(2, 3), 0, x, "eps", noise=torch.zeros(2, 3)).prev_sample
    sched.set_timesteps(4)
    out1 = sched.step(torch.zeros(2, 3), 0, x, "eps", noise=torch.ones(2, 3)).prev_sample
    assert not torch.equal(out0, out1)
    assert not get_registry().build("scheduler", "dpmpp_2m").stochastic
    with pytest.raises(RuntimeError, match="in order"):
        sched.step(torch.zeros(2, 3), 3, x, "eps")


def test_eps_with_alpha_zero_is_refused() -> None:
    with pytest.raises(ValueError, match="zero_terminal_snr"):
        get_registry().build("scheduler", "euler", process="flow").check_prediction_type("eps")


# -- a trained model samples with every scheduler -------------------------------------------------


@pytest.fixture(scope="module")
def trained_pipe(tmp_path_factory):
    from sciddpm.training.trainer import train

    run = {
        "data": {"type": "digits", "size": 8, "classes": [0, 1]},
        "pipeline": {
            "encoder": {"type": "standardize"},
            "denoiser": TINY_UNET,
            "conditioner": {"type": "class_label", "dim": 8},
            "scheduler": {"type": "ddpm", "schedule": "cosine"},
        },
        "train": {"steps": 3, "batch_size": 8, "warmup_steps": 1, "log_every": 3, "checkpoint_every": 3},
    }
    return train(run, tmp_path_factory.mktemp("run"), progress=False)


@pytest.mark.parametrize("name", ALL)
def test_trained_model_samples_with_every_scheduler(trained_pipe, name: str) -> None:
    sched = trained_pipe.scheduler_for(name)
    if name not in ("ddpm", "ddim"):
        assert sched.config.schedule == "cosine"  # the trained process is inherited
    kw = {"steps": 3, "seed": 5, "scheduler": name, "guidance_scale": 2.0}
    a = trained_pipe.sample(3, [0, 1, 1], batch_size=3, **kw)
    b = trained_pipe.sample(3, [0, 1, 1], batch_size=2, **kw)
    assert a.shape == (3, 1, 8, 8) and torch.isfinite(a).all()
    torch.testing.assert_close(a, b, rtol=0, atol=1e-4)


# -- classifier-free guidance interval ------------------------------------------------------------


def _guided(pipe, **kw):
    return pipe.sample(3, [0, 1, 1], steps=5, seed=2, scheduler="ddim", **kw)


def test_guidance_scale_one_is_the_conditional_model(trained_pipe) -> None:
    plain = _guided(trained_pipe)
    assert torch.equal(_guided(trained_pipe, guidance_scale=1.0, guidance_interval=(0.5, 10.0)), plain)
    assert not torch.equal(_guided(trained_pipe, guidance_scale=3.0), plain)


def test_guidance_interval_bounds_reproduce_full_and_no_guidance(trained_pipe) -> None:
    plain = _guided(trained_pipe)
    nowhere = _guided(trained_pipe, guidance_scale=3.0, guidance_interval=(1e3, 1e4))
    assert torch.equal(nowhere, plain)
    full = _guided(trained_pipe, guidance_scale=3.0)
    assert torch.equal(_guided(trained_pipe, guidance_scale=3.0, guidance_interval=(0.0, math.inf)), full)


def test_guidance_interval_evaluates_the_null_model_only_inside(trained_pipe) -> None:
    rows: list[int] = []
    hook = trained_pipe.ema["denoiser"].register_forward_hook(lambda m, args, out: rows.append(len(out)))
    try:
        # ddim, 5 trailing steps on the cosine schedule: sigma / alpha = 2.2e4, 3.1, 1.4, 0.74, 0.34.
        part = _guided(trained_pipe, guidance_scale=3.0, guidance_interval=(1.0, 10.0))
    finally:
        hook.remove()
    assert rows == [3, 6, 6, 3, 3]
    assert not torch.equal(part, _guided(trained_pipe))
    assert not torch.equal(part, _guided(trained_pipe, guidance_scale=3.0))


@pytest.mark.parametrize("interval", [(2.0, 1.0), (-1.0, 1.0), (1.0, 1.0), (math.nan, 1.0), "ab"])
def test_guidance_interval_is_validated(trained_pipe, interval) -> None:
    with pytest.raises(ValueError, match="guidance_interval"):
        _guided(trained_pipe, guidance_scale=2.0, guidance_interval=interval)
