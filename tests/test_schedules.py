"""A pipeline's fitted schedules (sciddpm.pipeline.schedules): kept, saved, picked by "fitted", adopted."""

from __future__ import annotations

import json
import warnings
from types import SimpleNamespace

import pytest
import torch

from sciddpm.diffusion.gaussian import GaussianStart
from sciddpm.pipeline import Pipeline
from sciddpm.pipeline.schedules import Schedules

FIT = {"n": 4, "reference_steps": 12, "iterations": 3}


def _pipe(seed: int) -> Pipeline:
    from tiny import TINY_UNET

    config = {
        "encoder": {"type": "identity"},
        "denoiser": TINY_UNET,
        "scheduler": {"type": "ddpm", "schedule": "cosine"},
    }
    torch.manual_seed(seed)
    pipe = Pipeline.from_config(config, data_shape=(1, 8, 8))
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # the zero-initialised output layer would make every prediction 0
        for p in pipe.ema.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return pipe.eval()


@pytest.fixture(scope="module")
def start() -> GaussianStart:
    data = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    return GaussianStart.fit(data, rank=8)


def test_a_fit_is_kept_and_sampled_by_name(start) -> None:
    pipe = _pipe(0)
    plain = pipe.optimize_timesteps(3, **FIT)
    carried = pipe.optimize_timesteps(3, "dpmpp_2m", start=start, **FIT)
    assert len(pipe.schedules) == 2 and pipe.schedules.start is start
    chosen = min((plain, carried), key=lambda r: r.rmse)
    expected = pipe.sample(2, steps=3, scheduler=chosen.scheduler, start=chosen.start, seed=4)
    torch.testing.assert_close(pipe.sample(2, steps=3, scheduler="fitted", seed=4), expected)
    # A second fit of the same solver and budget replaces the first.
    pipe.optimize_timesteps(3, **{**FIT, "iterations": 2})
    assert len(pipe.schedules) == 2


def test_fits_and_their_start_survive_save_and_load(tmp_path, start) -> None:
    pipe = _pipe(0)
    pipe.optimize_timesteps(3, start=start, **FIT)
    pipe.save(tmp_path / "model")
    assert (tmp_path / "model" / "gaussian_start.json").exists()
    loaded = Pipeline.load(tmp_path / "model")
    assert [e.scheduler for e in loaded.schedules] == [e.scheduler for e in pipe.schedules]
    torch.testing.assert_close(loaded.schedules.start.mean, start.mean)
    torch.testing.assert_close(
        loaded.sample(2, steps=3, scheduler="fitted", seed=1),
        pipe.sample(2, steps=3, scheduler="fitted", seed=1),
    )


def test_a_missing_fit_or_a_broken_saved_one_is_named(tmp_path, start) -> None:
    pipe = _pipe(0)
    with pytest.raises(
        ValueError, match=r"no fitted schedule for steps=3 \(fitted: none\); run pipe.optimize"
    ):
        pipe.sample(1, steps=3, scheduler="fitted")
    pipe.optimize_timesteps(3, **FIT)
    with pytest.raises(ValueError, match=r"no fitted schedule for steps=5 \(fitted: unipc at steps=3\)"):
        pipe.sample(1, steps=5, scheduler="fitted")
    pipe.optimize_timesteps(3, "euler", start=start, **FIT)
    directory = pipe.save(tmp_path / "model")
    (directory / "gaussian_start.json").unlink()
    with pytest.warns(UserWarning, match=r"has no gaussian_start\.json; those schedules are dropped"):
        reloaded = Pipeline.load(directory)
    assert [(e.solver, e.with_start) for e in reloaded.schedules] == [("unipc", False)]
    meta = json.loads((directory / "pipeline.json").read_text())
    meta["schedules"] = [{"scheduler": {}, "bogus": 1}]
    (directory / "pipeline.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="a saved fitted schedule is malformed"):
        Pipeline.load(directory)


def test_another_start_replaces_the_kept_one_and_its_fits(start) -> None:
    pipe = _pipe(0)
    pipe.optimize_timesteps(3, start=start, **FIT)
    pipe.optimize_timesteps(4, **FIT)
    other = GaussianStart.fit(
        3 + torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(5)), rank=8
    )
    with pytest.warns(UserWarning, match="dropped 1 fitted schedule"):
        pipe.optimize_timesteps(5, start=other, **FIT)
    assert pipe.schedules.start is other
    assert sorted((e.steps, e.with_start) for e in pipe.schedules) == [(4, False), (5, True)]


