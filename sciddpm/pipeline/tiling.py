"""Tiled generation of domains larger than the training patch (1-3 spatial dims), with overlap blending.

At every sampler step the denoiser runs on overlapping tiles of the full-domain ``x_t`` (each
with its own slice of the full-domain condition) and the tile predictions are averaged with
weights that ramp linearly to small values at tile edges, so that every point is a smooth blend of
the tiles that cover it (MultiDiffusion, Bar-Tal et al. 2023, https://arxiv.org/abs/2302.08113,
which shows that averaging the per-tile updates is the least-squares fit to all of them). The
sampler then steps the whole domain at once, so tiles never disagree about ``x_t``. The network
only ever sees one tile, so its memory does not grow with the domain; the domain's ``x_t`` does,
unless the domain is sampled in **blocks** (:func:`sample_blocks`): blocks that partition it, each
sampled as a domain of its own grown by a margin on every side, from a noise field keyed by
position (:func:`sciddpm.seeding.field_noise`), so neighbouring blocks start from the same noise
where they overlap and agree on their shared border up to the margin's effect. Working memory is
then that of one grown block, whatever the domain's size. Climate fields (``sciddpm_climate``)
and microscopy images (``sciddpm_microscopy``) share it.
"""

from __future__ import annotations

import itertools
import numbers
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch

from sciddpm import seeding
from sciddpm.diffusion.loop import run
from sciddpm.diffusion.preconditioning import Preconditioned
from sciddpm.interfaces import Scheduler
from sciddpm.pipeline.pipeline import Pipeline
from sciddpm.progress import progress_bar

__all__ = ["block_layout", "sample_blocks", "sample_tiled", "slice_condition", "tile_origins", "tile_weight"]

#: ``(region, samples)``: a block's cells in the domain, one slice per spatial dim, and its samples.
Block = tuple[tuple[slice, ...], torch.Tensor]


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


def block_layout(
    shape: Sequence[int],
    block: Sequence[int],
    margin: Sequence[int],
    tile: Sequence[int],
    overlap: Sequence[int],
) -> list[tuple[tuple[slice, ...], tuple[slice, ...]]]:
    """``(outer, inner)`` regions of blocks of a domain ``shape``, in row-major order.

    The inner regions, ``block`` cells a side (shorter at the far edges), partition the domain.
    Each outer region is its inner one grown by at least ``margin`` cells on every side (cut at the
    domain's edges) out to the edges of the domain's own tiles (:func:`tile_origins` of ``tile``
    and ``overlap``), so a block is tiled exactly as the whole domain is where they overlap.
    Raises ValueError for lengths that differ from the shape's, a block under one cell, a negative
    margin, or a tile or overlap :func:`tile_origins` refuses.
    """
    shape, block, margin, tile, overlap = (
        tuple(int(v) for v in a) for a in (shape, block, margin, tile, overlap)
    )
    if not len(shape) == len(block) == len(margin) == len(tile) == len(overlap):
        raise ValueError(
            f"domain {shape}, block {block}, margin {margin}, tile {tile} and overlap {overlap} "
            "differ in length"
        )
    if any(b < 1 for b in block) or any(m < 0 for m in margin):
        raise ValueError(f"blocks are >= 1 cell and margins >= 0, got block {block}, margin {margin}")
    per_dim = []
    for size, b, m, t, o in zip(shape, block, margin, tile, overlap, strict=True):
        origins = tile_origins(size, t, o)
        spans = []
        for start in range(0, size, b):
            stop = min(start + b, size)
            lo = max(g for g in origins if g <= max(0, start - m))
            hi = min(g + t for g in origins if g + t >= min(size, stop + m))
            spans.append((slice(lo, hi), slice(start, stop)))
        per_dim.append(spans)
    return [(tuple(o for o, _ in spans), tuple(i for _, i in spans)) for spans in itertools.product(*per_dim)]


def _per_dim(value: Sequence[int] | int, dims: int, name: str) -> tuple[int, ...]:
    out = (int(value),) * dims if isinstance(value, numbers.Integral) else tuple(int(v) for v in value)
    if len(out) != dims:
        raise ValueError(
            f"{name} {out} has {len(out)} entries for {dims} spatial dims: give one number or {dims}"
        )
    return out


def _batch(n: int, batch_size: int | None) -> int:
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (or None: all {n} samples at once), got {batch_size}")
    return n if batch_size is None else int(batch_size)


