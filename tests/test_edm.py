"""EDM preconditioning (Karras et al. 2022, Table 1): the edm output F, c_in, sigma_data, EDM weighting."""

from __future__ import annotations

import pytest
import torch
from tiny import TINY_UNET

from sciddpm.config import ConfigError
from sciddpm.data import ArraySource
from sciddpm.diffusion.parametrization import to_x0_eps
from sciddpm.diffusion.processes import make_process
from sciddpm.pipeline import Pipeline
from sciddpm.pipeline.pipeline import estimate_sigma_data
from sciddpm.registry import get_registry

F64 = torch.float64
T = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0], dtype=F64)


def _pair(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(5, 2, 3, generator=g, dtype=F64), torch.randn(5, 2, 3, generator=g, dtype=F64)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_edm_output_is_minus_v_on_vp_with_unit_sigma_data(schedule: str) -> None:
    process = make_process("vp", schedule=schedule)
    x0, eps = _pair()
    t = T.clamp(0.01, 0.99)
    f = process.target(x0, eps, t, "edm")
    torch.testing.assert_close(f, -process.target(x0, eps, t, "v"), rtol=0, atol=1e-12)


def test_edm_output_matches_karras_preconditioning_on_the_edm_process() -> None:
    """x0 = c_skip x + c_out F with Table 1's c_skip, c_out on x = x0 + sigma eps (alpha = 1)."""
    process, sd = make_process("edm"), 0.5
    x0, eps = (v[1:4] for v in _pair(1))
    t = T[1:4]
    sigma = process.sigma(t).view(-1, 1, 1)
    x = process.add_noise(x0, eps, t)
    c_skip = sd**2 / (sigma**2 + sd**2)
    c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
    f = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=F64)
    x0_back, _ = to_x0_eps(f, x, 1.0, sigma, "edm", sd)
    torch.testing.assert_close(x0_back, c_skip * x + c_out * f)


@pytest.mark.parametrize("name", ["flow", "vp"])
def test_edm_output_is_finite_where_alpha_or_sigma_is_zero(name: str) -> None:
    process = make_process(name, **({"zero_terminal_snr": True} if name == "vp" else {}))
    x0, eps = _pair()
    f = process.target(x0, eps, T, "edm", 0.7)
    assert torch.isfinite(f).all()
    x0_back, eps_back = process.to_x0_eps(f, process.add_noise(x0, eps, T), T, "edm", 0.7)
    torch.testing.assert_close(x0_back[1:], x0[1:])  # t = 0: x0 = x_t, eps unknown
    torch.testing.assert_close(eps_back[:-1], eps[:-1])  # t = 1: x_t = eps, x0 unknown
    torch.testing.assert_close(x0_back[0], x0[0])


@pytest.mark.parametrize("name", ["ddpm", "ddim", "euler", "dpmpp_2m", "heun"])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_c_in_is_exactly_one_on_vp_with_unit_sigma_data(name: str, schedule: str) -> None:
    sched = get_registry().build("scheduler", name, schedule=schedule)
    t = torch.linspace(0, 1, 1001)
    assert torch.equal(sched.c_in(t), torch.ones_like(t))


@pytest.mark.parametrize("process", ["ve", "edm", "flow", "vp"])
def test_c_in_gives_the_network_unit_variance_input(process: str) -> None:
    sd = 2.5
    sched = get_registry().build("scheduler", "heun", process=process, sigma_data=sd)
    t = torch.full((4096,), 0.6, dtype=F64)
    x0 = sd * torch.randn(4096, 8, generator=torch.Generator().manual_seed(0), dtype=F64)
    x_t = sched.add_noise(x0, torch.randn(x0.shape, generator=torch.Generator().manual_seed(1), dtype=F64), t)
    assert (x_t * sched.c_in(t).view(-1, 1)).std().item() == pytest.approx(1.0, abs=0.02)


def test_edm_weighting_is_uniform_on_the_edm_output_and_lambda_on_x0() -> None:
    sd = 0.5
    sched = get_registry().build("scheduler", "heun", process="edm", loss_weighting="edm", sigma_data=sd)
    t = T[1:]
    assert torch.equal(sched.loss_weight(t, "edm"), torch.ones_like(t))
    sigma = sched.process.sigma(t)
    torch.testing.assert_close(sched.loss_weight(t, "x0"), (sigma**2 + sd**2) / (sigma * sd) ** 2)
    # on eps (alpha = 1): lambda times (dx0/deps)^2 = sigma^2
    torch.testing.assert_close(sched.loss_weight(t, "eps"), (sigma**2 + sd**2) / sd**2)


def test_sigma_data_is_validated() -> None:
    for bad in (0.0, -1.0, "half"):
        with pytest.raises(ConfigError, match="sigma_data"):
            get_registry().build("scheduler", "heun", sigma_data=bad)
    with pytest.raises(ValueError, match=r"Pipeline\.from_config"):
        get_registry().build("scheduler", "heun", sigma_data="auto").c_in(torch.zeros(1))


def test_sigma_data_auto_is_estimated_from_the_encoded_data_and_stored(tmp_path) -> None:
    x = 3.0 * torch.randn(64, 1, 8, generator=torch.Generator().manual_seed(0)) + 1.0
    source = ArraySource.from_array(x)
    config = {
        "encoder": {"type": "identity"},
        "denoiser": {**TINY_UNET, "prediction": "edm"},
        "scheduler": {"type": "dpmpp_2m", "process": "edm", "sigma_data": "auto"},
    }
    pipe = Pipeline.from_config(config, source)
    want = x.double().std(unbiased=False).item()
    assert pipe.config.scheduler.params["sigma_data"] == pytest.approx(want, rel=1e-6)
    assert pipe.scheduler.sigma_data == pytest.approx(want, rel=1e-6)
    assert estimate_sigma_data(pipe.encoder, source) == pytest.approx(want, rel=1e-6)
    pipe.save(tmp_path / "saved")
    assert Pipeline.load(tmp_path / "saved").scheduler.sigma_data == pipe.scheduler.sigma_data
    with pytest.raises(ConfigError, match="sigma_data"):
        Pipeline.from_config(config, data_shape=(1, 8))


def test_tiny_edm_model_trains_and_samples(tmp_path) -> None:
    from sciddpm.training.trainer import train

    torch.set_num_threads(1)
    run = {
        "data": {"type": "digits", "size": 8, "classes": [0, 1]},
        "pipeline": {
            "encoder": {"type": "standardize"},
            "denoiser": {**TINY_UNET, "prediction": "edm"},
            "scheduler": {"type": "heun", "process": "edm", "loss_weighting": "edm", "sigma_data": "auto"},
        },
        "train": {"steps": 3, "batch_size": 8, "warmup_steps": 1, "log_every": 3, "checkpoint_every": 3},
    }
    pipe = train(run, tmp_path, progress=False)
    assert pipe.denoiser.prediction_type == "edm"
    assert isinstance(pipe.config.scheduler.params["sigma_data"], float)
    for name in ("heun", "dpmpp_2m"):
        assert pipe.scheduler_for(name).sigma_data == pipe.scheduler.sigma_data  # inherited
        out = pipe.sample(2, steps=3, scheduler=name, seed=1)
        assert out.shape == (2, 1, 8, 8) and torch.isfinite(out).all()
