"""Tiled generation of climate domains larger than the training patch: the core's, in 2-D.

The mechanism (overlap blending of per-tile denoiser outputs at every step, MultiDiffusion) lives
in :mod:`sciddpm.pipeline.tiling`, shared with the microscopy plugin; this module keeps the
plugin's names. Each tile gets its slice of the ``coarse`` and ``static`` fields of a
``climate/xarray`` condition; its ``time`` features are passed whole.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from sciddpm.pipeline import Pipeline
from sciddpm.pipeline import tiling as core
from sciddpm.pipeline.tiling import tile_origins

__all__ = ["sample_tiled", "tile_origins", "tile_weight"]


def tile_weight(h: int, w: int, overlap: Sequence[int]) -> torch.Tensor:
    """``(h, w)`` blending weights: 1 inside, a linear ramp over ``overlap`` cells at each edge."""
    return core.tile_weight((h, w), overlap)


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
    batch_size: int | None = None,
    block: Sequence[int] | int | None = None,
    margin: Sequence[int] | int | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    """``n`` samples ``(n, C, H, W)`` of a domain ``shape = (H, W)`` larger than the training patch.

    ``condition`` is one ``climate/xarray`` condition dict for the whole domain (its ``coarse``
    and ``static`` fields ``(., H, W)``, its ``time`` features); each tile gets its slice. Tiles
    are the pipeline's patch size, ``overlap`` cells apart from disjoint. Sample ``i`` starts from
    the noise of ``(seed, i)``; with one tile covering the domain this is ``pipe.sample``.
    ``block`` (cells a side) samples the domain block by block, each grown by ``margin`` (default
    one patch), in memory that does not grow with the domain (see
    :func:`sciddpm.pipeline.tiling.sample_blocks`); ``batch_size`` members run at a time;
    ``progress`` shows a bar over tile evaluations (None: on a terminal only).
    A ``residual`` source's samples are residuals: add ``condition["coarse"]`` back. Raises what
    :func:`sciddpm.pipeline.tiling.sample_tiled` raises, and ValueError for a shape that is not 2-D.
    """
    if len(pipe.data_shape) != 3 or len(shape) != 2:
        raise ValueError(f"tiled generation is for 2-D fields: shape (H, W), got {tuple(shape)}")
    return core.sample_tiled(
        pipe, n, condition, shape, overlap=overlap, steps=steps, scheduler=scheduler, seed=seed,
        batch_size=batch_size, block=block, margin=margin, progress=progress,
    )  # fmt: skip