def test_a_similar_model_adopts_the_fits_with_its_own_start(start) -> None:
    source, target = _pipe(0), _pipe(7)
    source.optimize_timesteps(3, start=start, **FIT)
    source.optimize_timesteps(4, **FIT)
    # Without a start of its own the fit that expects one is left out, and said so.
    with pytest.warns(UserWarning, match="1 adopted fit\\(s\\) expect a Gaussian start"):
        copies = target.schedules.adopt(source.schedules, origin="runs/first")
    assert [(e.steps, e.origin) for e in copies] == [(4, "runs/first")] and target.schedules.start is None
    own = GaussianStart.fit(2 + torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(9)), rank=8)
    copies = target.schedules.adopt(source.schedules, origin="runs/first", start=own)
    assert len(target.schedules) == 2 and target.schedules.start is own  # never the source's start
    fitted = next(e for e in copies if e.with_start)
    out = target.sample(2, steps=3, scheduler="fitted", seed=3)
    torch.testing.assert_close(out, target.sample(2, steps=3, scheduler=fitted.scheduler, start=own, seed=3))
    # Its own later fit of the same kind replaces the adopted one, without a warning (same start).
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        target.optimize_timesteps(3, start=own, **FIT)
    assert sorted(e.origin for e in target.schedules) == ["runs/first", "this model"]


def test_the_library_is_empty_for_an_older_pipeline_file(tmp_path) -> None:
    pipe = _pipe(0)
    directory = pipe.save(tmp_path / "model")
    meta = json.loads((directory / "pipeline.json").read_text())
    del meta["schedules"]
    (directory / "pipeline.json").write_text(json.dumps(meta))
    assert len(Pipeline.load(directory).schedules) == 0
    assert repr(Schedules()) == "Schedules([])"


def test_fits_are_chosen_by_condition_and_guidance() -> None:
    from sciddpm.pipeline.schedules import FittedSchedule

    def fit(rmse, condition=None, guidance=1.0):
        spec = {"type": "unipc", "timesteps": [0.9, 0.5, 0.1]}
        return FittedSchedule(spec, rmse, 1.0, condition=condition, guidance_scale=guidance)

    schedules = Schedules([fit(0.1), fit(0.2, condition=3, guidance=2.0), fit(0.05, condition=4)])
    assert schedules.choose(3, condition=3, guidance_scale=2.0).rmse == 0.2
    assert schedules.choose(3).rmse == 0.1
    with pytest.warns(UserWarning, match="no schedule fitted for condition=7, guidance_scale=1.0"):
        assert schedules.choose(3, condition=7).rmse == 0.05
    import numpy as np

    assert schedules.choose(3, condition=np.int64(4)).rmse == 0.05  # a numpy scalar is its number


def test_a_fit_saved_before_lower_order_uneven_keeps_third_order(tmp_path) -> None:
    # Such fits were made with third order on every step; loading must not turn the rule on.
    saved = [
        {"scheduler": {"type": "unipc", "order": 3, "timesteps": [1.0, 0.5]}, "rmse": 0.1, "rmse_start": 0.2},
        {"scheduler": {"type": "dpmpp_2m", "timesteps": [1.0, 0.5]}, "rmse": 0.1, "rmse_start": 0.2},
    ]
    third, second = Schedules.load(tmp_path, saved)
    assert third.scheduler["lower_order_uneven"] is False
    assert "lower_order_uneven" not in second.scheduler  # 2M has no such field


def test_a_fit_saved_with_an_ignored_vp_field_loads_and_is_replaced_by_a_refit(tmp_path) -> None:
    # An earlier version kept beta_end on a VE fit and ignored it; this one refuses it.
    spec = {"type": "dpmpp_2m", "process": "ve", "beta_end": 0.02, "timesteps": [1.0, 0.5]}
    old = {"scheduler": {**spec, "beta_end": 0.012}, "rmse": 0.1, "rmse_start": 0.2}
    (loaded,) = Schedules.load(tmp_path, [old])
    assert loaded.scheduler == spec
    library = Schedules([loaded])
    refit = SimpleNamespace(
        scheduler={**spec, "timesteps": [1.0, 0.4]}, rmse=0.05, rmse_start=0.2, start=None, seconds=1.0
    )
    library.add(refit)  # an OptimizedSteps of the same spec and steps
    (kept,) = library
    assert kept.rmse == 0.05


def test_a_refit_on_a_ve_model_replaces_a_fit_saved_with_an_ignored_vp_field(tmp_path) -> None:
    from tiny import TINY_UNET

    config = {
        "encoder": {"type": "identity"},
        "denoiser": TINY_UNET,
        "scheduler": {"type": "euler", "process": "ve"},
    }
    pipe = Pipeline.from_config(config, data_shape=(1, 8, 8))
    spec = {**pipe.scheduler_spec("dpmpp_2m"), "timesteps": [1.0, 0.5]}
    old = {"scheduler": {**spec, "beta_end": 0.012}, "rmse": 0.1, "rmse_start": 0.2}  # as 0.1 saved it
    library = Schedules.load(tmp_path, [old])
    refit = SimpleNamespace(
        scheduler={**spec, "timesteps": [1.0, 0.4]}, rmse=0.05, rmse_start=0.2, start=None, seconds=1.0
    )
    library.add(refit)
    (kept,) = library
    assert kept.rmse == 0.05
