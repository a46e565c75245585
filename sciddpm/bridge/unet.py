"""sciddpm's ``unet`` as diffusers' ``UNet2DModel`` with ``resnet_time_scale_shift = "scale_shift"``.

The two are the same network (the improved-DDPM / ADM U-Net, Nichol & Dhariwal 2021) when the
U-Net is 2-D, zero-padded, its noise-level embedding modulates each block by scale and shift
(sciddpm's FiLM is diffusers' ``scale_shift``), and every attention block has the same head
width (diffusers has one ``attention_head_dim``). :func:`export_problems` lists what stops a
config from mapping, :func:`diffusers_config` writes the ``config.json`` of one that does,
:func:`native_fields` reads such a ``config.json`` back into ``UNetConfig`` fields, and
:func:`unet_links` says where each tensor goes. A class-conditional U-Net's ``vector_proj`` meets
diffusers' ``class_embedding`` table in the pipeline export (:mod:`sciddpm.bridge.export`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from sciddpm.bridge.files import MODEL_CONFIG, ORIGINALS, read_json, read_weights
from sciddpm.bridge.keys import Link, attention_links, from_diffusers, module_links, resnet_links
from sciddpm.nn.unet import UNet, UNetConfig

__all__ = [
    "diffusers_config",
    "export_problems",
    "native_fields",
    "read_native",
    "shift_rotation",
    "time_embedding_width",
    "unet_links",
]

DOWN, ATTN_DOWN, UP, ATTN_UP = "DownBlock2D", "AttnDownBlock2D", "UpBlock2D", "AttnUpBlock2D"
#: diffusers UNet2DModel options and the only value sciddpm's unet computes.
FIXED = {
    "center_input_sample": False,
    "time_embedding_type": "positional",
    "freq_shift": 0,
    "flip_sin_to_cos": True,
    "mid_block_type": "UNetMidBlock2D",
    "mid_block_scale_factor": 1,
    "downsample_padding": 1,
    "downsample_type": "conv",
    "upsample_type": "conv",
    "act_fn": "silu",
    "norm_eps": 1e-5,
    "resnet_time_scale_shift": "scale_shift",
    "class_embed_type": None,
}


def time_embedding_width(config: dict[str, Any]) -> int:
    """The width of a diffusers U-Net's time embedding (its class embeddings' width too)."""
    return int(config.get("time_embedding_dim") or 4 * config["block_out_channels"][0])


def _attended_widths(cfg: UNetConfig) -> list[int]:
    widths = [cfg.channels[i] for i in cfg.attention_levels]
    return widths + ([cfg.channels[-1]] if cfg.mid_attention else [])


def export_problems(cfg: UNetConfig) -> list[str]:
    """What in ``cfg`` has no counterpart in diffusers' UNet2DModel (empty: it exports exactly)."""
    problems = []
    if cfg.dims != 2:
        problems.append(f"a {cfg.dims}-D U-Net (diffusers' UNet2DModel is 2-D)")
    modes = cfg.padding if isinstance(cfg.padding, list) else [cfg.padding]
    if any(m != "zeros" for m in modes):
        problems.append(f"padding={cfg.padding} (diffusers pads with zeros only)")
    if cfg.token_dim:
        problems.append(
            f"token_dim={cfg.token_dim}: sciddpm's cross-attention joins the tokens to the keys "
            "of self-attention, diffusers' has separate transformer blocks"
        )
    widths = sorted(set(_attended_widths(cfg)))
    if len(widths) > 1:
        problems.append(
            f"attention at widths {widths} with heads={cfg.heads}: diffusers' UNet2DModel has one "
            "attention_head_dim, so every attention block needs the same width"
        )
    if cfg.prediction not in ("eps", "v", "x0"):
        problems.append(f"prediction={cfg.prediction!r} (diffusers schedulers read eps, v and x0)")
    return problems


def diffusers_config(cfg: UNetConfig, sample_size: list[int], num_classes: int | None) -> dict[str, Any]:
    """The UNet2DModel ``config.json`` of ``cfg`` (which :func:`export_problems` passes)."""
    levels = range(len(cfg.channels))
    attended = _attended_widths(cfg)
    embed_dim = cfg.embed_dim or 4 * cfg.channels[0]
    return {
        "_class_name": "UNet2DModel",
        "sample_size": sample_size,
        "in_channels": int(cfg.in_channels or 0) + cfg.concat_channels,
        "out_channels": int(cfg.out_channels or cfg.in_channels or 0),
        **FIXED,
        "down_block_types": [ATTN_DOWN if i in cfg.attention_levels else DOWN for i in levels],
        "up_block_types": [ATTN_UP if i in cfg.attention_levels else UP for i in reversed(levels)],
        "block_out_channels": list(cfg.channels),
        "layers_per_block": cfg.blocks_per_level,
        "dropout": cfg.dropout,
        "attention_head_dim": attended[0] // cfg.heads if attended else None,
        "norm_num_groups": cfg.groups,
        "attn_norm_num_groups": cfg.groups,
        "add_attention": cfg.mid_attention,
        "num_class_embeds": num_classes,
        "time_embedding_dim": embed_dim if embed_dim != 4 * cfg.channels[0] else None,
    }


