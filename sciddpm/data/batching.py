"""Batching samples and picking spread subsets of a source.

:func:`collate` stacks samples into ``(x, raw conditions, mask)``; :func:`spread_indices` picks a
seeded subset spread over a source, for statistics estimated from part of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from sciddpm.interfaces import Conditioner, Sample

__all__ = ["collate", "spread_indices"]


def spread_indices(total: int, count: int, seed: int = 0) -> list[int]:
    """``min(count, total)`` distinct indices of ``range(total)``, seeded random, in increasing order.

    For statistics estimated from part of a source: the first ``count`` samples of a time-sorted
    source (a climate record, a microscopy time-lapse) would all come from its beginning.
    Increasing order keeps reads of chunked stores sequential.
    """
    if count >= total:
        return list(range(total))
    g = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(total, generator=g)[:count].tolist())


def collate(
    samples: Sequence[Sample], conditioner: Conditioner | None = None
) -> tuple[torch.Tensor, Any, torch.Tensor | None]:
    """Batch samples into ``(x (B, C, *spatial), raw conditions, mask or None)``.

    Raw conditions are batched by ``conditioner.collate`` when given (a LongTensor for class
    labels), else returned as a list, or None when no sample has one. The mask is None when no
    sample has one; samples without a mask count as fully valid.
    """
    if not samples:
        raise ValueError("collate got an empty list of samples")
    x = torch.stack([s.x for s in samples])
    raws = [s.condition for s in samples]
    if conditioner is not None:
        cond = conditioner.collate(raws)
    else:
        cond = None if all(r is None for r in raws) else raws
    if all(s.mask is None for s in samples):
        mask = None
    else:
        mask = torch.stack(
            [torch.ones_like(s.x) if s.mask is None else s.mask.expand_as(s.x) for s in samples]
        )
    return x, cond, mask
