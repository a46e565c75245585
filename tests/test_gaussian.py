"""The analytic Gaussian start (sciddpm.diffusion.gaussian): fit, exact flow, sampling."""

from __future__ import annotations

import math

import pytest
import torch

from sciddpm.diffusion.gaussian import GaussianStart, initial_x
from sciddpm.diffusion.loop import build_scheduler, sample_callable
from sciddpm.diffusion.mixture import GaussianMixture
from sciddpm.diffusion.processes import make_process
from sciddpm.diffusion.timesteps import optimize_timesteps, trajectory_rmse
from sciddpm.seeding import noise_for

F64 = torch.float64


def _anisotropic(dim: int = 5, n: int = 4000, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scales = torch.linspace(0.2, 2.0, dim, dtype=F64)
    rotation, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=F64))
    return 0.5 + (torch.randn(n, dim, generator=g, dtype=F64) * scales) @ rotation.T


def _covariance(start: GaussianStart) -> torch.Tensor:
    v = start.eigvecs
    eye = torch.eye(start.dim, dtype=F64)
    return v @ torch.diag(start.eigvals) @ v.T + start.residual * (eye - v @ v.T)


def _pf_ode(
    start: GaussianStart,
    x: torch.Tensor,
    sigma_from: float,
    sigma_to: float,
    shift: torch.Tensor | None = None,
) -> torch.Tensor:
    """The Gaussian's PF-ODE dx/dlog(sigma) = x - D(x, sigma) by scipy's DOP853.

    With a ``shift`` the denoiser is D + shift (sigma_to / sigma)^2.
    """
    from scipy.integrate import solve_ivp

    mean, cov = start.mean, _covariance(start)
    eye = torch.eye(start.dim, dtype=F64)

    def rhs(u: float, y):
        xx = torch.from_numpy(y).view(x.shape)
        sigma2 = math.exp(2 * u)
        denoised = mean + (xx - mean) @ torch.linalg.solve(cov + sigma2 * eye, cov)
        if shift is not None:
            denoised = denoised + shift * sigma_to**2 / sigma2
        return (xx - denoised).reshape(-1).numpy()

    sol = solve_ivp(
        rhs,
        (math.log(sigma_from), math.log(sigma_to)),
        x.reshape(-1).numpy(),
        "DOP853",
        rtol=1e-11,
        atol=1e-11,
    )
    return torch.from_numpy(sol.y[:, -1]).view(x.shape)


def test_fit_recovers_the_sample_covariance_in_full_and_keeps_its_trace_at_low_rank() -> None:
    data = _anisotropic()
    full = GaussianStart.fit(data)
    torch.testing.assert_close(full.mean, data.mean(0))
    torch.testing.assert_close(_covariance(full), torch.cov(data.T))
    low = GaussianStart.fit(data.view(len(data), 1, 5), rank=2)
    assert low.eigvecs.shape == (5, 2) and low.residual > 0
    torch.testing.assert_close(_covariance(low).trace(), torch.cov(data.T).trace())
    torch.testing.assert_close(low.eigvals, full.eigvals[:2])


@pytest.mark.parametrize("rank", [None, 2])
def test_transport_is_the_exact_flow_of_the_gaussian(rank) -> None:
    start = GaussianStart.fit(_anisotropic(), rank=rank)
    x = start.mean + 30.0 * torch.randn(6, 5, generator=torch.Generator().manual_seed(1), dtype=F64)
    for sigma_to in (12.0, 1.5, 0.01):
        expected = _pf_ode(start, x, 30.0, sigma_to)
        torch.testing.assert_close(start.transport(x, 1.0, 30.0, sigma_to), expected, rtol=1e-7, atol=1e-7)
    # Steps compose, and x_t of a VP process (alpha < 1) is read in its own units.
    via = start.transport(start.transport(x, 1.0, 30.0, 4.0), 1.0, 4.0, 0.5)
    torch.testing.assert_close(via, start.transport(x, 1.0, 30.0, 0.5))
    alpha = 0.1
    torch.testing.assert_close(start.transport(alpha * x, alpha, alpha * 30.0, 0.5), via)


