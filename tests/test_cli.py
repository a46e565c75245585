"""The command line end to end: train, sample, resume, and clean one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sciddpm.cli.demo import DEMO_RUN
from sciddpm.config import load_run

RUN_TOML = """
[data]
type = "digits"
classes = [3, 7]

[pipeline.encoder]
type = "standardize"

[pipeline.denoiser]
type = "unet"
channels = [8, 16]
blocks_per_level = 1
groups = 4
heads = 1
prediction = "v"

[pipeline.conditioner]
type = "class_label"
dim = 8

[train]
steps = 4
batch_size = 8
warmup_steps = 1
log_every = 2
checkpoint_every = 2
"""


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCIDDPM_")}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([sys.executable, "-m", "sciddpm", *args], capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    (root / "run.toml").write_text(RUN_TOML)
    out = _cli("train", str(root / "run.toml"), "--out", str(root / "run"), "--no-progress")
    assert out.returncode == 0, out.stderr
    return root


def test_train_writes_pipeline_log_and_checkpoint(run_dir):
    run = run_dir / "run"
    for name in (
        "pipeline.json",
        "weights.safetensors",
        "ema.safetensors",
        "README.md",
        "metrics.jsonl",
        "run.toml",
    ):
        assert (run / name).is_file(), name
    assert (run / "checkpoints" / "step_00000004" / "trainer.safetensors").is_file()
    manifest = json.loads((run / "run_manifest.json").read_text())
    assert manifest["data"]["sha256"] and manifest["torch_version"] and manifest["seed"] == 0
    assert load_run(run / "run.toml") == load_run(run_dir / "run.toml")


def test_sample_npy_has_shape_and_physical_units(run_dir, tmp_path):
    out = _cli(
        "sample",
        str(run_dir / "run"),
        "--n",
        "3",
        "--steps",
        "4",
        "--condition",
        "3,7",
        "--guidance",
        "2",
        "--guidance-interval",
        "0.3,3",
        "--scheduler",
        "ddpm",
        "--out",
        str(tmp_path / "s.npy"),
        "--no-progress",
    )
    assert out.returncode == 0, out.stderr
    samples = np.load(tmp_path / "s.npy")
    assert samples.shape == (3, 1, 8, 8) and samples.dtype == np.float32
    assert np.isfinite(samples).all()


def test_sample_png_grid(run_dir, tmp_path):
    out = _cli(
        "sample",
        str(run_dir / "run"),
        "--n",
        "4",
        "--steps",
        "2",
        "--out",
        str(tmp_path / "g.png"),
        "--no-progress",
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--out", "x.txt"], "use a .npy file"),
        (["--out", "x.npy", "--guidance", "3"], "--guidance needs --condition"),
        (["--out", "x.npy", "--condition", "12"], "class label 12 is out of range"),
        (["--out", "x.npy", "--guidance-interval", "3"], "give two noise levels LO,HI"),
        (["--out", "x.npy", "--guidance-interval", "3,1"], "0 <= lo < hi"),
        (["--out", "x.npy", "--condition", "three"], "give numbers"),
        (["--out", "x.npy", "--condition", "1", "--caption", "a one"], "not --condition and --caption"),
        (["--out", "x.npy", "--scheduler", "ddmp"], "unknown scheduler 'ddmp'"),
    ],
)
def test_sample_bad_input_is_one_line_and_writes_nothing(run_dir, tmp_path, args, fragment):
    args = [a if a not in {"x.txt", "x.npy"} else str(tmp_path / a) for a in args]
    out = _cli("sample", str(run_dir / "run"), "--n", "2", "--steps", "2", "--no-progress", *args)
    assert out.returncode == 1
    assert out.stderr.startswith("sciddpm: error:") and fragment in out.stderr
    assert "Traceback" not in out.stderr
    assert list(tmp_path.iterdir()) == []


def test_sample_from_a_directory_that_is_not_a_pipeline(tmp_path):
    out = _cli("sample", str(tmp_path), "--out", str(tmp_path / "x.npy"))
    assert out.returncode == 1 and "pipeline.json is missing" in out.stderr


def test_train_typo_in_run_file_names_the_path(tmp_path):
    (tmp_path / "run.toml").write_text(RUN_TOML.replace("batch_size", "bach_size"))
    out = _cli("train", str(tmp_path / "run.toml"), "--out", str(tmp_path / "run"))
    assert out.returncode == 1
    assert "train.bach_size: unknown field; did you mean 'batch_size'?" in out.stderr
    assert not (tmp_path / "run").exists()


def test_resume_continues_to_more_steps_only_with_the_same_config(run_dir):
    changed = run_dir / "changed.toml"
    changed.write_text(RUN_TOML.replace("batch_size = 8", "batch_size = 4"))
    out = _cli("train", str(changed), "--out", str(run_dir / "run"), "--resume", "--no-progress")
    assert out.returncode == 1 and "train.batch_size (8 -> 4)" in out.stderr


def test_examples_run_file_is_the_demo_recipe():
    assert load_run(Path(__file__).parents[1] / "examples" / "digits.toml") == load_run(DEMO_RUN)


def test_demo_writes_grid_and_report(tmp_path):
    from sciddpm.cli.demo import run_demo

    report = run_demo(tmp_path, steps=3, samples_per_class=2, progress=False)
    assert (tmp_path / "samples.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved == report
    assert 0.0 <= saved["classifier_accuracy"] <= 1.0
    assert saved["train_steps"] == 3 and saved["samples_per_class"] == 2
    assert (tmp_path / "model" / "pipeline.json").is_file()


def test_progress_in_a_log_is_plain_lines(tmp_path):
    # Under SLURM, CI or `> log.txt` stderr is no terminal: one line per report, no carriage returns.
    (tmp_path / "run.toml").write_text(RUN_TOML.replace("steps = 4", "steps = 12"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCIDDPM_")}
    env.update(OMP_NUM_THREADS="1", SCIDDPM_PROGRESS_INTERVAL="0")
    cmd = [
        sys.executable,
        "-m",
        "sciddpm",
        "train",
        str(tmp_path / "run.toml"),
        "--out",
        str(tmp_path / "run"),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert "\r" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("training: ")]
    assert len(lines) == 12 and lines[0].startswith("training: 1/12 steps (8%)") and "ETA " in lines[0]
    assert lines[-1].startswith("training: 12/12 steps (100%)")
    assert "steps/s" in lines[-1] and "loss=" in lines[-1] and "lr=" in lines[-1]


def test_threads_flag_variable_and_run_file(tmp_path, monkeypatch):
    import torch

    from sciddpm.cli.commands import _dry_run_text
    from sciddpm.training.distributed import THREADS_ENV, use_threads

    (tmp_path / "run.toml").write_text(RUN_TOML)
    out = _cli(
        "train", str(tmp_path / "run.toml"), "--out", str(tmp_path / "run"), "--dry-run", "--threads", "1"
    )
    assert out.returncode == 0, out.stderr
    assert "with 1 thread(s)" in out.stdout and "warm-up over 1 steps to 0.0002" in out.stdout
    # The layout the data were read in, so a misread one (channels for rows) shows before training.
    assert "samples of shape (1, 8, 8) (C, *spatial): 1 channel(s), 2-D" in out.stdout
    bad = _cli("train", str(tmp_path / "run.toml"), "--out", str(tmp_path / "run"), "--threads", "0")
    assert bad.returncode == 2 and "must be a whole number >= 1, got '0'" in bad.stderr
    # A dry run writes nothing, so it needs no --out; training and resuming do.
    assert _cli("train", str(tmp_path / "run.toml"), "--dry-run", "--threads", "1").returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.toml"]
    for extra in ([], ["--dry-run", "--resume"]):
        bad = _cli("train", str(tmp_path / "run.toml"), *extra)
        assert bad.returncode == 1 and "--out is required" in bad.stderr
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv(THREADS_ENV, "2")
        assert use_threads(1) == 2  # the variable wins over train.threads
        monkeypatch.delenv(THREADS_ENV)
        assert use_threads(1) == 1
        monkeypatch.setenv(THREADS_ENV, "many")
        with pytest.raises(ValueError, match="SCIDDPM_NUM_THREADS='many' must be a whole number"):
            use_threads(None)
    finally:
        torch.set_num_threads(before)
    report = {
        "parameters": 10, "world_size": 1, "grad_accum": 1, "micro_batch": 8, "estimated_mb": 1.0,
        "state_mb": 0.5, "activation_mb": 0.5, "warmup_steps": 10, "lr": 2e-4, "final_lr": 0.0,
        "steps": 100, "seconds_per_step": 0.1, "device": "cpu", "threads": 2, "estimated_minutes": 0.2,
        "load": 3.0, "cores": 2, "samples": 40, "sample_shape": [2, 8, 8], "channel_names": ["tas", "pr"],
    }  # fmt: skip
    assert "load (3.0) exceeds its 2 cores" in _dry_run_text("run.toml", report)
    assert "2 channel(s) (tas, pr), 2-D" in _dry_run_text("run.toml", report)
    assert "exceeds" not in _dry_run_text("run.toml", {**report, "load": 1.0})


def test_short_runs_decay_the_learning_rate():
    # A fixed 100-step warm-up left a 100-step run at its peak rate; the default now scales.
    from sciddpm.training.stage import lr_at

    train = load_run({"train": {"steps": 100}}).train
    assert train.warmup_steps == 10 and lr_at(99, train) < 0.01 * train.lr
    assert load_run({}).train.warmup_steps == 100
    with pytest.raises(Exception, match=r"train.warmup_steps=100 is not below train.steps=100.*never decay"):
        load_run({"train": {"steps": 100, "warmup_steps": 100}})


def test_sampled_files_are_marked_synthetic_with_model_and_run(run_dir):
    from PIL import Image

    from sciddpm.provenance import DIGITAL_SOURCE_TYPE, PNG_KEY, read_sidecar, weights_hash

    run = run_dir / "run"
    npy, png = run_dir / "marked.npy", run_dir / "marked.png"
    for out in (npy, png):
        done = _cli("sample", str(run), "--n", "2", "--steps", "2", "--seed", "5", "--condition", "3",
                    "--out", str(out), "--no-progress")  # fmt: skip
        assert done.returncode == 0, done.stderr
    side = read_sidecar(npy)
    assert side["synthetic"] is True and side["digital_source_type"] == DIGITAL_SOURCE_TYPE
    assert side["weights_sha256"] == weights_hash(run) and side["seed"] == 5 and side["steps"] == 2
    assert side["condition"] == "3" and side["shape"] == [2, 1, 8, 8]
    text = Image.open(png).text
    assert json.loads(text[PNG_KEY])["weights_sha256"] == weights_hash(run)
    assert text["Description"].startswith("Synthetic")
