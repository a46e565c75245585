"""Step schedules optimised per model (sciddpm.diffusion.timesteps) on the closed-form Gaussian mixture."""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch

from sciddpm.diffusion.loop import sample_callable
from sciddpm.diffusion.mixture import GaussianMixture
from sciddpm.diffusion.processes import make_process
from sciddpm.diffusion.timesteps import optimize_timesteps, trajectory_rmse
from sciddpm.seeding import noise_for

F64 = torch.float64


@pytest.fixture(scope="module")
def mixture():
    gm = GaussianMixture.random(4, 4, seed=3, spread=1.5)
    return gm, gm.model(make_process("vp"), "eps")


@pytest.mark.parametrize("method", ["gradient", "derivative_free"])
def test_optimized_times_beat_every_standard_spacing_on_fresh_noise(mixture, method) -> None:
    _gm, model = mixture
    result = optimize_timesteps(
        model, (4,), "dpmpp_2m", steps=4, n=256, reference_steps=60, method=method,
        **({"max_evaluations": 300} if method == "derivative_free" else {"iterations": 60}),
    )  # fmt: skip
    times = result.timesteps
    assert len(times) == 4 and times[0] == pytest.approx(1.0, abs=1e-12)
    assert all(a > b > 0 for a, b in itertools.pairwise(times))
    assert result.rmse < result.rmse_start
    assert result.scheduler == {"type": "dpmpp_2m", "timesteps": times}
    # Held-out noise (another seed) against an accurate reference: the schedule generalises.
    x = noise_for((4,), 999, 0, 512).double()
    reference = sample_callable(model, x, {"type": "unipc", "order": 3, "spacing": "log_snr"}, 200, "eps")
    optimized = trajectory_rmse(model, x, reference, result.scheduler, 4)
    for spacing in ("trailing", "linspace", "log_snr", "karras"):
        standard = trajectory_rmse(model, x, reference, {"type": "dpmpp_2m", "spacing": spacing}, 4)
        assert optimized < standard, spacing


def test_the_returned_spec_samples_through_the_registry(mixture) -> None:
    _, model = mixture
    result = optimize_timesteps(model, (4,), "unipc", steps=3, n=32, reference_steps=40, iterations=10)
    x = sample_callable(model, (5, 4), result.scheduler, 3, "eps")
    assert x.shape == (5, 4) and torch.isfinite(x).all()
    # A fitted schedule keeps third order on every step (it measures each step's error) unless asked.
    assert result.scheduler["lower_order_uneven"] is False
    kept = optimize_timesteps(
        model,
        (4,),
        {"type": "dpmpp_3m", "lower_order_uneven": True},
        steps=3,
        n=8,
        reference_steps=20,
        iterations=2,
    )
    assert kept.scheduler["lower_order_uneven"] is True
    # Deterministic: the same calibration seed gives the same schedule.
    again = optimize_timesteps(model, (4,), "unipc", steps=3, n=32, reference_steps=40, iterations=10)
    assert again.timesteps == result.timesteps


def test_solver_options_do_not_reach_the_unipc_reference(mixture) -> None:
    # Heun's s_noise configures the solver being optimised, not the unipc reference run.
    _, model = mixture
    kwargs = {"steps": 3, "n": 8, "reference_steps": 20, "iterations": 5}
    with_option = optimize_timesteps(model, (4,), {"type": "heun", "s_noise": 1.0}, **kwargs)
    plain = optimize_timesteps(model, (4,), "heun", **kwargs)
    assert with_option.scheduler == {"type": "heun", "s_noise": 1.0, "timesteps": plain.timesteps}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scheduler": "ddim"}, "takes no user-given timesteps"),
        ({"scheduler": "euler_a"}, "is stochastic"),
        ({"steps": 1}, "steps must be >= 2"),
        ({"reference_steps": 10}, "must be well above steps=10"),
        ({"n": 0}, "n must be >= 1"),
        ({"method": "adam"}, "method must be 'auto', 'gradient' or 'derivative_free', got 'adam'"),
        ({"iterations": 0}, "iterations must be >= 1"),
        ({"learning_rate": 0.0}, "learning_rate must be > 0"),
        ({"batch_size": 0}, "batch_size must be >= 1 or None"),
    ],
)
def test_bad_requests_are_refused(mixture, kwargs, message) -> None:
    _, model = mixture
    with pytest.raises(ValueError, match=message):
        optimize_timesteps(model, (4,), **{"steps": 10, **kwargs})