def test_transport_from_pure_noise_is_the_limit_of_large_sigma() -> None:
    # The flow process starts at alpha = 0: x_1 = eps exactly, which a huge sigma approaches.
    start = GaussianStart.fit(_anisotropic())
    eps = torch.randn(4, 5, generator=torch.Generator().manual_seed(2), dtype=F64)
    big = 1e7
    torch.testing.assert_close(
        start.transport(eps, 0.0, 1.0, 2.0), start.transport(eps * big, 1.0, big, 2.0), rtol=1e-6, atol=1e-6
    )


def _gaussian_model(start: GaussianStart, process):
    """The exact eps-model of the Gaussian data ``start`` describes."""
    cov, mean = _covariance(start), start.mean
    eye = torch.eye(start.dim, dtype=F64)

    def model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = (v.to(F64)[:, None] for v in process.alpha_sigma(t))
        x = x_t / alpha
        s2 = (sigma / alpha) ** 2
        out = torch.stack(
            [
                mean + (xi - mean) @ torch.linalg.solve(cov + si * eye, cov)
                for xi, si in zip(x, s2, strict=True)
            ]
        )
        return (x_t - alpha * out) / sigma

    return model


def test_on_gaussian_data_one_evaluation_after_the_start_lands_on_the_exact_sample() -> None:
    process = make_process("vp")
    start = GaussianStart.fit(_anisotropic())
    model = _gaussian_model(start, process)
    noise = noise_for((5,), 3, 0, 16).double()
    alpha_1, sigma_1 = (float(v) for v in process.alpha_sigma(torch.tensor(1.0, dtype=F64)))
    exact = start.transport(noise * math.hypot(alpha_1, sigma_1), alpha_1, sigma_1, 0.0)
    late = process.t_from_sigma_ve(torch.tensor(0.005, dtype=F64)).item()
    spec = {"type": "unipc", "timesteps": [late]}
    carried = sample_callable(model, noise.clone(), spec, 1, "eps", start=start)
    plain = sample_callable(model, noise.clone(), "unipc", 1, "eps")
    assert float((carried - exact).abs().max()) < 1e-3
    assert float((plain - exact).abs().max()) > 0.5


@pytest.mark.parametrize(
    "spec",
    [
        {"type": "dpmpp_2m"},
        {"type": "unipc", "process": "ve"},
        {"type": "unipc", "process": "edm"},
        {"type": "ddim", "zero_terminal_snr": True},
        {"type": "ddim"},
    ],
    ids=lambda spec: "-".join(str(v) for v in spec.values()),
)
def test_a_start_at_the_first_time_changes_nothing(spec) -> None:
    gm = GaussianMixture.random(4, 3, seed=1)
    start = GaussianStart.fit(gm.sample(500, torch.Generator().manual_seed(0)))
    sched = build_scheduler(spec)
    sched.set_timesteps(5)
    noise = noise_for((4,), 4, 0, 6).double()
    carried = initial_x(start, sched, noise)
    assert torch.isfinite(carried).all()  # also where alpha(1) = 0 (zero terminal SNR)
    torch.testing.assert_close(carried, initial_x(None, sched, noise))
    if spec == {"type": "dpmpp_2m"}:  # and a whole run
        model = gm.model(sched.process, "eps")
        with_start = sample_callable(model, (6, 4), spec, 5, "eps", start=start, seed=4)
        torch.testing.assert_close(with_start, sample_callable(model, (6, 4), spec, 5, "eps", seed=4))


