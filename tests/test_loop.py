"""The one sampling loop and the one denoiser wrapper: every scheduler steps from the caller's x_t."""

from __future__ import annotations

import pytest
import torch

from sciddpm.diffusion.loop import build_scheduler, run, sample_callable
from sciddpm.diffusion.mixture import GaussianMixture
from sciddpm.diffusion.preconditioning import Preconditioned, check_guidance_interval
from sciddpm.interfaces import Conditioning

F64 = torch.float64
SCHEDULERS = [
    ("ddpm", {}),
    ("ddim", {}),
    ("ddim", {"eta": 0.5}),
    ("euler", {}),
    ("euler_a", {}),
    ("heun", {}),
    ("heun", {"s_churn": 2.0}),
    ("dpmpp_2m", {}),
    ("dpmpp_3m", {}),
    ("dpmpp_2m_sde", {}),
    ("dpmpp_2m_sde", {"solver_type": "heun"}),
    ("unipc", {"order": 2}),
    ("unipc", {"order": 3}),
]
IDS = [name + "".join(f"-{k}={v}" for k, v in o.items()) for name, o in SCHEDULERS]


# DDPM and DDIM run the VP process only; the solvers run it and rectified flow (alpha(1) = 0).
ON_PROCESSES = [
    pytest.param(name, options if name in ("ddpm", "ddim") else {**options, "process": p}, id=f"{i}-{p}")
    for (name, options), i in zip(SCHEDULERS, IDS, strict=True)
    for p in (["vp"] if name in ("ddpm", "ddim") else ["vp", "flow"])
]


@pytest.mark.parametrize(("name", "kw"), ON_PROCESSES)
def test_every_scheduler_continues_from_the_callers_x_t(name: str, kw: dict) -> None:
    # Two schedulers in lockstep get the same model outputs and noise; at step k one is handed
    # x_t + d instead of x_t. Its next state must move by c d, one nonzero number c for every
    # element: the update continues from the x_t it is given, as DDPM/DDIM's formulas do.
    a, b = build_scheduler(name, **kw), build_scheduler(name, **kw)
    a.set_timesteps(6)
    b.set_timesteps(6)
    model = GaussianMixture.random(4, 3, seed=1).model(a.process, "x0")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 4, generator=g, dtype=F64) * a.init_noise_sigma
    d = 0.1 * torch.randn(8, 4, generator=g, dtype=F64)
    n = len(a.timesteps)
    for k in range(1, n - 1):  # every step but the first (fresh either way) and the last (to x0)
        xa = xb = x
        a.set_timesteps(6)
        b.set_timesteps(6)
        for i, t in enumerate(a.timesteps[: k + 1]):
            x0 = model(xa, torch.full((8,), float(t), dtype=F64))
            noise = torch.randn(8, 4, generator=torch.Generator().manual_seed(i), dtype=F64)
            xb = xa + d if i == k else xa
            ya = a.step(x0, i, xa, "x0", noise=noise).prev_sample
            yb = b.step(x0, i, xb, "x0", noise=noise).prev_sample
            xa = ya
        ratio = (yb - ya) / d
        assert float(ratio.abs().mean()) > 1e-3, f"step {k} ignored the edited x_t"
        torch.testing.assert_close(ratio, ratio.mean().expand_as(ratio), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize(("name", "options"), SCHEDULERS, ids=IDS)
def test_edits_made_in_the_callback_steer_every_scheduler(name: str, options: dict) -> None:
    # Inpainting's mechanism: the callback pins coordinate 0 of the state to the value of a known
    # trajectory; every scheduler must then follow it there, ending at the known sample.
    gm = GaussianMixture.random(3, 2, seed=2)
    model = gm.model(build_scheduler(name, **options).process, "x0")
    noise = torch.randn(6, 3, generator=torch.Generator().manual_seed(3), dtype=F64)
    known = sample_callable(model, noise, name, 8, "x0", seed=1, **options)
    path = []
    sample_callable(
        model, noise, name, 8, "x0", seed=1, callback=lambda i, x, x0: path.append(x.clone()), **options
    )

    def pin(i: int, x: torch.Tensor, x0: torch.Tensor) -> None:
        x[:, 0] = path[i][:, 0] + 1.0  # shift the known coordinate by one unit, in place

    edited = sample_callable(model, noise, name, 8, "x0", seed=1, callback=pin, **options)
    torch.testing.assert_close(edited[:, 0], known[:, 0] + 1.0)
    assert float((edited[:, 1:] - known[:, 1:]).abs().max()) > 1e-6  # the edit reached the other coordinates


def test_run_needs_one_sample_index_per_row() -> None:
    sched = build_scheduler("ddim")
    sched.set_timesteps(2)
    with pytest.raises(ValueError, match="got 3 sample indices for a batch of 2"):
        run(lambda x, t: x, sched, torch.zeros(2, 1), seed=0, indices=range(3))


class _Recorder(torch.nn.Module):
    """A network that records its inputs and returns a fixed function of them."""

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: Conditioning | None) -> torch.Tensor:
        self.seen = (x, c_noise, cond)
        shift = 0.0 if cond is None or cond.vector is None else cond.vector.view(-1, 1, 1)
        return 0.5 * x + shift


