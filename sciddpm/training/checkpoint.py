"""Training checkpoints that survive kills: atomic, verified, rotated.

A checkpoint is a directory ``checkpoints/step_XXXXXXXX/`` holding a saved
pipeline plus the trainer state, all JSON + safetensors. It is built under a
temporary name, every file is fsynced, a ``checksums.json`` (SHA-256 of each
file) is written last, and only then is the directory renamed into place. On
resume the newest checkpoint whose checksums verify is used; a truncated or
corrupt one is skipped with a warning. Only the last ``keep`` are kept.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

from sciddpm import persistence

__all__ = ["CHECKPOINTS", "CHECKSUMS", "find_checkpoint", "list_checkpoints", "verify", "write_checkpoint"]

CHECKPOINTS = "checkpoints"
CHECKSUMS = "checksums.json"
_PREFIX = "step_"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_checkpoints(out: Path) -> list[Path]:
    """Completed checkpoint directories of a run, oldest first."""
    root = Path(out) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(_PREFIX)]
    return sorted(found, key=lambda p: int(p.name[len(_PREFIX) :]))


def write_checkpoint(out: Path, step: int, write: Callable[[Path], None], keep: int) -> Path:
    """Write a checkpoint for ``step`` with ``write(directory)``, then rotate to the last ``keep``."""
    root = Path(out) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{_PREFIX}{step:08d}"
    tmp = root / f".tmp-{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write(tmp)
    sums = {}
    for path in sorted(tmp.iterdir()):
        _fsync(path)
        sums[path.name] = persistence.file_sha256(path)
    (tmp / CHECKSUMS).write_text(json.dumps(sums, indent=2) + "\n")
    _fsync(tmp / CHECKSUMS)
    _fsync(tmp)
    shutil.rmtree(final, ignore_errors=True)  # a re-run of the same step replaces it
    tmp.rename(final)
    _fsync(root)
    for old in list_checkpoints(out)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def verify(directory: Path) -> str | None:
    """Why ``directory`` is not a complete, intact checkpoint, or None when it is."""
    sums_path = directory / CHECKSUMS
    if not sums_path.is_file():
        return f"{sums_path.name} is missing (the checkpoint was not completed)"
    try:
        sums = json.loads(sums_path.read_text())
    except json.JSONDecodeError:
        return f"{sums_path.name} is not valid JSON"
    for name, expected in sums.items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if persistence.file_sha256(path) != expected:
            return f"{name} does not match its checksum (truncated or corrupted)"
    return None


def find_checkpoint(out: Path) -> Path | None:
    """The newest intact checkpoint of a run; damaged newer ones are skipped with a warning."""
    for directory in reversed(list_checkpoints(out)):
        problem = verify(directory)
        if problem is None:
            return directory
        warnings.warn(
            f"skipping checkpoint {directory}: {problem}; falling back to the previous one",
            RuntimeWarning,
            stacklevel=2,
        )
    return None