def test_optimized_times_with_a_start_begin_lower_and_beat_those_without_on_fresh_noise() -> None:
    gm = GaussianMixture.random(4, 4, seed=3, spread=1.5)
    model = gm.model(make_process("vp"), "eps")
    start = GaussianStart.fit(gm.sample(4000, torch.Generator().manual_seed(5)))
    kwargs = {"steps": 4, "n": 256, "reference_steps": 60, "iterations": 60}
    carried = optimize_timesteps(model, (4,), "dpmpp_2m", start=start, **kwargs)
    plain = optimize_timesteps(model, (4,), "dpmpp_2m", **kwargs)
    assert carried.start is start and plain.start is None
    assert carried.timesteps[0] < 1.0 and plain.timesteps[0] == pytest.approx(1.0, abs=1e-12)
    x = noise_for((4,), 999, 0, 512).double()
    reference = sample_callable(model, x, {"type": "unipc", "order": 3, "spacing": "log_snr"}, 200, "eps")
    with_start = trajectory_rmse(model, x, reference, carried.scheduler, 4, start=start)
    assert with_start < trajectory_rmse(model, x, reference, plain.scheduler, 4)


def test_save_load_round_trip_and_refuses_other_files(tmp_path) -> None:
    start = GaussianStart.fit(_anisotropic(), rank=3)
    back = GaussianStart.load(start.save(tmp_path / "start"))
    for name in ("mean", "eigvecs", "eigvals"):
        assert torch.equal(getattr(back, name), getattr(start, name))
    assert back.residual == start.residual
    with pytest.raises(FileNotFoundError, match="not a saved sciddpm Gaussian start"):
        GaussianStart.load(tmp_path)
    other = GaussianStart.fit(_anisotropic(), rank=2)
    other.save(tmp_path / "other")
    (tmp_path / "other" / "gaussian_start.json").write_text(
        (tmp_path / "start" / "gaussian_start.json").read_text()
    )
    with pytest.raises(ValueError, match=r"tensor 'eigvecs' has shape \(5, 2\).*expects \(5, 3\)"):
        GaussianStart.load(tmp_path / "other")


def test_bad_inputs_name_the_value() -> None:
    with pytest.raises(ValueError, match="at least 2 samples"):
        GaussianStart.fit(torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"rank must be an integer in 1\.\.3"):
        GaussianStart.fit(torch.randn(10, 3), rank=4)
    with pytest.raises(ValueError, match="NaN or inf"):
        GaussianStart.fit(torch.tensor([[0.0, float("nan")], [1.0, 2.0], [3.0, 1.0]]))
    with pytest.raises(ValueError, match="finite and >= 0"):
        GaussianStart(torch.zeros(2), torch.eye(2), torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match=r"eigvecs \(D, k\)"):
        GaussianStart(torch.zeros(3), torch.eye(2), torch.ones(2))
    start = GaussianStart.fit(torch.randn(10, 3))
    with pytest.raises(ValueError, match="fitted on 3"):
        start.transport(torch.zeros(2, 4), 1.0, 10.0, 1.0)
    model = GaussianMixture.random(3, 2).model(make_process("vp"))
    with pytest.raises(ValueError, match="fitted on 3"):
        sample_callable(model, (2, 4), "unipc", 3, start=start)


def test_with_a_capped_sigma_max_the_reference_starts_where_the_short_runs_do() -> None:
    # sigma_max below the process's sigma at t = 1: the reference is carried there too, so a fine
    # run with the start matches it and the fitted error stays that of the short run.
    gm = GaussianMixture.random(4, 4, seed=3, spread=1.5)
    gm.means += 4.0
    model = gm.model(make_process("vp"), "eps")
    start = GaussianStart.fit(gm.sample(4000, torch.Generator().manual_seed(5)))
    spec = {"type": "unipc", "sigma_max": 5.0}
    kwargs = {"n": 128, "reference_steps": 60, "iterations": 20, "start": start}
    short = optimize_timesteps(model, (4,), spec, steps=4, **kwargs)
    fine = optimize_timesteps(model, (4,), spec, steps=30, **{**kwargs, "iterations": 5})
    assert fine.rmse_start < 0.02 < short.rmse_start
    assert short.rmse <= short.rmse_start


def _gaussian_denoiser(start: GaussianStart, x: torch.Tensor, sigma: float) -> torch.Tensor:
    cov, eye = _covariance(start), torch.eye(start.dim, dtype=F64)
    return start.mean + (x - start.mean) @ torch.linalg.solve(cov + sigma**2 * eye, cov)


