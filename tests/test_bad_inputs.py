"""One table of bad inputs: each must fail with a message that names the value and the fix,
and leave no partial files behind."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from tiny import TINY_UNET

from sciddpm.config import load_run
from sciddpm.pipeline import Pipeline
from sciddpm.registry import get_registry
from sciddpm.training.trainer import Trainer

RUN = {
    "data": {"type": "digits", "classes": [0, 1]},
    "pipeline": {"denoiser": TINY_UNET, "conditioner": {"type": "class_label", "dim": 8}},
    "train": {"steps": 2, "batch_size": 4, "checkpoint_every": 0},
}


def _with(section: str, **values) -> dict:
    run = {k: (dict(v) if isinstance(v, dict) else v) for k, v in RUN.items()}
    run[section] = {**run[section], **values}
    return run


class Payload:
    """Unpickling this writes a marker file: the proof that something unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "unpickled!"))


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("saved")
    Trainer(RUN, out, progress=False).fit()
    return out


def _npy(tmp: Path, array: np.ndarray, name: str = "x.npy") -> str:
    np.save(tmp / name, array, allow_pickle=True)
    return str(tmp / name)


def _nan_data(tmp: Path) -> str:
    x = np.ones((4, 1, 6, 6), dtype=np.float32)
    x[2, 0, 3, 3] = np.nan
    return _npy(tmp, x)


def _pickled_weights(tmp: Path, saved: Path) -> Path:
    import shutil

    target = tmp / "pipe"
    shutil.copytree(saved, target, ignore=shutil.ignore_patterns("checkpoints"))
    (target / "weights.safetensors").write_bytes(pickle.dumps(Payload(tmp / "marker")))
    return target


def _shape_mismatch(tmp: Path, saved: Path) -> Path:
    import shutil

    from safetensors.torch import load_file, save_file

    target = tmp / "pipe"
    shutil.copytree(saved, target, ignore=shutil.ignore_patterns("checkpoints"))
    weights = load_file(str(target / "weights.safetensors"))
    key = next(k for k, v in weights.items() if k.startswith("denoiser.") and v.ndim == 4 and v.shape[1] > 1)
    weights[key] = weights[key][:, :1].contiguous()
    save_file(weights, str(target / "weights.safetensors"))
    return target


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCIDDPM_")}
    return subprocess.run([sys.executable, "-m", "sciddpm", *args], capture_output=True, text=True, env=env)


def _cli_error(result: subprocess.CompletedProcess) -> None:
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    raise ValueError(result.stderr)