@pytest.fixture(scope="module")
def pipe():
    from tiny import TINY_UNET

    from sciddpm.pipeline import Pipeline

    config = {
        "encoder": {"type": "identity"},
        "denoiser": TINY_UNET,
        "conditioner": {"type": "class_label", "dim": 8},
        "scheduler": {"type": "ddpm", "schedule": "cosine"},
    }
    torch.manual_seed(0)
    pipe = Pipeline.from_config(config, data_shape=(1, 8, 8), num_classes=3)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # the zero-initialised output layer would make every prediction 0
        for p in pipe.ema.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return pipe.eval()


def test_pipeline_denoiser_fn_reproduces_pipeline_sample(pipe) -> None:
    spec = pipe.scheduler_spec("unipc")
    assert spec["schedule"] == "cosine"  # the trained process is inherited
    model = pipe.denoiser_fn(2, guidance_scale=3.0)
    x = sample_callable(model, (4, 1, 8, 8), spec, 5, "x0", seed=7)
    expected = pipe.sample(4, 2, steps=5, scheduler="unipc", guidance_scale=3.0, seed=7)
    torch.testing.assert_close(pipe.encoder.decode(x), expected, rtol=0, atol=1e-5)


def test_pipeline_optimize_timesteps_gives_a_spec_pipeline_sample_takes(pipe) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the network passes gradients: no derivative-free fallback
        result = pipe.optimize_timesteps(3, condition=1, n=8, reference_steps=20, iterations=10)
    assert result.scheduler["type"] == "unipc" and result.scheduler["schedule"] == "cosine"
    # The training config's filled-in default (true) is not inherited: a fit keeps third order.
    assert result.scheduler["lower_order_uneven"] is False
    assert len(result.history) == 10
    assert result.rmse <= result.rmse_start
    out = pipe.sample(2, 1, steps=3, scheduler=result.scheduler)
    assert out.shape == (2, 1, 8, 8) and torch.isfinite(out).all()


def test_pipeline_sample_takes_a_start_fitted_on_encoded_data(pipe) -> None:
    from sciddpm.diffusion.gaussian import GaussianStart

    data = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    start = GaussianStart.fit(pipe.encoder.encode(data), rank=8)
    spec = pipe.scheduler_spec({"type": "unipc", "timesteps": [0.7, 0.4, 0.1]})
    out = pipe.sample(3, 1, steps=3, scheduler=spec, start=start, seed=2)
    again = pipe.sample(3, 1, steps=3, scheduler=spec, start=start, seed=2, batch_size=1)
    assert out.shape == (3, 1, 8, 8) and torch.isfinite(out).all()
    torch.testing.assert_close(out, again)
    assert not torch.allclose(out, pipe.sample(3, 1, steps=3, scheduler=spec, seed=2))
    # The same run (carried, corrected by the first evaluation) as sample_callable on denoiser_fn.
    model = pipe.denoiser_fn(1)
    x = sample_callable(model, (3, 1, 8, 8), spec, 3, "x0", seed=2, start=start)
    torch.testing.assert_close(pipe.encoder.decode(x), out, rtol=0, atol=1e-5)