def native_fields(config: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """``(UNetConfig fields, "")`` for a UNet2DModel ``config.json`` sciddpm's unet computes, else
    ``(None, the first reason it does not)``."""
    if config.get("_class_name") != "UNet2DModel":
        return None, f"{config.get('_class_name')} is not a UNet2DModel"
    for key, value in FIXED.items():
        if config.get(key, value) != value:
            return None, f"{key}={config.get(key)!r} (sciddpm's unet computes {key}={value!r})"
    down, up = list(config.get("down_block_types", [])), list(config.get("up_block_types", []))
    attention = [i for i, kind in enumerate(down) if kind == ATTN_DOWN]
    if (
        set(down) - {DOWN, ATTN_DOWN}
        or [ATTN_UP if i in attention else UP for i in reversed(range(len(down)))] != up
    ):
        return None, f"blocks {down} / {up} (sciddpm's unet: plain or attention blocks, mirrored)"
    channels = list(config.get("block_out_channels", []))
    groups = int(config.get("norm_num_groups", 32))
    if config.get("attn_norm_num_groups") not in (None, groups):
        return None, "attn_norm_num_groups differs from norm_num_groups"
    if config.get("add_attention", True) and config.get("attn_norm_num_groups") is None:
        return None, "its middle attention block has no GroupNorm (attn_norm_num_groups unset)"
    mid = bool(config.get("add_attention", True))
    widths = {channels[i] for i in attention} | ({channels[-1]} if mid else set())
    head_dim = config.get("attention_head_dim") or (max(widths) if widths else 1)
    if len(widths) > 1 or any(w % head_dim for w in widths):
        return None, f"attention widths {sorted(widths)} with attention_head_dim={head_dim}"
    fields = {
        "dims": 2,
        "out_channels": config.get("out_channels"),
        "channels": channels,
        "blocks_per_level": int(config.get("layers_per_block", 2)),
        "attention_levels": attention,
        "mid_attention": mid,
        "heads": widths.pop() // head_dim if widths else 1,
        "groups": groups,
        "dropout": float(config.get("dropout", 0.0)),
        "embed_dim": config.get("time_embedding_dim"),
    }
    return fields, ""


def unet_links(net: UNet) -> list[Link]:
    """Where each tensor of sciddpm's ``net`` is in diffusers' UNet2DModel (``vector_proj`` aside)."""
    cfg = net.config
    links = module_links("noise_mlp.0", "time_embedding.linear_1") + module_links(
        "noise_mlp.2", "time_embedding.linear_2"
    )
    links += module_links("conv_in.conv", "conv_in")
    levels = len(cfg.channels)
    k = 0
    for level in range(levels):
        for b in range(cfg.blocks_per_level):
            step = net.down[k]
            links += resnet_links(f"down.{k}.0", f"down_blocks.{level}.resnets.{b}", step[0])
            if level in cfg.attention_levels:
                links += attention_links(f"down.{k}.1", f"down_blocks.{level}.attentions.{b}")
            k += 1
        if level < levels - 1:
            links += module_links(f"down.{k}.0.conv.conv", f"down_blocks.{level}.downsamplers.0.conv")
            k += 1
    links += resnet_links("mid.0", "mid_block.resnets.0", net.mid[0])
    if cfg.mid_attention:
        links += attention_links("mid.1", "mid_block.attentions.0")
    last = len(net.mid) - 1
    links += resnet_links(f"mid.{last}", "mid_block.resnets.1", net.mid[last])
    k = 0
    for j, level in enumerate(reversed(range(levels))):
        for i in range(cfg.blocks_per_level + 1):
            step = net.up[k]
            links += resnet_links(f"up.{k}.0", f"up_blocks.{j}.resnets.{i}", step[0])
            n = 1
            if level in cfg.attention_levels:
                links += attention_links(f"up.{k}.1", f"up_blocks.{j}.attentions.{i}")
                n = 2
            if level > 0 and i == cfg.blocks_per_level:
                links += module_links(f"up.{k}.{n}.conv.conv", f"up_blocks.{j}.upsamplers.0.conv")
            k += 1
    links += module_links("norm_out", "conv_norm_out") + module_links("conv_out.conv", "conv_out")
    return links


def shift_rotation(width: int) -> torch.Tensor:
    """``M (width, width)``, float64, with ``emb(i + 1) = M emb(i)`` for sciddpm's sinusoidal embedding.

    The embedding ``[cos(f i), sin(f i)]`` of ``i + 1`` is that of ``i`` rotated by ``f`` in each
    (cos, sin) pair, so a first layer ``W`` fed ``i + 1`` equals ``W M`` fed ``i``; ``M`` is
    orthogonal, so ``W M M^T = W`` undoes it.
    """
    half = width // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64) / half)
    c, s = torch.diag(torch.cos(freqs)), torch.diag(torch.sin(freqs))
    m = torch.zeros(width, width, dtype=torch.float64)
    m[:half, :half], m[:half, half : 2 * half] = c, -s
    m[half : 2 * half, :half], m[half : 2 * half, half : 2 * half] = s, c
    if width % 2:
        m[-1, -1] = 1.0  # the zero pad of an odd width
    return m


class StaleOriginals(ValueError):
    """The originals beside an exported U-Net no longer compute what its weights compute."""


def original_class_width(folder: Path) -> int | None:
    """The width of the class vectors a sciddpm export kept beside the weights (None: none kept)."""
    if not (folder / ORIGINALS).is_file():
        return None
    with safe_open(str(folder / ORIGINALS), "pt") as f:
        if "conditioner.embedding.weight" not in f.keys():  # noqa: SIM118 - safe_open has no __contains__
            return None
        return int(f.get_slice("conditioner.embedding.weight").get_shape()[1])


def read_native(folder: Path, net: UNet, conditioner: Any, continuous: bool, originals: bool = True) -> None:
    """Load the UNet2DModel in ``folder`` into sciddpm's ``net`` (and a class table into ``conditioner``).

    ``continuous``: the model was trained on sciddpm's continuous-time schedule, so the export
    folded the noise input's +1 into the first time-embedding layer, which is unfolded here. A class
    table becomes the ``class_label`` rows with an identity ``vector_proj`` (null row from the
    config's ``_sciddpm_null_class``, else 0). With ``originals``, the tensors a sciddpm export
    kept beside the weights are restored instead, so the round trip is exact; they must still
    compute what the weights compute, else StaleOriginals (a ValueError) is raised (the folder
    was trained further in diffusers: read it with ``originals=False``). Raises ValueError naming
    a missing, extra or misshapen tensor.
    """
    tensors = read_weights(folder)
    table = tensors.pop("class_embedding.weight", None)
    state = net.state_dict()
    state.update(from_diffusers(unet_links(net), tensors, state, f"the unet in {str(folder)!r}"))
    if continuous:
        w = state["noise_mlp.0.weight"].double()
        state["noise_mlp.0.weight"] = (w @ shift_rotation(w.shape[1]).T).float()
    rows = None
    if table is not None:
        null = read_json(folder / MODEL_CONFIG, "the unet").get("_sciddpm_null_class")
        rows = torch.cat([table, torch.tensor([null]) if null else torch.zeros(1, table.shape[1])])
    kept = load_file(folder / ORIGINALS) if originals and (folder / ORIGINALS).is_file() else {}
    if kept and not _agree(kept, state, rows):
        raise StaleOriginals(f"{str(folder / ORIGINALS)!r} no longer matches the weights beside it")
    if rows is not None and "conditioner.embedding.weight" not in kept:
        kept |= {
            "vector_proj.weight": torch.eye(len(state["vector_proj.bias"])),
            "vector_proj.bias": torch.zeros_like(state["vector_proj.bias"]),
            "conditioner.embedding.weight": rows,
        }
    class_rows = kept.pop("conditioner.embedding.weight", None)
    state.update(kept)
    net.load_state_dict(state)
    if class_rows is not None:
        with torch.no_grad():
            conditioner.embedding.weight.copy_(class_rows)


def _agree(
    originals: dict[str, torch.Tensor], state: dict[str, torch.Tensor], rows: torch.Tensor | None
) -> bool:
    """Whether ``originals`` compute what the unfolded ``state`` and class ``rows`` compute."""
    same = True
    if "noise_mlp.0.weight" in originals:
        same &= torch.allclose(originals["noise_mlp.0.weight"], state["noise_mlp.0.weight"], atol=1e-5)
    if "conditioner.embedding.weight" in originals:
        w, b = originals["vector_proj.weight"].double(), originals["vector_proj.bias"].double()
        folded = originals["conditioner.embedding.weight"].double() @ w.T + b
        same &= rows is not None and folded.shape == rows.shape
        same &= bool(same) and torch.allclose(folded.float(), rows.float(), atol=1e-5)  # type: ignore[union-attr]
    return bool(same)
