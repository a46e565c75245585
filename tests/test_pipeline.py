"""Pipeline building, sampling determinism, save/load and the trainer, end to end on CPU."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from tiny import TINY_UNET

from sciddpm.config import ConfigError, load_run
from sciddpm.data import ArraySource
from sciddpm.persistence import file_sha256
from sciddpm.pipeline import Pipeline
from sciddpm.seeding import noise_for
from sciddpm.training.stage import lr_at
from sciddpm.training.trainer import Trainer, train


def _run(**train):
    return {
        "data": {"type": "digits", "size": 8, "classes": [0, 1]},
        "pipeline": {
            "encoder": {"type": "standardize"},
            "denoiser": TINY_UNET,
            "conditioner": {"type": "class_label", "dim": 8},
            "scheduler": {"type": "ddpm"},
        },
        "train": {
            "steps": 6,
            "batch_size": 8,
            "warmup_steps": 2,
            "log_every": 2,
            "checkpoint_every": 3,
            **train,
        },
    }


def test_from_config_sizes_components_from_the_data():
    x = np.random.default_rng(0).normal(5.0, 2.0, size=(12, 3, 20, 14)).astype(np.float32)
    pipe = Pipeline.from_config(
        {"denoiser": TINY_UNET, "encoder": {"type": "standardize"}}, ArraySource.from_array(x)
    )
    unet = pipe.config.denoiser.params
    assert (unet["dims"], unet["in_channels"]) == (2, 3)
    assert torch.allclose(pipe.encoder.mean, torch.tensor(x.mean(axis=(0, 2, 3))), atol=1e-4)
    samples = pipe.sample(2, steps=3, seed=0)
    assert samples.shape == (2, 3, 20, 14)


def test_contradicting_denoiser_setting_is_an_error():
    x = np.zeros((4, 2, 16), dtype=np.float32) + np.arange(16, dtype=np.float32)
    with pytest.raises(ConfigError, match=r"pipeline.denoiser.in_channels: is 5 but the data"):
        Pipeline.from_config({"denoiser": {**TINY_UNET, "in_channels": 5}}, ArraySource.from_array(x))


def test_noise_is_per_sample_and_independent_of_batching():
    full = noise_for((1, 4, 4), seed=3, start=0, count=6)
    tail = noise_for((1, 4, 4), seed=3, start=4, count=2)
    assert torch.equal(full[4:], tail)
    assert not torch.equal(full[0], noise_for((1, 4, 4), seed=4, start=0, count=1)[0])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    pipe = train(_run(), out, progress=False)
    return pipe, out


def test_sampling_does_not_depend_on_batch_size(trained):
    pipe, _ = trained
    for scheduler in ("ddim", "ddpm"):
        a = pipe.sample(
            5, [0, 1, 0, 1, 1], steps=4, seed=7, batch_size=5, scheduler=scheduler, guidance_scale=2.0
        )
        b = pipe.sample(
            5, [0, 1, 0, 1, 1], steps=4, seed=7, batch_size=2, scheduler=scheduler, guidance_scale=2.0
        )
        assert torch.allclose(a, b, atol=1e-5), scheduler


def test_save_load_gives_identical_samples(trained, tmp_path):
    pipe, out = trained
    loaded = Pipeline.load(out)
    a = pipe.sample(4, 1, steps=5, seed=1, guidance_scale=1.5)
    b = loaded.sample(4, 1, steps=5, seed=1, guidance_scale=1.5)
    assert torch.equal(a, b)
    meta = json.loads((out / "pipeline.json").read_text())
    assert meta["sciddpm_version"] and meta["plugins"]["sciddpm"]
    card = (out / "README.md").read_text()
    assert "synthetic" in card and "sha256" in card


def test_an_error_while_sampling_closes_the_progress_report(trained, monkeypatch):
    import sciddpm.pipeline.pipeline as module
    from sciddpm.progress import LineProgress

    made = []

    class Recording(LineProgress):
        def close(self) -> None:
            made.append(self.n)
            super().close()

    monkeypatch.setattr(module, "progress_bar", lambda total, desc, *a, **k: Recording(total, desc))

    def stop(step, x_t, x0):  # the user interrupts, or the model raises, mid-run
        if step == 2:
            raise KeyboardInterrupt

    pipe, _ = trained
    with pytest.raises(KeyboardInterrupt):
        pipe.sample(2, 1, steps=4, seed=0, callback=stop)
    assert made == [2]  # closed once, after the two evaluations made


def test_a_saved_non_vp_pipeline_with_ignored_vp_fields_still_loads(tmp_path):
    # Earlier versions accepted (and ignored) VP fields on a VE scheduler; they are refused now,
    # so loading drops them rather than locking the user out of their model.
    x = np.random.default_rng(0).normal(size=(8, 1, 8, 8)).astype(np.float32)
    spec = {"type": "euler", "process": "ve"}
    pipe = Pipeline.from_config({"denoiser": TINY_UNET, "scheduler": spec}, ArraySource.from_array(x))
    pipe.save(tmp_path)
    meta = json.loads((tmp_path / "pipeline.json").read_text())
    meta["pipeline"]["scheduler"].update(beta_end=0.012, zero_terminal_snr=True)
    (tmp_path / "pipeline.json").write_text(json.dumps(meta))
    loaded = Pipeline.load(tmp_path)
    assert loaded.config.scheduler.params["beta_end"] == 0.02
    assert torch.equal(loaded.sample(2, steps=3, seed=1), pipe.sample(2, steps=3, seed=1))


def test_a_scheduler_on_another_process_is_refused_for_the_process_not_an_inherited_field():
    x = np.random.default_rng(0).normal(size=(4, 1, 8, 8)).astype(np.float32)
    spec = {"type": "ddpm", "schedule": "cosine", "beta_end": 0.012}
    pipe = Pipeline.from_config({"denoiser": TINY_UNET, "scheduler": spec}, ArraySource.from_array(x))
    with pytest.raises(ValueError, match=r"runs the 've' process, but this model was trained on 'vp'"):
        pipe.scheduler_for({"type": "euler", "process": "ve"})
    assert pipe.scheduler_spec("euler")["schedule"] == "cosine"  # the same process inherits it


def test_samples_are_in_physical_units(trained):
    pipe, _ = trained
    samples = pipe.sample(8, [0, 1] * 4, steps=10, seed=0)
    # The digits live in 0..16; an unfitted or missing decode would leave values near N(0, 1).
    assert 2.0 < float(samples.mean()) < 10.0


def test_log_has_per_timestep_bins_and_lr_schedule(trained):
    _, out = trained
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 6]
    assert len(records[0]["loss_by_t"]) == 10
    assert all(np.isfinite(r["loss"]) for r in records)


def test_lr_schedule_warms_up_then_decays():
    cfg = load_run(_run(steps=100, warmup_steps=10, lr=1.0)).train
    lrs = [lr_at(s, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))
    assert lrs[-1] < 0.01


def test_the_vae_and_clip_stages_share_the_trainers_schedule():
    from sciddpm.components.clip import ClipConditionerConfig
    from sciddpm.components.vae import VAEConfig

    train_cfg = load_run(_run(steps=40, warmup_steps=5, lr=0.5)).train
    for stage in (
        VAEConfig(steps=40, warmup_steps=5, lr=0.5),
        ClipConditionerConfig(steps=40, warmup_steps=5, lr=0.5),
    ):
        assert [lr_at(s, stage) for s in range(40)] == [lr_at(s, train_cfg) for s in range(40)]


def _killed_at(trainer: Trainer, step: int) -> Trainer:
    """``trainer`` run until it is interrupted while computing the step after ``step``."""
    backward = trainer._backward

    def interrupted():
        if trainer.step == step:
            raise KeyboardInterrupt
        return backward()

    trainer._backward = interrupted
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    checkpoints = sorted(p.name for p in (trainer.out / "checkpoints").iterdir())
    assert checkpoints[-1] == f"step_{step:08d}", checkpoints
    return trainer


def test_resume_continues_step_count_lr_and_matches_an_uninterrupted_run(tmp_path):
    whole = Trainer(_run(steps=6), tmp_path / "whole", progress=False)
    whole.fit()
    # Killed during step 4, after the step-3 checkpoint, then resumed to step 6.
    part = _killed_at(Trainer(_run(steps=6), tmp_path / "part", progress=False), step=3)
    resumed = Trainer(_run(steps=6), tmp_path / "part", progress=False)
    resumed.fit(resume=True)
    assert resumed.step == 6 and part.step == 3
    for (k, a), b in zip(whole.pipe.state_dict().items(), resumed.pipe.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), k


def test_a_run_saved_with_an_ignored_vp_field_resumes(tmp_path):
    # A VE run from an earlier version that carried (and ignored) beta_end: its checkpoint must
    # resume once the run file drops the field this version refuses.
    run = _run(steps=4, checkpoint_every=2)
    run["pipeline"]["scheduler"] = {"type": "euler", "process": "ve"}
    _killed_at(Trainer(run, tmp_path, progress=False), step=2)
    (checkpoint,) = (tmp_path / "checkpoints").iterdir()
    sums = json.loads((checkpoint / "checksums.json").read_text())
    for name in ("trainer.json", "pipeline.json"):
        meta = json.loads((checkpoint / name).read_text())
        section = meta["run"]["pipeline"] if name == "trainer.json" else meta["pipeline"]
        section["scheduler"]["beta_end"] = 0.012
        (checkpoint / name).write_text(json.dumps(meta))
        sums[name] = file_sha256(checkpoint / name)
    (checkpoint / "checksums.json").write_text(json.dumps(sums))
    resumed = Trainer(run, tmp_path, progress=False)
    resumed.fit(resume=True)
    assert resumed.step == 4


def test_resume_with_a_different_config_lists_the_fields(trained, tmp_path):
    _, out = trained
    with pytest.raises(ValueError, match=r"train.batch_size \(8 -> 4\)"):
        train(_run(batch_size=4), out, resume=True, progress=False)


def test_new_run_refuses_to_overwrite_a_run(trained):
    _, out = trained
    with pytest.raises(FileExistsError, match="--resume"):
        train(_run(), out, progress=False)


def test_load_reports_missing_or_mismatched_weights(trained, tmp_path):
    from safetensors.torch import load_file, save_file

    _, out = trained
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(out, broken, ignore=shutil.ignore_patterns("checkpoint*"))
    (broken / "ema.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"ema\.safetensors is missing"):
        Pipeline.load(broken)
    shutil.copy(out / "ema.safetensors", broken / "ema.safetensors")
    weights = load_file(str(broken / "weights.safetensors"))
    key = next(k for k in weights if k.startswith("denoiser.") and weights[k].ndim > 1)
    weights[key] = torch.zeros(3, 3)
    save_file(weights, str(broken / "weights.safetensors"))
    with pytest.raises(ValueError, match=rf"tensor '{key}' has shape \(3, 3\)"):
        Pipeline.load(broken)
    del weights[key]
    save_file(weights, str(broken / "weights.safetensors"))
    with pytest.raises(ValueError, match=rf"lacks tensor '{key}'"):
        Pipeline.load(broken)


def test_vp_only_scheduler_refuses_a_model_trained_on_another_process():
    pipe = Pipeline.from_config(
        {"denoiser": TINY_UNET, "scheduler": {"type": "euler", "process": "edm"}}, data_shape=(1, 8)
    )
    assert pipe.sample(1, steps=2, scheduler="heun").shape == (1, 1, 8)
    with pytest.raises(ValueError, match=r"trained with process='edm'; use a solver scheduler"):
        pipe.sample(1, steps=2, scheduler="ddim")


def test_every_scheduler_round_trips_through_save_and_load(tmp_path):
    from sciddpm.registry import get_registry

    for name in get_registry().names("scheduler"):
        pipe = Pipeline.from_config({"denoiser": TINY_UNET, "scheduler": {"type": name}}, data_shape=(1, 8))
        pipe.save(tmp_path / name.replace("/", "_"))
        loaded = Pipeline.load(tmp_path / name.replace("/", "_"))
        assert loaded.config == pipe.config, name
        assert torch.equal(pipe.sample(2, steps=3, seed=0), loaded.sample(2, steps=3, seed=0)), name


def test_one_condition_or_n_of_them():
    from sciddpm.pipeline.pipeline import is_per_sample

    assert not is_per_sample(3, 2) and not is_per_sample("a handwritten three", 2)
    assert not is_per_sample({"static": np.zeros((1, 4, 4)), "time": np.zeros(4)}, 2)  # one structured
    assert is_per_sample([0, 1], 2) and is_per_sample(torch.tensor([0, 1]), 2)
    with pytest.raises(ValueError, match="got 3 conditions for n=2 samples"):
        is_per_sample([0, 1, 2], 2)


class _OrderedSource(ArraySource):
    """A source that asks the trainer for its own epoch order and records what is read."""

    def __init__(self, x: np.ndarray, order: list[int]) -> None:
        base = ArraySource.from_array(x)
        self.__dict__.update(base.__dict__)
        self.order, self.read = order, []

    def epoch_order(self, epoch: int, seed: int) -> list[int]:
        return self.order

    def __getitem__(self, index: int):
        self.read.append(index)
        return super().__getitem__(index)


def test_trainer_visits_the_sources_epoch_order_and_refuses_a_bad_one(tmp_path):
    x = np.random.default_rng(0).normal(size=(8, 1, 8, 8)).astype(np.float32)
    run = {"pipeline": {"denoiser": TINY_UNET}, "train": {"steps": 3, "batch_size": 4, "checkpoint_every": 0}}
    order = [5, 2, 7, 0, 1, 6, 3, 4]
    source = _OrderedSource(x, order)
    trainer = Trainer(run, tmp_path / "ok", source=source, progress=False)
    source.read.clear()  # fitting the encoder read every sample
    trainer.fit()
    assert source.read == order + order[:4]  # step 3 starts the next epoch
    bad = _OrderedSource(x, [0, 1, 2, 3, 4, 5, 6, 6])
    with pytest.raises(
        ValueError, match=r"epoch_order\(0, seed\) must return every index 0\.\.7 exactly once"
    ):
        Trainer(run, tmp_path / "bad", source=bad, progress=False).fit()


def test_a_sampling_spec_that_changes_the_process_parameters_keeps_the_noise_levels() -> None:
    pipe = Pipeline.from_config(
        {"denoiser": {**TINY_UNET, "prediction": "edm"}, "scheduler": {"type": "heun", "process": "edm"}},
        data_shape=(1, 8),
    )
    seen = []
    pipe.ema["denoiser"].register_forward_pre_hook(lambda module, args: seen.append(args[1].clone()))
    sched = pipe.scheduler_for({"type": "euler", "rho": 3.0})
    pipe.sample(2, steps=4, scheduler=sched)
    expected = [sched.process.sigma(t).log().float() / 4 for t in sched.timesteps]
    torch.testing.assert_close(torch.stack([s[0] for s in seen]), torch.stack(expected))
    with pytest.raises(ValueError, match="runs the 've' process, but this model was trained on 'edm'"):
        pipe.sample(1, steps=2, scheduler={"type": "euler", "process": "ve"})