def test_pipeline_gaussian_start_fits_the_encoded_source(pipe) -> None:
    from sciddpm.data import ArraySource
    from sciddpm.diffusion.gaussian import GaussianStart

    x = 3.0 + torch.randn(40, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(x)
    mask[0, 0, 0, 0] = 0  # a missing value enters as 0, as in training
    start = pipe.gaussian_start(ArraySource.from_array(x, mask=mask), n=40, rank=5)
    with torch.no_grad():
        expected = pipe.encoder.encode(x).double()
    expected[0, 0, 0, 0] = 0.0
    torch.testing.assert_close(start.mean, GaussianStart.fit(expected, rank=5).mean)
    torch.testing.assert_close(start.eigvals, GaussianStart.fit(expected, rank=5).eigvals)
    with pytest.raises(ValueError, match="n must be >= 2"):
        pipe.gaussian_start(ArraySource.from_array(x), n=1)


def test_restarts_search_from_more_starts_and_never_do_worse(mixture) -> None:
    _, model = mixture
    kwargs = {"steps": 3, "n": 64, "reference_steps": 40, "iterations": 10}
    once = optimize_timesteps(model, (4,), "unipc", **kwargs)
    thrice = optimize_timesteps(model, (4,), "unipc", restarts=3, **kwargs)
    assert thrice.rmse <= once.rmse
    assert thrice.model_evaluations > once.model_evaluations
    with pytest.raises(ValueError, match="restarts must be >= 1"):
        optimize_timesteps(model, (4,), "unipc", restarts=0, **kwargs)


def test_pool_calibration_keeps_the_large_errors_and_estimates_the_whole_pool(mixture) -> None:
    # n samples stratified from a pool: the calibration error of the best starting spacing matches
    # that spacing's RMS over every pool sample (the weights are right), and the chosen samples
    # hold most of the pool's largest errors, of which n plain draws hold about n / pool.
    from sciddpm.diffusion.timesteps import stratify_pool

    _, model = mixture
    n, pool, steps, seed = 200, 4000, 3, 7
    kwargs = {"steps": steps, "reference_steps": 60, "iterations": 1, "seed": seed}
    result = optimize_timesteps(model, (4,), "unipc", n=n, pool=pool, **kwargs)
    spec = {"type": "unipc", "spacing": result.start_spacing}
    x = noise_for((4,), seed, 0, pool).double()
    reference = sample_callable(model, x, {"type": "unipc", "order": 3, "spacing": "log_snr"}, 60, "eps")
    truth = trajectory_rmse(model, x, reference, spec, steps)
    assert abs(result.rmse_start - truth) < 0.05 * truth
    per_sample = (sample_callable(model, x, spec, steps, "eps") - reference).pow(2).mean(1)
    largest = set(torch.argsort(per_sample, descending=True)[: pool // 100].tolist())
    fine = {"type": "unipc", "order": 3, "spacing": "log_snr"}
    spacings = ("trailing", "linspace", "log_snr", "karras")
    chosen, weights = stratify_pool(model, x, {"type": "unipc"}, fine, spacings, steps, n, seed, "eps", None)
    assert len(chosen) == n and len(set(chosen.tolist())) == n
    assert float(weights.sum()) == pytest.approx(1.0)
    assert len(largest & set(chosen.tolist())) >= 0.8 * len(largest)


def test_pool_must_leave_a_choice(mixture) -> None:
    _, model = mixture
    with pytest.raises(ValueError, match="pool=100 must be at least 2 \\* n = 128"):
        optimize_timesteps(model, (4,), "unipc", steps=3, n=64, pool=100, reference_steps=40)


def test_max_seconds_returns_the_best_schedule_found_so_far(mixture) -> None:
    _, model = mixture
    kwargs = {"steps": 4, "n": 64, "reference_steps": 60, "max_evaluations": 400, "method": "derivative_free"}
    full = optimize_timesteps(model, (4,), "dpmpp_2m", **kwargs)
    cut = optimize_timesteps(model, (4,), "dpmpp_2m", max_seconds=0.0, **kwargs)
    assert not full.timed_out and cut.timed_out
    # Out of time at the search's first run: the best starting spacing, no worse.
    assert cut.rmse == cut.rmse_start == full.rmse_start and len(cut.history) == 0
    assert cut.timesteps[0] == pytest.approx(1.0) and len(cut.timesteps) == 4
    # A budget that ends mid-search follows the full search's path (it is deterministic) and stops
    # on it: between the start and the full result.
    some = optimize_timesteps(model, (4,), "dpmpp_2m", max_seconds=0.3, **kwargs)
    assert full.rmse - 1e-12 <= some.rmse <= some.rmse_start
    assert some.history == full.history[: len(some.history)]
    with pytest.raises(ValueError, match="max_seconds must be >= 0"):
        optimize_timesteps(model, (4,), "dpmpp_2m", max_seconds=-1.0, **kwargs)


def test_a_model_without_gradients_falls_back_to_the_derivative_free_search(mixture) -> None:
    _, model = mixture

    @torch.no_grad()
    def frozen(x_t, t):
        return model(x_t, t)

    kwargs = {"steps": 3, "n": 32, "reference_steps": 40, "max_evaluations": 40}
    with pytest.warns(UserWarning, match="passes no gradient"):
        fallback = optimize_timesteps(frozen, (4,), "unipc", **kwargs)
    plain = optimize_timesteps(model, (4,), "unipc", method="derivative_free", **kwargs)
    assert fallback.timesteps == plain.timesteps and len(fallback.history) > 2
    with pytest.raises(ValueError, match="use method='derivative_free'"):
        optimize_timesteps(frozen, (4,), "unipc", method="gradient", **kwargs)


def test_the_gradient_search_costs_iterations_not_thousands_of_runs(mixture) -> None:
    _, model = mixture
    kwargs = {"steps": 4, "n": 128, "reference_steps": 60}
    result = optimize_timesteps(model, (4,), "dpmpp_2m", iterations=25, **kwargs)
    assert len(result.history) == 25 and result.rmse < result.rmse_start
    batched = optimize_timesteps(model, (4,), "dpmpp_2m", iterations=25, batch_size=50, **kwargs)
    assert batched.timesteps == pytest.approx(result.timesteps, rel=1e-6)


def test_progress_reports_the_search_with_its_error(mixture, capsys) -> None:
    _, model = mixture
    optimize_timesteps(model, (4,), "unipc", steps=3, n=16, reference_steps=30, iterations=5, progress=True)
    err = capsys.readouterr().err
    assert "optimize_timesteps: " in err and "iterations" in err and "rmse=" in err


def test_an_interrupted_search_closes_its_progress_report(mixture, monkeypatch) -> None:
    import sciddpm.diffusion.timesteps as module
    from sciddpm.progress import LineProgress

    made, closed = [], []

    class Recording(LineProgress):
        def __init__(self, *args) -> None:
            super().__init__(*args)
            made.append(self)

        def close(self) -> None:
            closed.append(self.n)
            super().close()

    monkeypatch.setattr(module, "progress_bar", lambda total, desc, *a, **k: Recording(total, desc))
    _, model = mixture

    def interrupted(x_t, t):  # the user presses Ctrl-C a few runs into the search
        if made and made[0].n >= 3:
            raise KeyboardInterrupt
        return model(x_t, t)

    with pytest.raises(KeyboardInterrupt):
        optimize_timesteps(interrupted, (4,), "unipc", steps=3, n=16, reference_steps=30, iterations=50)
    assert closed == [3]


def test_fitted_shifts_are_kept_only_where_they_lower_the_error(mixture) -> None:
    _, model = mixture
    kwargs = {"steps": 3, "n": 128, "reference_steps": 60, "iterations": 20}
    times_only = optimize_timesteps(model, (4,), "unipc", **kwargs)
    shifted = optimize_timesteps(model, (4,), "unipc", shifts=True, **kwargs)
    assert shifted.rmse <= times_only.rmse and len(shifted.history) == 40
    assert shifted.shifts is not None and shifted.scheduler["shifts"] == shifted.shifts
    assert len(shifted.shifts) == 3 and shifted.shifts[0] == 0.0
    x = noise_for((4,), 999, 0, 256).double()
    reference = sample_callable(model, x, {"type": "unipc", "order": 3, "spacing": "log_snr"}, 200, "eps")
    # Fresh noise: the shifted schedule generalises (at 3 steps it cuts the error).
    assert trajectory_rmse(model, x, reference, shifted.scheduler, 3) < trajectory_rmse(
        model, x, reference, times_only.scheduler, 3
    )
    # A fitted spec given back to the search is refitted, its old shifts dropped.
    again = optimize_timesteps(model, (4,), shifted.scheduler, **kwargs)
    assert again.shifts is None and "shifts" not in again.scheduler


def test_max_evaluations_given_to_the_gradient_search_is_named(mixture) -> None:
    _, model = mixture
    with pytest.warns(UserWarning, match="max_evaluations=40 bounds the derivative-free search"):
        optimize_timesteps(
            model, (4,), "unipc", steps=3, n=16, reference_steps=30, iterations=2, max_evaluations=40
        )
    with pytest.raises(ValueError, match="shifts=True needs the gradient search"):
        optimize_timesteps(
            model, (4,), "unipc", steps=3, n=16, reference_steps=30, method="derivative_free", shifts=True
        )
