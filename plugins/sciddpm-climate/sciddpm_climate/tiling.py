"""Tiled generation of domains larger than the training patch, with overlap blending.

At every sampler step the denoiser runs on overlapping tiles of the full-domain ``x_t`` (each
with its own slice of the full-domain condition: coarse field, static fields) and the tile
predictions are averaged with weights that ramp linearly to small values at tile edges, so
that every point is a smooth blend of the tiles that cover it (MultiDiffusion, Bar-Tal et al.
2023, https://arxiv.org/abs/2302.08113, which shows that averaging the per-tile updates is the
least-squares fit to all of them). The sampler then steps the whole domain at once, so tiles
never disagree about ``x_t``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from sciddpm.diffusion.loop import sample_callable
from sciddpm.pipeline import Pipeline

__all__ = ["sample_tiled", "tile_origins", "tile_weight"]


def tile_origins(size: int, tile: int, overlap: int) -> list[int]:
    """Origins of tiles of ``tile`` cells covering ``size``, at least ``overlap`` cells apart from full."""
    if tile > size:
        raise ValueError(f"a tile of {tile} is larger than the domain ({size})")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile={tile}), got {overlap}")
    step = tile - overlap
    out = list(range(0, size - tile + 1, step))
    if out[-1] + tile < size:
        out.append(size - tile)  # the last tile flush with the far edge
    return out


def tile_weight(h: int, w: int, overlap: Sequence[int]) -> torch.Tensor:
    """``(h, w)`` blending weights: 1 inside, a linear ramp over ``overlap`` cells at each edge."""

    def ramp(n: int, k: int) -> torch.Tensor:
        r = torch.ones(n)
        if k > 0:
            edge = (torch.arange(k) + 1.0) / (k + 1)
            r[:k] = torch.minimum(r[:k], edge)
            r[n - k :] = torch.minimum(r[n - k :], edge.flip(0))
        return r

    return ramp(h, overlap[0])[:, None] * ramp(w, overlap[1])[None, :]


def sample_tiled(
    pipe: Pipeline,
    n: int,
    condition: Mapping[str, Any] | None,
    shape: Sequence[int],
    *,
    overlap: Sequence[int] = (8, 8),
    steps: int = 50,
    scheduler: str | Mapping[str, Any] | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """``n`` samples ``(n, C, H, W)`` of a domain ``shape = (H, W)`` larger than the training patch.

    ``condition`` is one ``climate/xarray`` condition dict for the whole domain (its ``coarse``
    and ``static`` fields ``(., H, W)``, its ``time`` features); each tile gets its slice. Tiles
    are the pipeline's patch size, ``overlap`` cells apart from disjoint. Sample ``i`` starts from
    the noise of ``(seed, i)``; with one tile covering the domain this is ``pipe.sample``.
    A ``residual`` source's samples are residuals: add ``condition["coarse"]`` back.
    """
    if tuple(pipe.latent_shape) != tuple(pipe.data_shape):
        raise ValueError(
            "tiled generation needs an encoder that keeps the data shape (e.g. standardize); this "
            f"pipeline's latents are {pipe.latent_shape} for data {pipe.data_shape}"
        )
    if len(pipe.data_shape) != 3 or len(shape) != 2:
        raise ValueError(f"tiled generation is for 2-D fields: shape (H, W), got {tuple(shape)}")
    c, th, tw = pipe.data_shape
    H, W = (int(s) for s in shape)
    oy, ox = (int(o) for o in overlap)
    tiles = [(i, j) for i in tile_origins(H, th, oy) for j in tile_origins(W, tw, ox)]
    weight = tile_weight(th, tw, (oy, ox))
    total = torch.zeros(H, W)
    for i, j in tiles:
        total[i : i + th, j : j + tw] += weight
    models = []
    for i, j in tiles:
        part = None
        if condition is not None:
            part = {
                k: (v[..., i : i + th, j : j + tw] if k in ("coarse", "static") and v is not None else v)
                for k, v in condition.items()
            }
        models.append(pipe.denoiser_fn(part))

    def model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x_t)
        for (i, j), f in zip(tiles, models, strict=True):
            out[..., i : i + th, j : j + tw] += f(x_t[..., i : i + th, j : j + tw], t) * weight.to(x_t)
        return out / total.to(x_t)

    sched = pipe.scheduler_for(scheduler)
    # Each tile's x0 estimate is blended; for every prediction type x0 is affine in the network's
    # output with the same coefficients in every tile, so this equals blending the outputs.
    x = sample_callable(model, (n, c, H, W), sched, steps, "x0", seed=seed)
    return pipe.encoder.decode(x).float().cpu()
