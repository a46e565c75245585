"""Coarse fields for downscaling: area-weighted block means, upsampled back to the fine grid.

A downscaling model (``climate/xarray`` with ``coarsen = f``) is conditioned on the target
coarse-grained by ``f`` and interpolated back, the input a statistical downscaling method sees
(e.g. CorrDiff, Mardani et al. 2023, https://arxiv.org/abs/2309.15214, conditions on the coarse
field interpolated to the fine grid). The coarse-graining is conservative: each f x f block gets
the cell-area-weighted mean of its valid (non-NaN) points. The upsampling is bilinear
(``align_corners=False``: coarse values sit at block centres; beyond the outermost centres the
edge value is held) over the valid blocks, which is also the baseline a downscaling model must beat.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["block_mean", "coarse_field", "fill_and_upsample", "upsample"]


def block_mean(x: torch.Tensor, weight: torch.Tensor, factor: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted means over ``factor x factor`` blocks of ``(..., h, w)`` and the blocks' total weight.

    ``weight`` (broadcast to ``x``) is 0 at missing points; a block with no weight gets 0.
    """
    h, w = x.shape[-2:]
    if h % factor or w % factor:
        raise ValueError(f"a ({h}, {w}) field does not divide into {factor} x {factor} blocks")
    weight = weight.expand_as(x).to(x.dtype)
    lead = x.shape[:-2]
    flat = (x * weight).reshape(-1, 1, h, w), weight.reshape(-1, 1, h, w)
    num, den = (F.avg_pool2d(t, factor) for t in flat)
    mean = torch.where(den > 0, num / den.clamp_min(1e-12), torch.zeros_like(num))
    shape = (*lead, h // factor, w // factor)
    return mean.reshape(shape), den.reshape(shape)


def upsample(coarse: torch.Tensor, factor: int) -> torch.Tensor:
    """Bilinear interpolation of ``(..., h, w)`` block means to ``(..., h * factor, w * factor)``."""
    h, w = coarse.shape[-2:]
    out = F.interpolate(
        coarse.reshape(-1, 1, h, w), scale_factor=factor, mode="bilinear", align_corners=False
    )
    return out.reshape(*coarse.shape[:-2], h * factor, w * factor)


def coarse_field(x: torch.Tensor, weight: torch.Tensor, factor: int) -> torch.Tensor:
    """``x`` coarse-grained by ``factor`` (area-weighted, NaN-aware) and interpolated back bilinearly.

    ``x`` is ``(..., h, w)`` with missing values already 0 and ``weight`` 0 there. Blocks with no
    valid point are left out of the interpolation (:func:`fill_and_upsample`), so that near a
    coast an ocean field is interpolated from ocean blocks only.
    """
    return fill_and_upsample(*block_mean(x, weight, factor), factor)


def fill_and_upsample(mean: torch.Tensor, weight: torch.Tensor, factor: int) -> torch.Tensor:
    """Coarse values ``mean`` (``(..., h, w)``, weight 0 = missing) upsampled bilinearly, NaN-aware.

    Missing coarse cells are left out of the interpolation (normalised interpolation: the
    bilinear weights of the valid neighbours are renormalised to sum to 1), so a coastal ocean
    point is interpolated from ocean cells only; a fine point with no valid neighbour takes the
    weighted mean of the valid cells (per leading index). With no missing cell this is
    :func:`upsample`.
    """
    have = (weight > 0).to(mean.dtype)
    total = (mean * weight).sum((-2, -1), keepdim=True)
    fill = total / weight.sum((-2, -1), keepdim=True).clamp_min(1e-12)
    num, den = upsample(mean * have, factor), upsample(have, factor)
    ok = den > 1e-6
    return torch.where(ok, num / den.clamp_min(1e-6), fill.expand_as(num))
