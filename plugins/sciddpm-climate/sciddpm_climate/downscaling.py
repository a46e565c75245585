"""The coarse condition for downscaling: ``condition["coarse"]``, the residual and its regression mean.

A downscaling model (``climate/xarray`` with ``coarsen = f``) is conditioned on the target
coarse-grained by ``f`` and interpolated back, the input a statistical downscaling method sees
(e.g. CorrDiff, Mardani et al. 2023, https://arxiv.org/abs/2309.15214, conditions on the coarse
field interpolated to the fine grid). The coarse-graining is conservative: each f x f block gets
the cell-area-weighted mean of its valid (non-NaN) points. The upsampling is bilinear
(``align_corners=False``: coarse values sit at block centres; beyond the outermost centres the
edge value is held) over the valid blocks, which is also the baseline a downscaling model must beat.

The field arithmetic (:func:`block_mean`, :func:`upsample`, :func:`coarse_field`,
:func:`fill_and_upsample`) works on tensors alone. :class:`DownscalingCondition` applies it to
a source's samples: the coarse field of the target patch or of a separate coarse dataset
(checked by :func:`check_coarse_alignment`), the regression mean (:func:`load_regression`) and,
with ``residual``, the target minus that mean.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from sciddpm_climate.axes import Axes, GridMismatchError
from sciddpm_climate.regression import RegressionMean

__all__ = [
    "CoarseWindow",
    "Downscaled",
    "DownscalingCondition",
    "GridSource",
    "block_mean",
    "check_coarse_alignment",
    "check_downscaling_options",
    "coarse_field",
    "fill_and_upsample",
    "load_regression",
    "upsample",
]


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


def check_downscaling_options(
    coarsen: int | None, residual: bool, regression: str | None, patch: tuple[int, int]
) -> None:
    """Raise ValueError unless ``coarsen``, ``residual`` and ``regression`` fit together and the patch.

    ``regression`` needs ``residual``, ``residual`` needs ``coarsen``, and the ``(h, w)`` patch
    must divide into ``coarsen x coarsen`` blocks.
    """
    h, w = patch
    if regression is not None and not residual:
        raise ValueError("regression gives the mean a residual is taken from: set residual = true too")
    if residual and coarsen is None:
        raise ValueError("residual = true models the target minus its coarse field: set coarsen too")
    if coarsen is not None and (h % coarsen or w % coarsen):
        raise ValueError(
            f"patch {[h, w]} does not divide into coarsen={coarsen} blocks; choose a patch "
            f"that is a multiple of {coarsen} in both directions"
        )


class GridSource(Protocol):
    """What :func:`check_coarse_alignment` reads of a source (an ``XarraySource``).

    ``lat``/``lon``: normalised coordinates in degrees, ``(H,)`` and ``(W,)``; ``n_times``:
    time steps; ``axes`` and ``ds``: the dimension names and the ``xarray.Dataset`` (for the
    time values); ``origins_lat``/``origins_lon``: patch origins in grid cells.
    """

    lat: np.ndarray
    lon: np.ndarray
    n_times: int
    axes: Axes
    ds: Any
    origins_lat: list[int]
    origins_lon: list[int]


def check_coarse_alignment(target: GridSource, coarse: GridSource, factor: int) -> None:
    """Raise unless ``coarse`` (the separate coarse dataset's source) lines up with ``target``.

    Its grid must be the target grid coarsened by ``factor`` (else :class:`GridMismatchError`
    naming both shapes), its times the target's, and every patch origin of ``target`` must fall
    on a coarse cell (else ValueError).
    """
    f = factor
    H, W = target.lat.size, target.lon.size
    c = coarse
    if H % f or W % f or (c.lat.size, c.lon.size) != (H // f, W // f):
        raise GridMismatchError(
            f"the coarse dataset is on a ({c.lat.size}, {c.lon.size}) (lat, lon) grid but the target "
            f"grid ({H}, {W}) coarsened by {f} is ({H / f:g}, {W / f:g}); give a coarse dataset on "
            "that grid or change coarsen"
        )
    if c.n_times != target.n_times or (
        target.axes.time is not None
        and not np.array_equal(c.ds[c.axes.time].values, target.ds[target.axes.time].values)
    ):
        raise ValueError(
            f"the coarse dataset has {c.n_times} times and the target {target.n_times}, or other "
            "time values; give both the same times (time_range applies to both)"
        )
    off = [o for o in (*target.origins_lat, *target.origins_lon) if o % f]
    if off:
        raise ValueError(
            f"patch origins {off} do not fall on coarse cells of {f} x {f}: with a coarse dataset "
            f"the patch and stride must be multiples of {f} (grid {H} x {W})"
        )


def load_regression(path: str, sample_shape: tuple[int, int, int], channels: list[str]) -> RegressionMean:
    """The regression mean saved in ``path``, checked against a source's ``(C, h, w)`` and channel names.

    Raises FileNotFoundError when ``path`` holds no saved regression, ValueError when it was
    trained on other samples.
    """
    regression = RegressionMean.load(path)
    want = regression.meta
    if list(want["data_shape"]) != list(sample_shape) or want["channels"] != channels:
        raise ValueError(
            f"the regression in {path!r} was trained on {want['channels']} samples of "
            f"shape {want['data_shape']}; this source gives {channels} of shape "
            f"{list(sample_shape)}"
        )
    return regression


#: Reads a separate coarse dataset: ``(t, lat rows, lon columns)`` of its grid -> values
#: ``(C, h / f, w / f)`` float32 with missing set to 0, and their validity (bool).
CoarseWindow = Callable[[int, slice, slice], tuple[np.ndarray, np.ndarray]]


class Downscaled(NamedTuple):
    """A sample after :meth:`DownscalingCondition.apply`, all ``(C, h, w)`` in physical units."""

    x: torch.Tensor  #: the target, or with ``residual`` the target minus ``mean`` (0 where missing)
    coarse: torch.Tensor  #: ``condition["coarse"]``
    mean: torch.Tensor | None  #: the regression mean (``condition["mean"]``); None without one


class DownscalingCondition:
    """The coarse condition of a source's patches, and with ``residual`` the residual target.

    ``factor``: the coarsening ``f``; ``weights``: the source grid's ``(H,)`` float32 latitude
    cell-area weights (mean 1); ``coarse_window``: reads a separate coarse dataset (see
    :data:`CoarseWindow`), None to coarse-grain the target itself; ``regression``: a
    :class:`~sciddpm_climate.regression.RegressionMean` whose mean the residual is taken from
    instead of the coarse field.
    """

    def __init__(
        self,
        factor: int,
        weights: np.ndarray,
        *,
        residual: bool = False,
        coarse_window: CoarseWindow | None = None,
        regression: RegressionMean | None = None,
    ) -> None:
        self.factor, self.weights, self.residual = factor, weights, residual
        self.coarse_window, self.regression = coarse_window, regression

    def of_target(self, x: torch.Tensor, valid: np.ndarray | torch.Tensor, y0: int = 0) -> torch.Tensor:
        """The coarse field of a ``(C, h, w)`` patch ``x`` at latitude row ``y0``, interpolated back.

        Block means are weighted by cell area and validity (``valid`` False at NaN points, which
        are 0 in ``x``); :func:`coarse_field` does the work.
        """
        h = x.shape[-2]
        weight = torch.as_tensor(np.asarray(valid), dtype=torch.float32) * torch.from_numpy(
            self.weights[y0 : y0 + h, None]
        )
        return coarse_field(x, weight, self.factor)

    def field(self, x: torch.Tensor, valid: np.ndarray, t: int, y0: int, x0: int) -> torch.Tensor:
        """``condition["coarse"]`` ``(C, h, w)`` of the patch ``x`` at time ``t``, origin ``(y0, x0)``."""
        if self.coarse_window is None:
            return self.of_target(x, valid, y0)
        f = self.factor
        h, w = x.shape[-2:]
        values, have = self.coarse_window(t, slice(y0 // f, (y0 + h) // f), slice(x0 // f, (x0 + w) // f))
        mean = torch.from_numpy(np.ascontiguousarray(values))
        return fill_and_upsample(mean, torch.from_numpy(have.astype(np.float32)), f)

    def apply(
        self,
        x: torch.Tensor,
        valid: np.ndarray,
        t: int,
        y0: int,
        x0: int,
        static: torch.Tensor | None = None,
        time: torch.Tensor | None = None,
    ) -> Downscaled:
        """The coarse condition, regression mean and (with ``residual``) residual of one sample.

        ``x``/``valid``: the target patch ``(C, h, w)`` (missing points 0 / False) at time ``t``
        and origin ``(y0, x0)``; ``static`` ``(S, h, w)`` and ``time`` ``(4,)`` feed the regression.
        """
        coarse = self.field(x, valid, t, y0, x0)
        mean = coarse
        if self.regression is not None:
            with torch.no_grad():
                mean = self.regression({"coarse": coarse, "static": static, "time": time})
        if self.residual:
            # The fine-scale part only; missing points stay 0 (their loss weight is 0 anyway).
            x = torch.where(torch.from_numpy(valid), x - mean, torch.zeros_like(x))
        return Downscaled(x, coarse, mean if self.regression is not None else None)
