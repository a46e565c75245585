"""Coarse fields for downscaling: area-weighted block means, upsampled back to the fine grid.

A downscaling model (``climate/xarray`` with ``coarsen = f``) is conditioned on the target
coarse-grained by ``f`` and interpolated back, the input a statistical downscaling method sees
(e.g. CorrDiff, Mardani et al. 2023, https://arxiv.org/abs/2309.15214, conditions on the coarse
field interpolated to the fine grid). The coarse-graining is conservative: each f x f block gets
the cell-area-weighted mean of its valid (non-NaN) points. The upsampling is bilinear
(``align_corners=False``: coarse values sit at block centres; beyond the outermost centres the
edge value is held), which is also the baseline a downscaling model must beat.
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
    valid point take the mean of the field's valid blocks (per leading index), so that the
    interpolation near a coast is not pulled towards 0.
    """
    return fill_and_upsample(*block_mean(x, weight, factor), factor)


def fill_and_upsample(mean: torch.Tensor, weight: torch.Tensor, factor: int) -> torch.Tensor:
    """Coarse values ``mean`` (``(..., h, w)``, weight 0 = missing) filled and upsampled bilinearly.

    Missing coarse cells take the weighted mean of the valid ones (per leading index).
    """
    total = (mean * weight).sum((-2, -1), keepdim=True)
    fill = total / weight.sum((-2, -1), keepdim=True).clamp_min(1e-12)
    return upsample(torch.where(weight > 0, mean, fill), factor)