def test_preconditioned_scales_the_input_and_maps_the_output_to_x0() -> None:
    sched = build_scheduler("heun", process="edm", sigma_data=0.5)
    net = _Recorder()
    pre = Preconditioned(net, sched, "edm")
    x = torch.randn(3, 2, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    t = torch.tensor([0.3, 0.6, 0.9], dtype=F64)
    x0 = pre(x, t)
    seen_x, seen_noise, _ = net.seen
    torch.testing.assert_close(seen_x, x * sched.c_in(t).view(-1, 1, 1))  # c_in = 1 / sqrt(sigma^2 + sd^2)
    torch.testing.assert_close(seen_noise, sched.c_noise(t))  # log(sigma) / 4 on EDM
    expected, _ = sched.process.to_x0_eps(0.5 * seen_x, x, t, "edm", 0.5)  # c_skip x + c_out F
    torch.testing.assert_close(x0, expected)


def test_guidance_and_its_interval() -> None:
    sched = build_scheduler("dpmpp_2m")
    pre = Preconditioned(_Recorder(), sched, "eps")
    x = torch.randn(2, 1, 3, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.5, 0.5])
    cond, null = Conditioning(vector=torch.ones(2, 1)), Conditioning(vector=torch.zeros(2, 1))
    c, u = pre.output(x, t, cond), pre.output(x, t, null)
    torch.testing.assert_close(pre.guided_output(x, t, cond, null, 3.0), u + 3.0 * (c - u))
    sigma = float(sched.process.sigma_ve(torch.tensor(0.5, dtype=F64)))
    outside = pre.guided_output(x, t, cond, null, 3.0, (sigma * 2, sigma * 4))
    assert torch.equal(outside, c)  # not guided: the conditional output, one evaluation
    inside = pre.guided_output(x, t, cond, null, 3.0, (sigma / 2, sigma * 2))
    torch.testing.assert_close(inside, u + 3.0 * (c - u))
    for bad in ((2.0, 1.0), (-1.0, 1.0), (1.0,), "low"):
        with pytest.raises(ValueError, match="guidance_interval"):
            check_guidance_interval(bad)


def test_the_loss_is_the_weighted_mse_on_the_target() -> None:
    sched = build_scheduler("ddpm", loss_weighting="min_snr")
    pre = Preconditioned(_Recorder(), sched, "v")
    g = torch.Generator().manual_seed(2)
    x0, eps, out = (torch.randn(4, 1, 5, generator=g) for _ in range(3))
    t = torch.tensor([0.1, 0.4, 0.7, 0.95])
    mask = torch.ones_like(x0)
    mask[0, 0, :2] = 0
    loss, per_sample = pre.loss(out, x0, eps, t, mask)
    err = (out - sched.target(x0, eps, t, "v")) ** 2
    want = torch.stack([err[0, 0, 2:].mean(), *(e.mean() for e in err[1:])])
    torch.testing.assert_close(per_sample, want)
    torch.testing.assert_close(loss, (want * sched.loss_weight(t, "v")).mean())


def test_a_prediction_type_the_process_cannot_drive_is_refused() -> None:
    with pytest.raises(ValueError, match="eps-predicting denoiser"):
        Preconditioned(_Recorder(), build_scheduler("unipc", process="flow"), "eps")


def test_times_of_another_schedule_reach_the_network_as_its_own_noise_levels() -> None:
    # A model trained on EDM (rho 7) sampled with rho 3 (Karras spacing's knob): each sampling time
    # must reach the network as the noise level it means, not as the trained process' same t.
    trained = build_scheduler("heun", process="edm")
    sampling = build_scheduler("euler", process="edm", rho=3.0)
    net = _Recorder()
    pre = Preconditioned(net, trained, "edm", times=sampling.process)
    t = torch.tensor([0.2, 0.5, 0.9], dtype=F64)
    x = torch.randn(3, 1, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    pre(x, t)
    sigma = sampling.process.sigma(t)
    torch.testing.assert_close(net.seen[1], sigma.log() / 4)  # EDM's c_noise of the right sigma
    torch.testing.assert_close(net.seen[0], x / (sigma**2 + 1).sqrt().view(-1, 1, 1))
    with pytest.raises(ValueError, match="trained on the 'edm' process and cannot be sampled on the 've'"):
        Preconditioned(net, trained, "edm", times=build_scheduler("euler", process="ve").process)