# (case id, action(tmp, saved) -> None that must raise, exception type, message fragment)
CASES: list[tuple[str, Callable[[Path, Path], object], type[BaseException], str]] = [
    # --- the run file
    (
        "run: typo",
        lambda t, s: load_run(_with("train", bach_size=4)),
        ValueError,
        "train.bach_size: unknown field; did you mean 'batch_size'?",
    ),
    (
        "run: wrong type",
        lambda t, s: load_run(_with("train", steps="many")),
        ValueError,
        "train.steps: Input should be a valid integer",
    ),
    (
        "run: unknown component",
        lambda t, s: load_run({**RUN, "data": {"type": "digitz"}}),
        ValueError,
        "data.type: unknown data 'digitz'. Did you mean 'digits'?",
    ),
    (
        "run: dotted path as type",
        lambda t, s: load_run({**RUN, "data": {"type": "os:system"}}),
        ValueError,
        "unknown data 'os:system'",
    ),
    (
        "run: bad component param",
        lambda t, s: load_run({**RUN, "data": {"type": "digits", "sise": 16}}),
        ValueError,
        "data.sise: unknown field; did you mean 'size'?",
    ),
    (
        "run: batch not divisible",
        lambda t, s: Trainer(_with("train", grad_accum=3), t / "run"),
        ValueError,
        "must be divisible by ranks x grad_accum",
    ),
    ("run: missing file", lambda t, s: load_run(t / "nope.toml"), ValueError, "file not found"),
    # --- data sources
    (
        "array: NaN without mask",
        lambda t, s: get_registry().build("data", {"type": "array", "path": _nan_data(t)}),
        ValueError,
        "sample 2 contains NaN/inf",
    ),
    (
        "array: pickled objects",
        lambda t, s: get_registry().build(
            "data", {"type": "array", "path": _npy(t, np.array([Payload(t / "marker")], dtype=object))}
        ),
        ValueError,
        "loading pickles can run arbitrary code",
    ),
    (
        "array: wrong rank",
        lambda t, s: get_registry().build(
            "data", {"type": "array", "path": _npy(t, np.zeros((3, 4), dtype=np.float32))}
        ),
        ValueError,
        "x[:, None]",
    ),
    (
        "array: missing file",
        lambda t, s: get_registry().build("data", {"type": "array", "path": str(t / "no.npy")}),
        (ValueError, FileNotFoundError),
        "no.npy",
    ),
    (
        "digits: bad class",
        lambda t, s: get_registry().build("data", {"type": "digits", "classes": [12]}),
        ValueError,
        "12",
    ),
    (
        "skimage: unknown image",
        lambda t, s: get_registry().build("data", {"type": "skimage", "image": "mitosis"}),
        ValueError,
        "cell",
    ),
    # --- Pipeline.sample
    ("sample: n=0", lambda t, s: Pipeline.load(s).sample(0), ValueError, "n must be >= 1, got 0"),
    ("sample: steps=0", lambda t, s: Pipeline.load(s).sample(2, steps=0), ValueError, "steps must be >= 1"),
    (
        "sample: condition count",
        lambda t, s: Pipeline.load(s).sample(3, [0, 1], steps=2),
        ValueError,
        "got 2 conditions for n=3 samples",
    ),
    (
        "sample: label out of range",
        lambda t, s: Pipeline.load(s).sample(2, 12, steps=2),
        ValueError,
        "class label 12 is out of range; valid labels are 0..9",
    ),
    (
        "sample: unknown scheduler",
        lambda t, s: Pipeline.load(s).sample(2, steps=2, scheduler="ddmp"),
        KeyError,
        "unknown scheduler 'ddmp'",
    ),
    # --- Pipeline.load
    ("load: not a pipeline", lambda t, s: Pipeline.load(t), FileNotFoundError, "pipeline.json is missing"),
    (
        "load: planted pickle",
        lambda t, s: Pipeline.load(_pickled_weights(t, s)),
        ValueError,
        "weights.safetensors is not a readable safetensors file",
    ),
    (
        "load: shape mismatch",
        lambda t, s: Pipeline.load(_shape_mismatch(t, s)),
        ValueError,
        "the pipeline config expects",
    ),
    # --- the command line
    (
        "cli train: typo",
        lambda t, s: _cli_error(_cli("train", str(t / "missing.toml"), "--out", str(t / "o"))),
        ValueError,
        "file not found",
    ),
    (
        "cli sample: suffix",
        lambda t, s: _cli_error(_cli("sample", str(s), "--out", str(t / "x.txt"))),
        ValueError,
        "use a .npy file",
    ),
    (
        "cli sample: guidance",
        lambda t, s: _cli_error(_cli("sample", str(s), "--guidance", "2", "--out", str(t / "x.npy"))),
        ValueError,
        "--guidance needs --condition",
    ),
    (
        "cli demo: bad steps",
        lambda t, s: _cli_error(_cli("demo", "--out", str(t / "d"), "--steps", "0")),
        ValueError,
        "train.steps: Input should be greater than or equal to 1",
    ),
    ("cli plugins: bad flag", lambda t, s: _cli_error(_cli("plugins", "--jsn")), ValueError, "unrecognized"),
]


@pytest.mark.parametrize(("case", "action", "error", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, action, error, fragment, tmp_path, saved):
    before = sorted(p.relative_to(saved) for p in saved.rglob("*"))
    made = set(tmp_path.iterdir())
    with pytest.raises(error) as info:
        action(tmp_path, saved)
    assert fragment in str(info.value)
    assert not (tmp_path / "marker").exists(), "a pickle payload was executed"
    new = {p.name for p in set(tmp_path.iterdir()) - made} - {"x.npy", "no.npy", "pipe", "marker"}
    assert not new, f"partial output left behind: {new}"
    assert sorted(p.relative_to(saved) for p in saved.rglob("*")) == before
