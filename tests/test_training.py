"""Training that scales and never loses work: accumulation, DDP, kill/resume, checkpoint safety."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny import TINY_UNET

from sciddpm.training.checkpoint import find_checkpoint, list_checkpoints
from sciddpm.training.trainer import NonFiniteLossError, Trainer

RUN = {
    "data": {"type": "digits", "classes": [0, 1]},
    "pipeline": {
        "encoder": {"type": "standardize"},
        "denoiser": {**TINY_UNET, "dropout": 0.1},
        "conditioner": {"type": "class_label", "dim": 8},
    },
    "train": {
        "steps": 6,
        "batch_size": 8,
        "warmup_steps": 2,
        "log_every": 1,
        "checkpoint_every": 2,
        "keep_checkpoints": 2,
    },
}


def _run(**train):
    return {**RUN, "train": {**RUN["train"], **train}}


def _weights(pipe) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in pipe.state_dict().items()}


def _assert_close(a, b, atol):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=atol), key


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    # With dropout 0.1: its masks are keyed to the samples' run positions, not the micro-batch split.
    run = _run(**{"steps": 3, "checkpoint_every": 0})
    assert run["pipeline"]["denoiser"]["dropout"] == 0.1
    one = Trainer(run, tmp_path / "one", progress=False)
    one.fit()
    two = Trainer({**run, "train": {**run["train"], "grad_accum": 2}}, tmp_path / "two", progress=False)
    assert two.micro_batch == 4
    two.fit()
    _assert_close(_weights(one.pipe), _weights(two.pipe), atol=1e-5)


def test_worker_processes_read_the_same_samples_in_the_same_order(tmp_path):
    # num_workers reads ahead in other processes; the run must not notice, a resume included.
    import shutil

    run = _run(**{"steps": 4, "checkpoint_every": 2, "grad_accum": 2})
    plain = Trainer(run, tmp_path / "plain", progress=False)
    plain.fit()
    with_workers = _run(**{**run["train"], "num_workers": 2})
    workers = Trainer(with_workers, tmp_path / "workers", progress=False)
    workers.fit()
    _assert_close(_weights(plain.pipe), _weights(workers.pipe), atol=0)
    # Resume from step 2 (as after a kill): the workers start reading at step 2's samples.
    shutil.rmtree(list_checkpoints(tmp_path / "workers")[-1])
    resumed = Trainer(with_workers, tmp_path / "workers", progress=False, resume=True)
    assert resumed.step == 0 and resumed.fit(resume=True) is resumed.pipe
    _assert_close(_weights(plain.pipe), _weights(resumed.pipe), atol=0)


def test_batch_must_split_evenly_over_micro_batches(tmp_path):
    with pytest.raises(ValueError, match=r"batch_size=8 must be divisible by ranks x grad_accum = 1 x 3"):
        Trainer(_run(grad_accum=3), tmp_path, progress=False)


def test_checkpoints_rotate_and_hold_a_manifest(tmp_path):
    trainer = Trainer(_run(), tmp_path, progress=False)
    trainer.fit()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000004", "step_00000006"]
    manifest = json.loads((tmp_path / "run_manifest.json").read_text())
    assert manifest["config"]["train"]["steps"] == 6
    assert manifest["data"]["sha256"] and manifest["sciddpm_version"] and manifest["device"] == "cpu"


def test_truncated_latest_checkpoint_falls_back_with_a_warning(tmp_path):
    Trainer(_run(), tmp_path, progress=False).fit()
    latest = list_checkpoints(tmp_path)[-1]
    weights = latest / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.warns(
        RuntimeWarning, match=r"step_00000006.*weights\.safetensors does not match its checksum"
    ):
        assert find_checkpoint(tmp_path).name == "step_00000004"
    resumed = Trainer(_run(steps=8), tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"train\.steps \(6 -> 8\)"), pytest.warns(RuntimeWarning):
        resumed.fit(resume=True)  # the config guard still applies after the fallback


def test_nonfinite_steps_are_skipped_counted_and_stop_training(tmp_path, monkeypatch):
    trainer = Trainer(_run(steps=12, max_nonfinite=3, checkpoint_every=1), tmp_path, progress=False)
    real = trainer.micro_loss
    poisoned = {2, 5, 6, 7}

    def micro_loss(step, micro):
        loss, per_sample, t = real(step, micro)
        return (loss * float("nan") if step in poisoned else loss), per_sample, t

    monkeypatch.setattr(trainer, "micro_loss", micro_loss)
    with pytest.raises(NonFiniteLossError, match=r"3 steps in a row.*learning rate.*normalisation"):
        trainer.fit()
    assert trainer.skipped == 4
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[2]["skipped_steps"] == 1
    for checkpoint in list_checkpoints(tmp_path):
        for name, tensor in load_file(str(checkpoint / "weights.safetensors")).items():
            assert torch.isfinite(tensor).all(), (checkpoint.name, name)


def _cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCIDDPM_")}
    env["OMP_NUM_THREADS"] = "1"
    return env


def _write_run(path: Path, **train) -> Path:
    from sciddpm.config import dump_run, load_run

    dump_run(load_run(_run(**train)), path)
    return path


def test_kill_minus_nine_then_resume_equals_an_uninterrupted_run(tmp_path):
    run_file = _write_run(
        tmp_path / "run.toml", steps=400, checkpoint_every=25, log_every=50, keep_checkpoints=2
    )
    whole = Trainer(run_file, tmp_path / "whole", progress=False)
    whole.fit()

    cmd = [
        sys.executable,
        "-m",
        "sciddpm",
        "train",
        str(run_file),
        "--out",
        str(tmp_path / "killed"),
        "--no-progress",
    ]
    proc = subprocess.Popen(cmd, env=_cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list_checkpoints(tmp_path / "killed") and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (tmp_path / "killed" / "pipeline.json").exists()

    resume = subprocess.run([*cmd, "--resume"], env=_cli_env(), capture_output=True, text=True)
    assert resume.returncode == 0, resume.stderr
    for name, live in (("weights", whole.pipe.state_dict_no_ema()), ("ema", whole.pipe.ema.state_dict())):
        _assert_close(dict(live), load_file(str(tmp_path / "killed" / f"{name}.safetensors")), atol=1e-6)


def test_torchrun_two_ranks_match_one_process(tmp_path):
    run_file = _write_run(tmp_path / "run.toml", steps=10, checkpoint_every=5, log_every=1, lr=3e-3)
    env = _cli_env()
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "sciddpm",
        "train",
        str(run_file),
        "--out",
        str(tmp_path / "ddp"),
        "--no-progress",
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]  # includes the trainer's check that ranks agree
    assert "2 ranks x 1 micro-batches x 4 samples = batch_size 8" in out.stdout
    single = Trainer(run_file, tmp_path / "single", progress=False)
    single.fit()
    ddp = load_file(str(tmp_path / "ddp" / "weights.safetensors"))
    for key, tensor in single.pipe.state_dict_no_ema().items():
        # The same computation, dropout (0.1) included: its masks are keyed to the samples' positions.
        assert torch.allclose(tensor, ddp[key], atol=2e-5), key
    log = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log]
    assert len(losses) == 10 and sum(losses[-3:]) < sum(losses[:3])


def test_broadcast_from_rank0_gives_every_rank_rank0s_weights(tmp_path):
    # What the VAE and CLIP stages do after fitting: ranks that fitted different models agree.
    script = tmp_path / "ranks.py"
    script.write_text(
        "import os, torch\n"
        "import torch.distributed as dist\n"
        "from safetensors.torch import save_file\n"
        "from sciddpm.training.distributed import broadcast_from_rank0\n"
        "dist.init_process_group('gloo')\n"
        "rank = dist.get_rank()\n"
        "torch.manual_seed(rank)\n"
        "m = torch.nn.BatchNorm1d(3)\n"
        "m.weight.data.normal_(); m.running_mean.normal_()\n"
        "broadcast_from_rank0(m)\n"
        "save_file(m.state_dict(), os.environ['OUT'] + f'/{rank}.safetensors')\n"
        "dist.destroy_process_group()\n"
    )
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    out = subprocess.run(
        cmd, env={**_cli_env(), "OUT": str(tmp_path)}, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    ranks = [load_file(str(tmp_path / f"{r}.safetensors")) for r in (0, 1)]
    torch.manual_seed(0)
    expected = torch.nn.BatchNorm1d(3)
    expected.weight.data.normal_()
    expected.running_mean.normal_()
    for key, tensor in expected.state_dict().items():
        assert torch.equal(ranks[0][key], tensor) and torch.equal(ranks[1][key], tensor), key


def test_dry_run_reports_and_writes_nothing(tmp_path):
    run_file = _write_run(tmp_path / "run.toml")
    out = subprocess.run(
        [sys.executable, "-m", "sciddpm", "train", str(run_file), "--out", str(tmp_path / "x"), "--dry-run"],
        env=_cli_env(),
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert "is valid; nothing was written" in out.stdout
    assert "parameters:" in out.stdout and "seconds per step:" in out.stdout and "MiB" in out.stdout
    assert not (tmp_path / "x").exists()


def test_bf16_autocast_trains(tmp_path):
    trainer = Trainer(_run(steps=3, checkpoint_every=0, precision="bf16"), tmp_path, progress=False)
    seen = []
    real = trainer.pipe.denoiser.forward

    def forward(*args, **kwargs):
        out = real(*args, **kwargs)
        seen.append(out.dtype)
        return out

    trainer.pipe.denoiser.forward = forward
    trainer.fit()
    assert torch.bfloat16 in seen and trainer.skipped == 0
    assert all(torch.isfinite(p).all() for p in trainer.pipe.parameters())


def test_min_snr_weighting_reaches_the_loss(tmp_path):
    run = _run(steps=1, checkpoint_every=0)
    run["pipeline"] = {**run["pipeline"], "scheduler": {"type": "ddpm", "loss_weighting": "min_snr"}}
    trainer = Trainer(run, tmp_path, progress=False)
    loss, per_sample, t = trainer.micro_loss(0, 0)
    weight = trainer.pipe.scheduler.loss_weight(t, "v")  # TINY_UNET predicts v
    assert not torch.allclose(weight, torch.ones_like(weight))
    torch.testing.assert_close(loss, (per_sample * weight).mean())


def test_a_python_api_run_can_be_rerun_from_its_run_file(tmp_path):
    # train(run, out, source=...) used to write a run.toml without [data].
    import numpy as np

    from sciddpm.config import load_run
    from sciddpm.data import ArraySource, ArraySourceConfig

    x = np.random.default_rng(0).normal(size=(16, 1, 6)).astype(np.float32)
    np.save(tmp_path / "fields.npy", x)
    run = {"pipeline": {"denoiser": TINY_UNET}, "train": {"steps": 2, "batch_size": 4, "checkpoint_every": 0}}
    from_file = ArraySource(ArraySourceConfig(path=str(tmp_path / "fields.npy")))
    Trainer(run, tmp_path / "a", source=from_file, progress=False).fit()
    saved = load_run(tmp_path / "a" / "run.toml")
    assert saved.data.type == "sciddpm/array" and saved.data.params["path"] == str(tmp_path / "fields.npy")
    again = Trainer(tmp_path / "a" / "run.toml", tmp_path / "b", progress=False)  # the CLI's way in
    assert len(again.source) == 16
    Trainer(run, tmp_path / "c", source=ArraySource.from_array(x), progress=False).fit()
    text = (tmp_path / "c" / "run.toml").read_text()
    assert (
        text.startswith("# The data were given from Python: ArraySource")
        and "'<in-memory array>'" not in text
    )
    assert '"origin": "<in-memory array>"' in text and load_run(tmp_path / "c" / "run.toml").data is None
