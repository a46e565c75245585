"""Tensor-name links between sciddpm's networks and diffusers' modules, usable in both directions.

A :class:`Link` ties one sciddpm tensor to one or more diffusers tensors with a conversion:
``same`` (identical), ``qkv`` (sciddpm's stacked 1x1-conv q/k/v projection is diffusers' three
``Linear`` weights, or biases, concatenated) or ``conv1d`` (a 1x1 ``Conv1d`` weight is a ``Linear``
weight with
a trailing axis). The block-level helpers list the links of a residual block and of an attention
block, which the VAE and U-Net mappings string together in the order the networks are built.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

__all__ = ["Link", "attention_links", "from_diffusers", "module_links", "resnet_links", "to_diffusers"]

Kind = Literal["same", "qkv", "conv1d"]
#: Attention names of checkpoints written before diffusers 0.14, which diffusers renames on load.
DEPRECATED = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.", ".proj_attn.": ".to_out.0."}


@dataclass(frozen=True)
class Link:
    """sciddpm tensor ``ours`` is diffusers' ``theirs`` (one name, or q/k/v for ``qkv``) by ``kind``."""

    ours: str
    theirs: tuple[str, ...]
    kind: Kind = "same"


def module_links(ours: str, theirs: str, bias: bool = True) -> list[Link]:
    """``weight`` (and ``bias``) of a module whose tensors are stored alike in both libraries."""
    names = ("weight", "bias") if bias else ("weight",)
    return [Link(f"{ours}.{n}", (f"{theirs}.{n}",)) for n in names]


def resnet_links(ours: str, theirs: str, block: nn.Module) -> list[Link]:
    """A :class:`~sciddpm.nn.unet.ResBlock` at ``ours`` as diffusers' ``ResnetBlock2D`` at ``theirs``."""
    links = module_links(f"{ours}.norm1", f"{theirs}.norm1") + module_links(
        f"{ours}.conv1.conv", f"{theirs}.conv1"
    )
    if getattr(block, "film", None) is not None:
        links += module_links(f"{ours}.film", f"{theirs}.time_emb_proj")
    links += module_links(f"{ours}.norm2", f"{theirs}.norm2") + module_links(
        f"{ours}.conv2.conv", f"{theirs}.conv2"
    )
    if isinstance(getattr(block, "skip", None), nn.modules.conv._ConvNd):
        links += module_links(f"{ours}.skip", f"{theirs}.conv_shortcut")
    return links


def attention_links(ours: str, theirs: str) -> list[Link]:
    """An :class:`~sciddpm.nn.unet.Attention` at ``ours`` as diffusers' ``Attention`` at ``theirs``."""
    links = module_links(f"{ours}.norm", f"{theirs}.group_norm")
    for n in ("weight", "bias"):
        qkv = tuple(f"{theirs}.to_{p}.{n}" for p in "qkv")
        links.append(Link(f"{ours}.to_qkv.{n}", qkv, "qkv"))
        links.append(
            Link(f"{ours}.to_out.{n}", (f"{theirs}.to_out.0.{n}",), "conv1d" if n == "weight" else "same")
        )
    return links


def _modern(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers tensors with pre-0.14 attention names renamed and 1x1-conv projections flattened."""
    out: dict[str, torch.Tensor] = {}
    for name, value in tensors.items():
        renamed = name
        for old, new in DEPRECATED.items():
            renamed = renamed.replace(old, new)
        if renamed != name and value.ndim == 4:
            value = value.flatten(1)
        out[renamed] = value
    return out


def from_diffusers(
    links: Iterable[Link],
    tensors: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    where: str,
) -> dict[str, torch.Tensor]:
    """sciddpm's state dict from diffusers ``tensors`` along ``links``, checked against ``expected``.

    Raises ValueError naming the diffusers tensor that is missing, left over or of the wrong shape
    (``where`` names the model directory).
    """
    theirs = _modern(tensors)
    state: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for link in links:
        missing = [n for n in link.theirs if n not in theirs]
        if missing:
            raise ValueError(
                f"{where}: the weights lack {missing[0]!r}, which the model's config.json implies"
            )
        parts = [theirs[n] for n in link.theirs]
        used.update(link.theirs)
        want = expected[link.ours]
        value = (
            torch.cat([p.reshape(len(p), -1) for p in parts]).squeeze(-1) if link.kind == "qkv" else parts[0]
        )
        if link.kind != "same" and value.numel() == want.numel():
            value = value.reshape(want.shape)  # a Linear weight as a 1x1 Conv1d weight
        if value.shape != want.shape:
            source = link.theirs[0] if len(link.theirs) == 1 else "+".join(link.theirs)
            raise ValueError(
                f"{where}: tensor {source!r} has shape {tuple(parts[0].shape)}, but the model's "
                f"config.json implies {tuple(want.shape)} (sciddpm's {link.ours!r}); the weights "
                "and config.json belong to different models"
            )
        state[link.ours] = value.to(want.dtype)
    extra = sorted(set(theirs) - used)
    if extra:
        raise ValueError(
            f"{where}: tensor {extra[0]!r} has no place in the model its config.json describes "
            f"({len(extra)} such tensors); the weights and config.json belong to different models"
        )
    return state


def to_diffusers(links: Iterable[Link], state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers tensors from sciddpm's ``state`` along ``links`` (the inverse of :func:`from_diffusers`)."""
    out: dict[str, torch.Tensor] = {}
    for link in links:
        value = state[link.ours]
        if link.kind == "qkv":
            for name, part in zip(link.theirs, value.squeeze(-1).chunk(3), strict=True):
                out[name] = part.clone()
        elif link.kind == "conv1d":
            out[link.theirs[0]] = value.squeeze(-1).clone()
        else:
            out[link.theirs[0]] = value.clone()
    return out