@pytest.mark.parametrize("rank", [5, 2])
def test_correct_is_exact_where_the_model_differs_from_the_gaussian_as_sigma_to_the_minus_2(rank) -> None:
    # The correction takes the residual x0 - D_G to fall as sigma^-2 over the carried interval, so
    # it is exact for a denoiser D_G + shift (sigma_to / sigma)^2; and zero for the Gaussian's own.
    start = GaussianStart.fit(_anisotropic(), rank=rank)
    x = 40.0 * torch.randn(6, 5, generator=torch.Generator().manual_seed(1), dtype=F64)
    shift = torch.tensor([0.3, -0.2, 0.1, 0.5, -0.4], dtype=F64)
    carried = start.transport(x, 1.0, 40.0, 2.0)
    x0 = _gaussian_denoiser(start, carried, 2.0)
    torch.testing.assert_close(start.correct(carried, x0, 1.0, 2.0, 1.0, 40.0), carried, rtol=0, atol=1e-12)
    exact = _pf_ode(start, x, 40.0, 2.0, shift)
    corrected = start.correct(carried, x0 + shift, 1.0, 2.0, 1.0, 40.0)
    torch.testing.assert_close(corrected, exact, rtol=0, atol=1e-7)
    # The same in VP units (x_t = alpha x_ve, here with sigma_from = 40 in VE units).
    alpha = 1 / math.hypot(1.0, 2.0)
    vp = start.correct(
        carried * alpha,
        x0 + shift,
        alpha,
        2.0 * alpha,
        0.5 / math.hypot(1.0, 40.0),
        20 / math.hypot(1.0, 40.0),
    )
    torch.testing.assert_close(vp, exact * alpha, rtol=0, atol=1e-7)
    assert float((corrected - carried).abs().max()) > 0.05


def test_the_corrected_start_lands_nearer_the_model_flow_on_a_mixture() -> None:
    # On multimodal data the Gaussian flow drifts from the model's; the first evaluation's residual
    # removes most of that drift, at no extra evaluation, even near the data's scale (sqrt of the
    # top variance is 1.8 here).
    from sciddpm.diffusion.solvers import sample
    from sciddpm.diffusion.spacing import log_snr_sigmas

    gm = GaussianMixture.random(4, 4, seed=3, spread=1.5)
    start = GaussianStart.fit(gm.sample(20_000, torch.Generator().manual_seed(5)))
    sigma_from, sigma_to = 80.0, 3.0
    x = sigma_from * torch.randn(2000, 4, generator=torch.Generator().manual_seed(2), dtype=F64)
    exact = sample(gm.denoise, x, log_snr_sigmas(300, sigma_to, sigma_from), "unipc", order=3)
    carried = start.transport(x, 1.0, sigma_from, sigma_to)
    corrected = start.correct(carried, gm.denoise(carried, sigma_to), 1.0, sigma_to, 1.0, sigma_from)
    drift, left = (float((v - exact).pow(2).mean().sqrt()) for v in (carried, corrected))
    assert left < 0.3 * drift


