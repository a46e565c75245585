"""One way to save and load any component: a JSON file of its configuration beside safetensors files.

A saved directory holds ``NAME.json`` (the component's config and metadata, stamped with the
format version and the sciddpm, torch and plugin versions that wrote it) and one or more
safetensors files of tensors. :func:`save` writes every file to a temporary name and renames it
into place, the JSON last, so an interrupted save never leaves a file half-written under its real
name and a directory whose JSON exists is complete. :func:`read_meta` and :func:`read_tensors`
load it back, checking the format, every tensor's presence and shape, and naming the file and
tensor in every error. Nothing is ever unpickled. The pipeline, the VAE, CLIP's weights, the
Gaussian start and plugins' models (the climate regression) all go through here.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import math
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "FORMAT_VERSION",
    "check_tensors",
    "file_sha256",
    "finite_json",
    "loading_saved",
    "read_meta",
    "read_tensors",
    "save",
    "saved_weights_follow",
    "versions",
    "write_atomic",
    "write_json",
]

#: Version of the saved-directory layout; a directory stamped with another is refused.
FORMAT_VERSION = 1


_SAVED = contextvars.ContextVar("sciddpm_loading_saved_pipeline", default=False)


@contextlib.contextmanager
def saved_weights_follow() -> Iterator[None]:
    """Within it, components skip reading pretrained folders: a saved pipeline's tensors follow.

    ``Pipeline.load`` builds its components inside this, so a model imported from diffusers loads
    from its saved state alone, never touching (or depending on) the original folder.
    """
    token = _SAVED.set(True)
    try:
        yield
    finally:
        _SAVED.reset(token)


def loading_saved() -> bool:
    """True inside :func:`saved_weights_follow`."""
    return _SAVED.get()


def versions() -> dict[str, Any]:
    """The sciddpm, torch and plugin versions, stamped into every saved directory."""
    from sciddpm import __version__
    from sciddpm.registry import get_registry

    plugins = {e.plugin: e.version or __version__ for e in get_registry().entries()}
    return {"sciddpm_version": __version__, "torch_version": torch.__version__, "plugins": plugins}


def write_atomic(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp)`` on a temporary name beside ``path``, fsync it, then rename it to ``path``.

    A failure leaves ``path`` as it was (and no temporary file). Returns ``path``.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(str(tmp))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks (checkpoint checksums, weights hashes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def finite_json(data: Any) -> Any:
    """``data`` with every NaN or infinite float (also inside dicts, lists and tuples) as None.

    Python's ``json`` writes them as ``NaN`` and ``Infinity``, which are not JSON: ``jq``,
    JavaScript and most readers other than Python's reject the whole file. Reports (``sciddpm
    evaluate``'s ``report.json``) go through this, so an undefined figure (an R^2 on constant data)
    reads as ``null``. Configs do not: they must load back exactly.
    """
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, Mapping):
        return {k: finite_json(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [finite_json(v) for v in data]
    return data


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically (see :func:`write_atomic`)."""
    text = json.dumps(data, indent=2, default=str) + "\n"
    return write_atomic(path, lambda p: Path(p).write_text(text, encoding="utf-8"))


def save(
    directory: str | Path,
    config_file: str,
    meta: Mapping[str, Any],
    tensors: Mapping[str, Mapping[str, torch.Tensor]],
) -> Path:
    """Write each ``tensors[file]`` to ``directory/file`` (safetensors), then ``meta`` to ``config_file``.

    ``meta`` is stamped with ``format`` (:data:`FORMAT_VERSION`) and :func:`versions`. Tensors are
    copied to contiguous CPU memory first. Creates ``directory``; returns it.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # Saving over an earlier save: drop its JSON first, so no JSON stands beside half-new tensors.
    (directory / config_file).unlink(missing_ok=True)
    for name, state in tensors.items():
        cpu = {k: v.detach().contiguous().cpu() for k, v in state.items()}
        write_atomic(directory / name, lambda p, cpu=cpu: save_file(cpu, p))
    write_json(directory / config_file, {"format": FORMAT_VERSION, **versions(), **meta})
    return directory


def read_meta(directory: str | Path, config_file: str, what: str, hint: str = "") -> dict[str, Any]:
    """The JSON ``directory/config_file`` written by :func:`save` for a ``what`` (a pipeline, a VAE).

    Raises FileNotFoundError when it is missing (adding ``hint``, e.g. how to write one), and
    ValueError when it is not JSON or has another format version.
    """
    path = Path(directory) / config_file
    if not path.is_file():
        raise FileNotFoundError(
            f"{str(directory)!r} is not a saved sciddpm {what}: {config_file} is missing" + hint
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise ValueError(f"{path} has format {found!r}; this sciddpm reads {FORMAT_VERSION}")
    return meta


def read_tensors(
    path: str | Path, expected: Mapping[str, torch.Tensor] | None = None, what: str = "component"
) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, checked name by name and shape by shape against ``expected``.

    ``expected`` is the state dict of the ``what`` being loaded (None: no check). An empty expected
    tensor is a placeholder sized by fitting (a standardisation's statistics) and takes any shape.
    Raises FileNotFoundError when the file is missing and ValueError, naming the file and tensor,
    when it is unreadable, lacks a tensor, has one too many or one of another shape.
    """
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the saved {what} is incomplete; save it again")
    try:
        found = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise ValueError(f"{path} is not a readable safetensors file: {exc}") from None
    if expected is not None:
        check_tensors(found, expected, str(path), what)
    return found


def check_tensors(
    found: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    where: str,
    what: str,
    fix: str | None = None,
) -> None:
    """Check ``found`` has exactly ``expected``'s tensor names and shapes (of a ``what`` read from ``where``).

    An empty expected tensor is a placeholder sized by fitting and takes any shape. Raises
    ValueError naming ``where``, the first missing, unexpected or misshapen tensor and ``fix``
    (default: save the ``what`` again).
    """
    missing = sorted(set(expected) - set(found))
    if missing:
        advice = fix or f"save the {what} again"
        raise ValueError(f"{where} lacks tensor {missing[0]!r} ({len(missing)} missing); {advice}")
    unexpected = sorted(set(found) - set(expected))
    if unexpected:
        raise ValueError(
            f"{where} has unexpected tensor {unexpected[0]!r}; it was saved by a different {what}"
        )
    for key, tensor in expected.items():
        if tensor.numel() > 0 and tuple(found[key].shape) != tuple(tensor.shape):
            raise ValueError(
                f"{where}: tensor {key!r} has shape {tuple(found[key].shape)}, the {what} config expects "
                f"{tuple(tensor.shape)}"
            )