def _check(pipe: Pipeline, shape: Sequence[int]) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    """The channel count, the patch and the domain ``shape``, checked against the pipeline."""
    if tuple(pipe.latent_shape) != tuple(pipe.data_shape):
        raise ValueError(
            "tiled generation needs an encoder that keeps the data shape (e.g. standardize); this "
            f"pipeline's latents are {pipe.latent_shape} for data {pipe.data_shape}"
        )
    c, *tile = pipe.data_shape
    domain = tuple(int(s) for s in shape)
    if len(domain) != len(tile):
        raise ValueError(
            f"the domain shape {domain} has {len(domain)} dims but the pipeline's patch {tuple(tile)} "
            f"has {len(tile)}"
        )
    return c, tuple(tile), domain


def _sample_domain(
    pipe: Pipeline,
    sched: Scheduler,
    condition: Any,
    shape: tuple[int, ...],
    overlaps: tuple[int, ...],
    noise: torch.Tensor,
    *,
    steps: int,
    seed: int,
    indices: Sequence[int],
    step_noise: Callable[[int], torch.Tensor] | None,
    progress: Any,
) -> torch.Tensor:
    """Samples ``(B, C, *shape)`` of one domain in tiles, from unit ``noise`` ``(B, C, *shape)``."""
    tile = tuple(pipe.data_shape[1:])
    starts = [tile_origins(size, t, o) for size, t, o in zip(shape, tile, overlaps, strict=True)]
    regions = [
        tuple(slice(o, o + t) for o, t in zip(origin, tile, strict=True))
        for origin in itertools.product(*starts)
    ]
    weight = tile_weight(tile, overlaps)
    total = torch.zeros(shape)
    for region in regions:
        total[region] += weight
    models = [pipe.denoiser_fn(slice_condition(condition, shape, r), scheduler=sched) for r in regions]

    def model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x_t)
        w = weight.to(x_t)
        for region, f in zip(regions, models, strict=True):
            out[(..., *region)] += f(x_t[(..., *region)], t) * w
            progress.update(1)
        return out / total.to(x_t)

    # Each tile's x0 estimate is blended; for every prediction type x0 is affine in the network's
    # output with the same coefficients in every tile, so this equals blending the outputs.
    denoise = Preconditioned(model, sched, "x0", raw=True)
    sched.set_timesteps(steps)
    x = run(denoise, sched, noise * sched.init_noise_sigma, seed=seed, indices=indices, step_noise=step_noise)
    return pipe.encoder.decode(x).float().cpu()


def _tile_count(shape: Sequence[int], tile: Sequence[int], overlaps: Sequence[int]) -> int:
    count = 1
    for size, t, o in zip(shape, tile, overlaps, strict=True):
        count *= len(tile_origins(size, t, o))
    return count


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
    batch_size: int | None = None,
    block: Sequence[int] | int | None = None,
    margin: Sequence[int] | int | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    """``n`` samples ``(n, C, *shape)`` of a domain larger than the pipeline's patch, in physical units.

    ``condition`` is one condition for the whole domain (see :func:`slice_condition` for what is
    cut per tile). Tiles are the pipeline's patch size, ``overlap`` cells (one number or one per
    dim) apart from disjoint. Without ``block`` the whole domain is one run: sample ``i`` starts
    from the noise of ``(seed, i)``, and with one tile covering the domain this is
    ``pipe.sample``. With ``block`` (cells per side, one number or one per dim) it is assembled
    from :func:`sample_blocks`, whose working memory does not grow with the domain (the returned
    tensor does). ``batch_size`` samples run at a time (default all ``n``); a sample does not
    depend on it. ``progress``: a bar over tile evaluations (None: on a terminal only). Raises
    ValueError for an encoder that changes the data's shape (a VAE: tiles live in data space), a
    ``shape`` of another dimensionality than the patch, a domain smaller than a tile, or a
    ``batch_size`` under 1.
    """
    c, tile, domain = _check(pipe, shape)
    if block is not None:
        out = torch.empty((n, c, *domain))
        for region, part in sample_blocks(
            pipe, n, condition, domain, block=block, margin=margin, overlap=overlap, steps=steps,
            scheduler=scheduler, seed=seed, batch_size=batch_size, progress=progress,
        ):  # fmt: skip
            out[(slice(None), slice(None), *region)] = part
        return out
    overlaps = _per_dim(overlap, len(tile), "overlap")
    sched = pipe.scheduler_for(scheduler)
    sched.set_timesteps(steps)
    batch = _batch(n, batch_size)
    total = n * len(sched.timesteps) * _tile_count(domain, tile, overlaps)
    parts = []
    with progress_bar(total, "tiled sampling", progress, unit="tile") as bar:
        for first in range(0, n, batch):
            count = min(batch, n - first)
            noise = seeding.noise_for((c, *domain), seed, first, count)
            x = _sample_domain(
                pipe, sched, condition, domain, overlaps, noise, steps=steps, seed=seed,
                indices=range(first, first + count), step_noise=None, progress=_Rows(bar, count),
            )  # fmt: skip
            parts.append(x)
    return torch.cat(parts)