def test_samplers_correct_the_start_with_the_first_evaluation_only() -> None:
    # sample_callable's run equals: carry, evaluate, correct (the output restated at the corrected
    # point), then the scheduler's steps; and differs from the uncorrected run.
    from sciddpm.diffusion.gaussian import carry, correct_first, noise_at_1

    gm = GaussianMixture.random(4, 4, seed=3, spread=1.5)
    process = make_process("vp")
    model = gm.model(process, "v")
    start = GaussianStart.fit(gm.sample(4000, torch.Generator().manual_seed(5)))
    spec = {"type": "unipc", "timesteps": [0.8, 0.5, 0.3, 0.1]}
    sched = build_scheduler(spec)
    sched.set_timesteps(4)
    x = carry(start, sched, noise_at_1(sched, noise_for((4,), 1, 0, 8).double()))
    manual, plain = x.clone(), x.clone()
    for i, t in enumerate(sched.timesteps):
        tt = torch.full((8,), float(t), dtype=F64)
        x0, _ = sched.process.to_x0_eps(model(manual, tt), manual, tt, "v")
        if i == 0:
            manual, x0 = correct_first(start, sched, manual, x0)
        manual = sched.step(x0, i, manual, "x0").prev_sample
    sched.set_timesteps(4)
    for i, t in enumerate(sched.timesteps):
        plain = sched.step(model(plain, torch.full((8,), float(t), dtype=F64)), i, plain, "v").prev_sample
    run = sample_callable(
        model, noise_at_1(sched, noise_for((4,), 1, 0, 8).double()), spec, 4, "v", start=start
    )
    torch.testing.assert_close(run, manual, rtol=0, atol=1e-12)
    assert float((run - plain).abs().max()) > 1e-4


def test_correct_from_pure_noise_is_the_limit_of_a_large_first_sigma() -> None:
    # alpha_from = 0 (flow, zero terminal SNR at t = 1) means sigma_from = inf in VE units.
    start = GaussianStart.fit(_anisotropic(), rank=3)
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(2), dtype=F64)
    x0 = x + 0.3
    from_noise = start.correct(x, x0, 0.6, 0.8, 0.0, 1.0)
    far = start.correct(x, x0, 0.6, 0.8, 1.0, 1e7)
    torch.testing.assert_close(from_noise, far, rtol=0, atol=1e-9)
    assert float((from_noise - x).abs().max()) > 0.01


@pytest.mark.parametrize(
    ("process", "prediction_type"),
    [("vp", "eps"), ("vp", "x0"), ("vp", "v"), ("flow", "flow"), ("edm", "edm"), ("ve", "eps")],
)
def test_correct_first_moves_the_estimate_to_the_corrected_point(process, prediction_type) -> None:
    # The solver gets the corrected x and the model's x0 estimate moved there.
    from sciddpm.diffusion.gaussian import carry, correct_first, noise_at_1

    gm = GaussianMixture.random(4, 4, seed=3, spread=1.5)
    start = GaussianStart.fit(gm.sample(4000, torch.Generator().manual_seed(5)))
    sched = build_scheduler({"type": "unipc", "timesteps": [0.6, 0.3]}, process)
    sched.set_timesteps(2)
    model = gm.model(sched.process, prediction_type, sched.sigma_data)
    x = carry(start, sched, noise_at_1(sched, noise_for((4,), 1, 0, 8).double()))
    t = sched.timesteps[0].double()
    out = model(x, torch.full((8,), float(t), dtype=F64))
    x0, _ = sched.process.to_x0_eps(out, x, t, prediction_type, sched.sigma_data)
    corrected, again = correct_first(start, sched, x, x0)
    alpha, sigma = (float(v) for v in sched.process.alpha_sigma(t))
    alpha_1, sigma_1 = (float(v) for v in sched.process.alpha_sigma(torch.tensor(1.0, dtype=F64)))
    torch.testing.assert_close(corrected, start.correct(x, x0, alpha, sigma, alpha_1, sigma_1))
    assert float((corrected - x).abs().max()) > 1e-4
    # The x0 estimate moves with the Gaussian denoiser between the two points.
    moved = x0 + start.denoise(corrected, alpha, sigma) - start.denoise(x, alpha, sigma)
    torch.testing.assert_close(again, moved, rtol=0, atol=1e-10)
    assert float((moved - x0).abs().max()) > 1e-6


@pytest.mark.parametrize("rank", [5, 2])
def test_denoise_is_the_gaussian_posterior_mean(rank) -> None:
    # E[x0 | x_t] = mu + Sigma (Sigma + s^2 I)^-1 (x_t / alpha - mu), in VE and VP units.
    start = GaussianStart.fit(_anisotropic(), rank=rank)
    x = 3.0 * torch.randn(6, 5, generator=torch.Generator().manual_seed(4), dtype=F64)
    torch.testing.assert_close(start.denoise(x, 1.0, 1.5), _gaussian_denoiser(start, x, 1.5))
    alpha = 1 / math.hypot(1.0, 1.5)
    torch.testing.assert_close(
        start.denoise(x * alpha, alpha, 1.5 * alpha), _gaussian_denoiser(start, x, 1.5)
    )
    with pytest.raises(ValueError, match="alpha > 0"):
        start.denoise(x, 0.0, 1.0)


