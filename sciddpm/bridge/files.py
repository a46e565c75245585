"""Reading and writing the files of a diffusers-format model directory, safely and offline.

A diffusers model directory holds ``config.json`` and ``diffusion_pytorch_model.safetensors``
(or shards listed in ``diffusion_pytorch_model.safetensors.index.json``); a scheduler directory
``scheduler_config.json``; a pipeline directory ``model_index.json`` naming one sub-directory per
component (the layout of ``diffusers.DiffusionPipeline.save_pretrained``). Only safetensors are read:
``.bin``, ``.ckpt`` and ``.pt`` files are pickles, which can run code when loaded, so they are
refused with the one-line conversion to use. Nothing is fetched from the network.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from sciddpm import persistence

__all__ = [
    "MODEL_CONFIG",
    "ORIGINALS",
    "WEIGHTS",
    "read_json",
    "read_weights",
    "write_model",
]

MODEL_CONFIG = "config.json"
WEIGHTS = "diffusion_pytorch_model.safetensors"
#: sciddpm's own tensors that an export folds into diffusers' (sciddpm.bridge.export), beside WEIGHTS.
ORIGINALS = "sciddpm_originals.safetensors"
PICKLES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")


def read_json(path: str | Path, what: str) -> dict[str, Any]:
    """The JSON object in ``path``; ``what`` names it in errors ("the VAE's config.json").

    Raises FileNotFoundError naming the missing file, ValueError for a file that is not a JSON object.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{what}: {str(path)!r} does not exist; give the local directory written by diffusers' "
            "save_pretrained (sciddpm never downloads)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{what}: {str(path)!r} is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what}: {str(path)!r} holds a {type(data).__name__}, not a JSON object")
    return data


def read_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of the diffusers model in ``directory`` (one safetensors file or its shards), on CPU.

    Raises ValueError when the weights are only in a pickle format (naming the file and how to
    convert it), FileNotFoundError when there are no weights (naming variant files such as
    ``...fp16.safetensors`` when those are all there is).
    """
    from safetensors.torch import load_file

    directory = Path(directory)
    single, index = directory / WEIGHTS, directory / f"{WEIGHTS}.index.json"
    if single.is_file():
        return load_file(single)
    if index.is_file():
        shards = sorted(set(read_json(index, "the weights index").get("weight_map", {}).values()))
        tensors: dict[str, torch.Tensor] = {}
        for shard in shards:
            tensors.update(load_file(directory / shard))
        return tensors
    variants = sorted(p.name for p in directory.glob("*.safetensors"))
    if variants:
        raise FileNotFoundError(
            f"{str(directory)!r} has {variants} but no {WEIGHTS}: sciddpm reads the full-precision "
            "weights; save them with save_pretrained(dir) (no variant), or rename the one you want "
            f"to {WEIGHTS}"
        )
    pickles = sorted(p.name for p in directory.glob("*") if p.suffix in PICKLES)
    if pickles:
        try:
            cls = read_json(directory / MODEL_CONFIG, "config").get("_class_name", "Model")
        except (OSError, ValueError):
            cls = "Model"
        raise ValueError(
            f"{str(directory / pickles[0])!r} is a pickle, which sciddpm never loads (unpickling can run "
            f"code). Convert it once where you trust the file: diffusers.{cls}.from_pretrained(dir)"
            f".save_pretrained(dir, safe_serialization=True) writes {WEIGHTS}"
        )
    raise FileNotFoundError(f"{str(directory)!r} has no {WEIGHTS}; is it a diffusers model directory?")


def write_model(
    directory: str | Path, config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]
) -> Path:
    """Write ``config.json`` and the safetensors weights of one diffusers model; returns ``directory``.

    Each file is written atomically; raises OSError when ``directory`` cannot be written.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    persistence.write_atomic(directory / WEIGHTS, lambda p: save_file(clean, str(p)))
    persistence.write_json(directory / MODEL_CONFIG, dict(config))
    return directory