def sample_blocks(
    pipe: Pipeline,
    n: int,
    condition: Any,
    shape: Sequence[int],
    *,
    block: Sequence[int] | int,
    margin: Sequence[int] | int | None = None,
    overlap: Sequence[int] | int = 8,
    steps: int = 50,
    scheduler: str | Mapping[str, Any] | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    progress: bool | None = None,
) -> Iterator[Block]:
    """``n`` samples of a domain ``shape``, yielded block by block as ``(region, (n, C, *block))``.

    The blocks of ``block`` cells a side partition the domain (:func:`block_layout`); each is
    sampled as its own tiled domain grown by ``margin`` cells on every side (default one patch)
    and cut back, ``batch_size`` samples at a time (default all). Sample ``i``'s initial and step
    noise come from position-keyed fields (:data:`~sciddpm.seeding.FIELD_NOISE`, chunks of the
    patch size), so neighbouring blocks start from the same noise where their grown regions
    overlap and differ on their border only by what the margin leaves out. Memory holds one grown
    block of ``batch_size`` samples and the finished block, whatever the domain's size: write each
    block out (or reduce it) as it comes. A block as large as the domain is one run from the field's
    noise (not ``pipe.sample``'s). Raises ValueError as :func:`sample_tiled` and :func:`block_layout`.
    """
    c, tile, domain = _check(pipe, shape)
    dims = len(tile)
    blocks = _per_dim(block, dims, "block")
    margins = tile if margin is None else _per_dim(margin, dims, "margin")
    overlaps = _per_dim(overlap, dims, "overlap")
    layout = block_layout(domain, blocks, margins, tile, overlaps)
    sched = pipe.scheduler_for(scheduler)
    sched.set_timesteps(steps)
    batch = _batch(n, batch_size)
    tiles = sum(_tile_count([r.stop - r.start for r in outer], tile, overlaps) for outer, _ in layout)
    with progress_bar(n * len(sched.timesteps) * tiles, "block sampling", progress, unit="tile") as bar:
        for outer, inner in layout:
            part_condition = slice_condition(condition, domain, outer)
            cut = tuple(slice(i.start - o.start, i.stop - o.start) for i, o in zip(inner, outer, strict=True))
            parts = []
            for first in range(0, n, batch):
                rows = range(first, min(first + batch, n))
                fields = _Fields(seed, rows, outer, c, tile)
                x = _sample_domain(
                    pipe, sched, part_condition, fields.size, overlaps, fields.initial(), steps=steps,
                    seed=seed, indices=rows, step_noise=fields.step, progress=_Rows(bar, len(rows)),
                )  # fmt: skip
                parts.append(x[(slice(None), slice(None), *cut)])
            yield inner, torch.cat(parts)


class _Fields:
    """Field noise of samples ``rows`` over ``region``: a field per channel, in chunks of ``chunk``."""

    def __init__(
        self, seed: int, rows: range, region: tuple[slice, ...], channels: int, chunk: tuple[int, ...]
    ) -> None:
        self.seed, self.rows, self.region, self.channels, self.chunk = seed, rows, region, channels, chunk
        self.size = tuple(r.stop - r.start for r in region)

    def _draw(self, stream: seeding.Stream, key: tuple[int, ...]) -> torch.Tensor:
        return torch.stack([
            torch.stack([
                seeding.field_noise(stream, self.seed, (i, *key, ch), self.region, self.chunk)
                for ch in range(self.channels)
            ])
            for i in self.rows
        ])  # fmt: skip

    def initial(self) -> torch.Tensor:
        """Unit noise ``(rows, channels, *region)`` at the run's start."""
        return self._draw(seeding.FIELD_NOISE, ())

    def step(self, k: int) -> torch.Tensor:
        """Unit noise for step ``k`` of a stochastic sampler."""
        return self._draw(seeding.FIELD_STEP_NOISE, (k,))


class _Rows:
    """Counts ``rows`` tile evaluations on ``bar`` per model call: the batch's samples each run the tile."""

    def __init__(self, bar: Any, rows: int) -> None:
        self.bar, self.rows = bar, rows

    def update(self, n: int = 1) -> None:
        self.bar.update(n * self.rows)