def test_correct_first_gives_the_model_estimate_at_the_corrected_point() -> None:
    # For a denoiser D_G + c (s_ref / s)^2 the corrected point lies on the model's flow and the
    # restated estimate is the model's own there, though the model was evaluated once, elsewhere.
    from sciddpm.diffusion.gaussian import carry, correct_first, noise_at_1

    start = GaussianStart.fit(_anisotropic(), rank=5)
    shift = torch.tensor([0.3, -0.2, 0.1, 0.5, -0.4], dtype=F64)
    sched = build_scheduler({"type": "unipc", "timesteps": [0.5, 0.2]}, "ve", sigma_max=40.0)
    sched.set_timesteps(2)
    sigma = float(sched.process.sigma_ve(sched.timesteps[0].double()))

    def model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # x0-prediction, VE units
        return _gaussian_denoiser(start, x_t, sigma) + shift * (2.0 / sigma) ** 2

    x = carry(start, sched, noise_at_1(sched, noise_for((5,), 3, 0, 6).double()))
    t = torch.full((6,), float(sched.timesteps[0]), dtype=F64)
    corrected, restated = correct_first(start, sched, x, model(x, t))
    torch.testing.assert_close(restated, model(corrected, t), rtol=0, atol=1e-10)
    assert float((corrected - x).abs().max()) > 1e-3


@pytest.mark.parametrize(("dim", "sigma_to"), [(4, 1.0), (16, 5.0)])  # 7 % and 4 % nearer
def test_moving_the_x0_estimate_brings_samples_nearer_the_model_flow(dim, sigma_to) -> None:
    # What users get from correct_first's move: 10 UniPC steps from the corrected start end nearer
    # the exact flow of a mixture model with the moved estimate than with the one made at the
    # carried point, even at first levels near the data's scale where the Gaussian's gain is off.
    from sciddpm.diffusion.solvers import sample
    from sciddpm.diffusion.spacing import log_snr_sigmas

    # The 4-D test mixture and the 16-D benchmark mixture.
    gm = (
        GaussianMixture.random(4, 4, seed=3, spread=1.5)
        if dim == 4
        else GaussianMixture.random(16, 8, seed=0)
    )
    start = GaussianStart.fit(gm.sample(20_000, torch.Generator().manual_seed(5)))
    sigma_from = 80.0
    x = sigma_from * torch.randn(2000, dim, generator=torch.Generator().manual_seed(2), dtype=F64)
    exact = sample(gm.denoise, x, [*log_snr_sigmas(400, 2e-3, sigma_from), 0.0], "unipc", order=3)
    carried = start.transport(x, 1.0, sigma_from, sigma_to)
    kept = gm.denoise(carried, sigma_to)
    corrected = start.correct(carried, kept, 1.0, sigma_to, 1.0, sigma_from)
    moved = kept + start.denoise(corrected, 1.0, sigma_to) - start.denoise(carried, 1.0, sigma_to)
    sigmas = [*log_snr_sigmas(10, 2e-3, sigma_to), 0.0]

    def error(first: torch.Tensor) -> float:
        # The solver's first evaluation is the given estimate; the rest are the model's.
        def denoiser(x_t: torch.Tensor, sigma: float) -> torch.Tensor:
            calls.append(sigma)
            return first if len(calls) == 1 else gm.denoise(x_t, sigma)

        calls: list[float] = []
        out = sample(denoiser, corrected, sigmas, "unipc", order=3)
        return float((out - exact).pow(2).mean().sqrt())

    assert error(moved) < 0.98 * error(kept)
