"""diffusers' ``AutoencoderKL`` as sciddpm's KL autoencoder in its ``ldm`` layout, and back.

The two networks compute the same function (LDM's autoencoder, Rombach et al. 2022), so the
import is a renaming of tensors (:mod:`sciddpm.bridge.keys`): :func:`vae_fields` reads the
``config.json`` into ``VAEConfig`` fields, :func:`vae_links` lists where every tensor goes, and
:func:`read_vae_state` loads a directory's weights under sciddpm's names. Configurations sciddpm's
network cannot express (another activation, no quant convs, no mid-block attention, different
in/out channels) are refused with the option named.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sciddpm.bridge.files import MODEL_CONFIG, read_json, read_weights
from sciddpm.bridge.keys import Link, attention_links, from_diffusers, module_links, resnet_links
from sciddpm.nn.vae import AutoencoderKL

__all__ = ["is_diffusers_vae", "read_vae_state", "vae_fields", "vae_links"]

#: diffusers config keys and the only values sciddpm's network reproduces.
REQUIRED = {
    "act_fn": "silu",
    "use_quant_conv": True,
    "use_post_quant_conv": True,
    "mid_block_add_attention": True,
}


def is_diffusers_vae(directory: str | Path) -> bool:
    """True when ``directory`` holds a diffusers ``AutoencoderKL`` (its ``config.json`` says so)."""
    path = Path(directory) / MODEL_CONFIG
    if not path.is_file():
        return False
    try:
        return read_json(path, "config").get("_class_name") == "AutoencoderKL"
    except ValueError:
        return False


def vae_fields(directory: str | Path) -> dict[str, Any]:
    """``VAEConfig`` fields (architecture, ``shift_factor``) of the diffusers VAE in ``directory``.

    Also returns ``scaling_factor`` (sciddpm's ``scale`` buffer). Raises ValueError naming a
    config option sciddpm's ``vae`` cannot reproduce, FileNotFoundError for a missing config.
    """
    where = str(directory)
    cfg = read_json(Path(directory) / MODEL_CONFIG, f"the diffusers VAE in {where!r}")
    if cfg.get("_class_name") != "AutoencoderKL":
        raise ValueError(
            f"{where!r} holds a {cfg.get('_class_name')!r}, not an AutoencoderKL; "
            "give the pipeline's vae/ folder"
        )
    for key, value in REQUIRED.items():
        if cfg.get(key, value) != value:
            raise ValueError(
                f"the VAE in {where!r} has {key}={cfg[key]!r}; sciddpm's vae reproduces only {key}={value!r}"
            )
    if cfg.get("in_channels", 3) != cfg.get("out_channels", 3):
        raise ValueError(
            f"the VAE in {where!r} maps {cfg.get('in_channels')} channels to {cfg.get('out_channels')}; "
            "sciddpm's vae reconstructs its input, so the two must agree"
        )
    for key in ("down_block_types", "up_block_types"):
        kinds = set(cfg.get(key, []))
        allowed = {"DownEncoderBlock2D"} if key.startswith("down") else {"UpDecoderBlock2D"}
        if kinds - allowed:
            raise ValueError(
                f"the VAE in {where!r} has {key}={sorted(kinds)}; sciddpm's vae has {sorted(allowed)}"
            )
    if cfg.get("latents_mean") is not None or cfg.get("latents_std") is not None:
        raise ValueError(
            f"the VAE in {where!r} has per-channel latents_mean/latents_std; sciddpm's vae has one "
            "scale and shift for all latent channels"
        )
    return {
        "dims": 2,
        "in_channels": int(cfg.get("in_channels", 3)),
        "channels": list(cfg.get("block_out_channels", [64])),
        "latent_channels": int(cfg.get("latent_channels", 4)),
        "blocks_per_level": int(cfg.get("layers_per_block", 1)),
        "groups": int(cfg.get("norm_num_groups", 32)),
        "padding": "zeros",
        "layout": "ldm",
        "shift_factor": float(cfg.get("shift_factor") or 0.0),
        "scaling_factor": float(cfg.get("scaling_factor", 0.18215)),
    }


def vae_links(net: AutoencoderKL, prefix: str = "net.") -> list[Link]:
    """Where each tensor of ``net`` (an ``ldm``-layout AutoencoderKL) is in diffusers' AutoencoderKL.

    ``prefix`` is ``net``'s name in the state dict being filled (the ``vae`` encoder's ``net.``).
    Raises ValueError for the ``sciddpm`` layout, which diffusers has no counterpart of.
    """
    if net.layout != "ldm":
        raise ValueError(
            "only the 'ldm' layout of sciddpm's vae has a diffusers counterpart; this one is 'sciddpm'"
        )
    levels, blocks = net.levels, net.blocks_per_level
    links: list[Link] = []
    enc, dec = net.encoder, net.decoder

    def mid(ours: str, seq: torch.nn.Sequential, start: int, theirs: str) -> None:
        links.extend(resnet_links(f"{ours}.{start}", f"{theirs}.mid_block.resnets.0", seq[start]))
        links.extend(attention_links(f"{ours}.{start + 1}", f"{theirs}.mid_block.attentions.0"))
        links.extend(resnet_links(f"{ours}.{start + 2}", f"{theirs}.mid_block.resnets.1", seq[start + 2]))

    def head(ours: str, theirs: str) -> None:
        links.extend(module_links(f"{ours}.0", f"{theirs}.conv_norm_out"))
        links.extend(module_links(f"{ours}.2.conv", f"{theirs}.conv_out"))

    e = f"{prefix}encoder"
    links.extend(module_links(f"{e}.0.conv", "encoder.conv_in"))
    i = 1
    for level in range(levels):
        for b in range(blocks):
            links.extend(resnet_links(f"{e}.{i}", f"encoder.down_blocks.{level}.resnets.{b}", enc[i]))
            i += 1
        if level < levels - 1:
            links.extend(module_links(f"{e}.{i}.conv", f"encoder.down_blocks.{level}.downsamplers.0.conv"))
            i += 1
    mid(e, enc, i, "encoder")
    head(f"{e}.{i + 3}", "encoder")
    links.extend(module_links(f"{prefix}quant_conv", "quant_conv"))
    links.extend(module_links(f"{prefix}post_quant_conv", "post_quant_conv"))

    d = f"{prefix}decoder"
    links.extend(module_links(f"{d}.0.conv", "decoder.conv_in"))
    mid(d, dec, 1, "decoder")
    i = 4
    for j in range(levels):  # diffusers' up_blocks.0 is the coarsest level
        for b in range(blocks + 1):
            links.extend(resnet_links(f"{d}.{i}", f"decoder.up_blocks.{j}.resnets.{b}", dec[i]))
            i += 1
        if j < levels - 1:
            links.extend(module_links(f"{d}.{i}.conv.conv", f"decoder.up_blocks.{j}.upsamplers.0.conv"))
            i += 1
    head(f"{d}.{i}", "decoder")
    return links


def read_vae_state(
    directory: str | Path, net: AutoencoderKL, expected: dict[str, torch.Tensor], prefix: str = "net."
) -> dict[str, torch.Tensor]:
    """The network tensors of the diffusers VAE in ``directory``, named as in ``expected``.

    Raises ValueError naming a missing, extra or misshapen tensor, or a pickle-only directory.
    """
    tensors = read_weights(directory)
    return from_diffusers(
        vae_links(net, prefix), tensors, expected, f"the diffusers VAE in {str(directory)!r}"
    )
