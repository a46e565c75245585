"""Tiled generation of domains larger than the training patch (1-3 spatial dims), with overlap blending.

At every sampler step the denoiser runs on overlapping tiles of the full-domain ``x_t`` (each
with its own slice of the full-domain condition) and the tile predictions are averaged with
weights that ramp linearly to small values at tile edges, so that every point is a smooth blend of
the tiles that cover it (MultiDiffusion, Bar-Tal et al. 2023, https://arxiv.org/abs/2302.08113,
which shows that averaging the per-tile updates is the least-squares fit to all of them). The
sampler then steps the whole domain at once, so tiles never disagree about ``x_t``. The network
only ever sees one tile, so its memory does not grow with the domain; the domain's ``x_t`` does.
Climate fields (``sciddpm_climate``) and microscopy images (``sciddpm_microscopy``) share it.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from sciddpm.diffusion.loop import sample_callable
from sciddpm.pipeline.pipeline import Pipeline

__all__ = ["sample_tiled", "slice_condition", "tile_origins", "tile_weight"]


def tile_origins(size: int, tile: int, overlap: int) -> list[int]:
    """Origins of tiles of ``tile`` cells covering ``size``, at least ``overlap`` cells apart from full.

    The last tile is flush with the far edge. Raises ValueError for a tile larger than the domain
    or an overlap outside ``[0, tile)``.
    """
    if tile > size:
        raise ValueError(f"a tile of {tile} is larger than the domain ({size})")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile={tile}), got {overlap}")
    step = tile - overlap
    out = list(range(0, size - tile + 1, step))
    if out[-1] + tile < size:
        out.append(size - tile)
    return out


def tile_weight(size: Sequence[int], overlap: Sequence[int]) -> torch.Tensor:
    """Blending weights ``size`` of one tile: 1 inside, a linear ramp over ``overlap[d]`` cells at each edge.

    The product of 1-D ramps, one per dim; raises ValueError when the lengths differ.
    """
    sizes, overlaps = tuple(size), tuple(overlap)
    if len(sizes) != len(overlaps):
        raise ValueError(f"tile size {sizes} and overlap {overlaps} have different lengths")

    def ramp(n: int, k: int) -> torch.Tensor:
        r = torch.ones(n)
        if k > 0:
            edge = (torch.arange(k) + 1.0) / (k + 1)
            r[:k] = torch.minimum(r[:k], edge)
            r[n - k :] = torch.minimum(r[n - k :], edge.flip(0))
        return r

    weight = torch.ones(())
    for n, k in zip(sizes, overlaps, strict=True):
        weight = weight[..., None] * ramp(n, k)
    return weight


def slice_condition(condition: Any, shape: Sequence[int], region: tuple[slice, ...]) -> Any:
    """The part of a full-domain ``condition`` that a tile at ``region`` sees.

    Every tensor (or array) whose trailing dims equal the domain ``shape`` is cut to ``region``;
    mappings, lists and tuples are sliced item by item, anything else (a class label, time
    features) is passed whole. So a microscopy input image ``(C, H, W)`` or a climate dict of
    ``coarse``/``static`` fields and ``time`` features both work.
    """
    shape = tuple(shape)
    if isinstance(condition, Mapping):
        return {k: slice_condition(v, shape, region) for k, v in condition.items()}
    if isinstance(condition, (list, tuple)):
        return type(condition)(slice_condition(v, shape, region) for v in condition)
    spatial = getattr(condition, "shape", None)
    if spatial is not None and len(spatial) >= len(shape) and tuple(spatial[-len(shape) :]) == shape:
        return condition[(..., *region)]
    return condition


def sample_tiled(
    pipe: Pipeline,
    n: int,
    condition: Any,
    shape: Sequence[int],
    *,
    overlap: Sequence[int] | int = 8,
    steps: int = 50,
    scheduler: str | Mapping[str, Any] | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """``n`` samples ``(n, C, *shape)`` of a domain larger than the pipeline's patch, in physical units.

    ``condition`` is one condition for the whole domain (see :func:`slice_condition` for what is
    cut per tile). Tiles are the pipeline's patch size, ``overlap`` cells (one number or one per
    dim) apart from disjoint. Sample ``i`` starts from the noise of ``(seed, i)``; with one tile
    covering the domain this is ``pipe.sample``. Raises ValueError for an encoder that changes the
    data's shape (a VAE: tiles live in data space), a ``shape`` of another dimensionality than the
    patch, or a domain smaller than a tile.
    """
    if tuple(pipe.latent_shape) != tuple(pipe.data_shape):
        raise ValueError(
            "tiled generation needs an encoder that keeps the data shape (e.g. standardize); this "
            f"pipeline's latents are {pipe.latent_shape} for data {pipe.data_shape}"
        )
    c, *tile = pipe.data_shape
    shape = tuple(int(s) for s in shape)
    if len(shape) != len(tile):
        raise ValueError(
            f"the domain shape {shape} has {len(shape)} dims but the pipeline's patch {tuple(tile)} "
            f"has {len(tile)}"
        )
    overlaps = (int(overlap),) * len(tile) if isinstance(overlap, int) else tuple(int(o) for o in overlap)
    starts = [tile_origins(size, t, o) for size, t, o in zip(shape, tile, overlaps, strict=True)]
    regions = [
        tuple(slice(o, o + t) for o, t in zip(origin, tile, strict=True))
        for origin in itertools.product(*starts)
    ]
    weight = tile_weight(tuple(tile), overlaps)
    total = torch.zeros(shape)
    for region in regions:
        total[region] += weight
    models = [pipe.denoiser_fn(slice_condition(condition, shape, region)) for region in regions]

    def model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x_t)
        w = weight.to(x_t)
        for region, f in zip(regions, models, strict=True):
            out[(..., *region)] += f(x_t[(..., *region)], t) * w
        return out / total.to(x_t)

    sched = pipe.scheduler_for(scheduler)
    # Each tile's x0 estimate is blended; for every prediction type x0 is affine in the network's
    # output with the same coefficients in every tile, so this equals blending the outputs.
    x = sample_callable(model, (n, c, *shape), sched, steps, "x0", seed=seed)
    return pipe.encoder.decode(x).float().cpu()
