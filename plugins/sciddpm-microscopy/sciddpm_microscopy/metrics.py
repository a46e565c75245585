"""Restoration metrics for fluorescence microscopy: CARE-style PSNR/SSIM/NRMSE, Fourier ring
correlation resolution, and the calibration of an ensemble's uncertainty.

Conventions (Weigert et al. 2018, "Content-aware image restoration", Nat. Methods 15:1090):

- The ground truth is normalised by its own percentiles, ``t_n = (t - p_lo) / (p_hi - p_lo)``
  with ``(p_lo, p_hi)`` the 0.1 and 99.9 percentiles, and the prediction is mapped by the affine
  ``a * prediction + b`` that minimises the MSE to ``t_n`` (csbdeep's ``normalize_minmse``), so a
  restoration is not penalised for an arbitrary intensity scale or offset. PSNR, SSIM and NRMSE
  are computed on these normalised images with data range 1, i.e. the target's 0.1-99.9
  percentile range in physical units. ``percentiles=(0, 100)`` gives the target's max - min.
- NRMSE is ``RMSE / (p_hi - p_lo)``, so ``PSNR = -20 log10(NRMSE)``; with ``percentiles=(0, 100)``
  it equals scikit-image's ``normalized_root_mse(..., normalization="min-max")``.
- FRC/FSC (Nieuwenhuizen et al. 2013, "Measuring image resolution in optical nanoscopy", Nat.
  Methods 10:557) bins Fourier coefficients by physical frequency (cycles per unit of
  ``pixel_size``) and reports the resolution ``1 / f`` where the curve first falls below 1/7.

The functions take one image (numpy or torch); the :class:`~sciddpm.interfaces.Metric` classes
take batches ``(..., *spatial)`` and average the per-image scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sciddpm.interfaces import Metric

__all__ = [
    "CARE_PERCENTILES",
    "FRC_THRESHOLD",
    "CoverageConfig",
    "CoverageMetric",
    "FRCConfig",
    "FRCMetric",
    "NRMSEMetric",
    "PSNRMetric",
    "RestorationConfig",
    "SSIMConfig",
    "SSIMMetric",
    "affine_scale",
    "error_std_spearman",
    "fourier_ring_correlation",
    "frc_resolution",
    "interval_coverage",
    "nrmse",
    "psnr",
    "ssim",
]

#: CARE's percentiles for normalising the ground truth (Weigert et al. 2018, Methods).
CARE_PERCENTILES: tuple[float, float] = (0.1, 99.9)
#: The fixed FRC threshold of Nieuwenhuizen et al. 2013.
FRC_THRESHOLD = 1 / 7


# --- input handling -------------------------------------------------------------------------------


def _array(x: Any, name: str) -> np.ndarray:
    """``x`` (numpy, torch, nested sequence) as finite float64."""
    if hasattr(x, "detach"):  # a torch tensor, on any device
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf; mask or fill missing pixels before scoring")
    return arr


def _same_shape(a: np.ndarray, b: np.ndarray, names: tuple[str, str]) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{names[0]} has shape {a.shape} but {names[1]} has shape {b.shape}; they must match"
        )


def _check_percentiles(percentiles: Sequence[float]) -> tuple[float, float]:
    lo, hi = (float(p) for p in percentiles)
    if not 0 <= lo < hi <= 100:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {tuple(percentiles)}")
    return lo, hi


def _normalised(
    prediction: Any, target: Any, scale: bool, percentiles: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """CARE's pair: target scaled by its percentiles, prediction affinely fitted (or mapped alike)."""
    p, t = _array(prediction, "prediction"), _array(target, "target")
    _same_shape(p, t, ("prediction", "target"))
    lo_q, hi_q = _check_percentiles(percentiles)
    lo, hi = np.percentile(t, [lo_q, hi_q])
    if hi <= lo:
        raise ValueError(
            f"the target's {lo_q}-{hi_q} percentile range is zero (a constant or almost constant image, "
            f"value {lo:g}); the data range is undefined. Score a target with structure, or widen "
            "percentiles, e.g. (0, 100)"
        )
    t_n = (t - lo) / (hi - lo)
    p_n = _affine_fit(p, t_n) if scale else (p - lo) / (hi - lo)
    return p_n, t_n


def _affine_fit(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    pc = p - p.mean()
    var = float(np.vdot(pc, pc))
    # A constant prediction has no scale to fit: the best affine map is the target's mean.
    alpha = float(np.vdot(pc, t - t.mean())) / var if var > 0 else 0.0
    return alpha * pc + t.mean()


# --- PSNR / SSIM / NRMSE --------------------------------------------------------------------------


def affine_scale(prediction: Any, target: Any) -> np.ndarray:
    """The prediction after the affine map ``a * prediction + b`` with least MSE to ``target``.

    Closed-form least squares, ``a = cov(p, t) / var(p)``, ``b = mean(t) - a mean(p)`` (csbdeep's
    ``normalize_minmse``; Weigert et al. 2018, Methods). A constant prediction maps to
    ``mean(target)``. ``prediction`` and ``target`` have any equal shape; the result is float64 in
    the target's units.

    Raises:
        ValueError: the shapes differ, or either contains NaN/inf.
    """
    p, t = _array(prediction, "prediction"), _array(target, "target")
    _same_shape(p, t, ("prediction", "target"))
    return _affine_fit(p, t)


def psnr(
    prediction: Any,
    target: Any,
    scale: bool = True,
    percentiles: Sequence[float] = CARE_PERCENTILES,
) -> float:
    """Peak signal-to-noise ratio in dB, CARE convention (Weigert et al. 2018).

    ``10 log10(1 / MSE(p_n, t_n))`` with ``t_n`` the target normalised by its ``percentiles``
    and ``p_n`` the prediction affinely fitted to ``t_n`` (``scale=True``) or mapped by the same
    normalisation (``scale=False``): the data range is the target's percentile range. Computed by
    ``skimage.metrics.peak_signal_noise_ratio``; identical images give ``inf`` (about 300 dB after
    the floating-point affine fit). ``prediction``
    and ``target`` are one image or stack of any equal shape.

    Raises:
        ValueError: the shapes differ, NaN/inf, bad ``percentiles``, or a target whose percentile
            range is zero.
    """
    from skimage.metrics import peak_signal_noise_ratio

    p_n, t_n = _normalised(prediction, target, scale, percentiles)
    with np.errstate(divide="ignore"):  # MSE 0 -> inf dB, the best value
        return float(peak_signal_noise_ratio(t_n, p_n, data_range=1.0))


def nrmse(
    prediction: Any,
    target: Any,
    scale: bool = True,
    percentiles: Sequence[float] = CARE_PERCENTILES,
) -> float:
    """Normalised RMSE ``RMSE(p_n, t_n)`` = RMSE divided by the target's percentile range.

    The same normalisation and affine fit as :func:`psnr` (CARE's NRMSE, Weigert et al. 2018), so
    ``psnr == -20 log10(nrmse)``. With ``percentiles=(0, 100)`` and ``scale=False`` it equals
    ``skimage.metrics.normalized_root_mse(target, prediction, normalization="min-max")``. 0 for
    identical images; dimensionless.

    Raises:
        ValueError: as :func:`psnr`.
    """
    from skimage.metrics import mean_squared_error

    p_n, t_n = _normalised(prediction, target, scale, percentiles)
    return float(np.sqrt(mean_squared_error(t_n, p_n)))


def ssim(
    prediction: Any,
    target: Any,
    scale: bool = True,
    percentiles: Sequence[float] = CARE_PERCENTILES,
    win_size: int = 7,
) -> float:
    """Mean structural similarity (Wang et al. 2004) of a 2-D image or 3-D stack, CARE convention.

    Computed by ``skimage.metrics.structural_similarity`` (uniform ``win_size`` window, its
    defaults otherwise) on the normalised pair of :func:`psnr` with ``data_range=1``. The whole
    array is one image: score channels or batches with :class:`SSIMMetric`. 1 for identical
    images.

    Raises:
        ValueError: the shapes differ, the array is not 2-D or 3-D, the window does not fit in
            the image, NaN/inf, bad ``percentiles``, or a target whose percentile range is zero.
    """
    from skimage.metrics import structural_similarity

    p_n, t_n = _normalised(prediction, target, scale, percentiles)
    if t_n.ndim not in (2, 3):
        raise ValueError(f"ssim takes a 2-D image or a 3-D stack, got shape {t_n.shape}")
    if win_size < 3 or win_size % 2 == 0:
        raise ValueError(f"win_size must be odd and >= 3, got {win_size}")
    if min(t_n.shape) < win_size:
        raise ValueError(
            f"SSIM's {win_size}-pixel window does not fit in an image of shape {t_n.shape}; "
            "pass a smaller odd win_size"
        )
    return float(structural_similarity(t_n, p_n, data_range=1.0, win_size=win_size))


# --- Fourier ring / shell correlation -------------------------------------------------------------


def _pixel_sizes(pixel_size: float | Sequence[float], ndim: int) -> tuple[float, ...]:
    sizes = (float(pixel_size),) * ndim if np.isscalar(pixel_size) else tuple(map(float, pixel_size))  # type: ignore[arg-type]
    if len(sizes) != ndim:
        raise ValueError(f"pixel_size has {len(sizes)} entries for a {ndim}-D image; give one per axis")
    if not all(s > 0 and np.isfinite(s) for s in sizes):
        raise ValueError(f"pixel_size must be positive, got {pixel_size}")
    return sizes


def _ring_sums(
    a: Any, b: Any, pixel_size: float | Sequence[float], tukey_alpha: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Frequencies and per-ring sums of ``Re F_a F_b*``, ``|F_a|^2``, ``|F_b|^2``."""
    from scipy.signal.windows import tukey

    a, b = _array(a, "a"), _array(b, "b")
    _same_shape(a, b, ("a", "b"))
    if a.ndim not in (2, 3):
        raise ValueError(
            f"Fourier ring/shell correlation takes a 2-D image or 3-D stack, got shape {a.shape}"
        )
    if min(a.shape) < 8:
        raise ValueError(f"FRC needs at least 8 pixels along every axis, got shape {a.shape}")
    if not 0 <= tukey_alpha <= 1:
        raise ValueError(f"tukey_alpha must be in [0, 1], got {tukey_alpha}")
    for name, x in (("a", a), ("b", b)):
        if np.ptp(x) == 0:
            raise ValueError(f"image {name} is constant; FRC needs structure in both images")
    sizes = _pixel_sizes(pixel_size, a.ndim)

    # Mean removed, then a separable Tukey taper: the FFT's periodic wrap-around would otherwise
    # add a cross of spurious, perfectly correlated power along the frequency axes.
    window = np.ones(a.shape)
    for axis, n in enumerate(a.shape):
        shape = [1] * a.ndim
        shape[axis] = n
        window = window * tukey(n, tukey_alpha).reshape(shape)
    fa = np.fft.fftn((a - a.mean()) * window)
    fb = np.fft.fftn((b - b.mean()) * window)

    # Physical frequency |k| (cycles per unit); rings one coarsest frequency step wide, up to the
    # lowest Nyquist frequency of the axes, so that every ring is fully sampled in all directions.
    grids = np.meshgrid(
        *(np.fft.fftfreq(n, d=s) for n, s in zip(a.shape, sizes, strict=True)), indexing="ij", sparse=True
    )
    k = np.sqrt(sum(g**2 for g in grids))
    dk = max(1 / (n * s) for n, s in zip(a.shape, sizes, strict=True))
    n_rings = int(np.floor(min(1 / (2 * s) for s in sizes) / dk + 1e-9))
    ring = np.rint(k / dk).astype(np.int64).ravel()

    def sums(values: np.ndarray) -> np.ndarray:
        return np.bincount(ring, weights=values.ravel(), minlength=n_rings + 1)[1 : n_rings + 1]

    cross = sums((fa * np.conj(fb)).real)
    power_a, power_b = sums(np.abs(fa) ** 2), sums(np.abs(fb) ** 2)
    return np.arange(1, n_rings + 1) * dk, cross, power_a, power_b


def _correlation(cross: np.ndarray, power_a: np.ndarray, power_b: np.ndarray) -> np.ndarray:
    denom = np.sqrt(power_a * power_b)
    # A ring empty in both images agrees (1); empty in one only shares nothing (0).
    empty = np.where((power_a == 0) & (power_b == 0), 1.0, 0.0)
    return np.divide(cross, denom, out=empty, where=denom > 0)


def fourier_ring_correlation(
    a: Any, b: Any, pixel_size: float | Sequence[float] = 1.0, *, tukey_alpha: float = 0.25
) -> tuple[np.ndarray, np.ndarray]:
    """Fourier ring (2-D) or shell (3-D) correlation of two images of the same field of view.

    ``FRC(f) = Re sum_ring F_a F_b* / sqrt(sum_ring |F_a|^2 sum_ring |F_b|^2)`` (Saxton &
    Baumeister 1982; Nieuwenhuizen et al. 2013, eq. 1). Each image has its mean removed and is
    tapered by a separable Tukey window (``scipy.signal.windows.tukey``, ``tukey_alpha``: 0 = none,
    1 = Hann) against edge artefacts. Coefficients are binned by physical frequency
    ``|k| = sqrt(sum_i k_i^2)`` with ``k_i`` in cycles per unit of ``pixel_size`` (one value, or one
    per axis for anisotropic stacks), in rings one coarsest frequency step wide, up to the lowest
    Nyquist frequency ``min_i 1 / (2 pixel_size_i)``; the DC ring is left out.

    Args:
        a, b: images ``(H, W)`` or stacks ``(D, H, W)`` of equal shape, >= 8 pixels per axis.
        pixel_size: pixel size in physical units (e.g. µm), scalar or per axis.
        tukey_alpha: taper fraction of the Tukey window, in [0, 1].

    Returns:
        ``(frequencies, frc)``, both ``(n_rings,)``: ring centres in cycles per unit and the
        correlation in [-1, 1].

    Raises:
        ValueError: the shapes differ, not 2-D/3-D, fewer than 8 pixels on an axis, a constant
            image, NaN/inf, a non-positive pixel size or a wrong number of them, ``tukey_alpha``
            outside [0, 1].
    """
    freqs, cross, power_a, power_b = _ring_sums(a, b, pixel_size, tukey_alpha)
    return freqs, _correlation(cross, power_a, power_b)


def _resolution(freqs: np.ndarray, frc: np.ndarray, threshold: float, smooth: int) -> float:
    from scipy.ndimage import uniform_filter1d

    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    if smooth < 1:
        raise ValueError(f"smooth must be a number of rings >= 1, got {smooth}")
    curve = uniform_filter1d(frc, smooth, mode="nearest") if smooth > 1 else frc
    below = np.flatnonzero(curve < threshold)
    if below.size == 0:
        return float(1 / freqs[-1])  # correlated up to Nyquist: the sampling limit
    i = int(below[0])
    if i == 0:
        return float("inf")  # uncorrelated already at the lowest frequency
    # Linear interpolation of the crossing between rings i-1 (>= threshold) and i (< threshold).
    t = (curve[i - 1] - threshold) / (curve[i - 1] - curve[i])
    return float(1 / (freqs[i - 1] + t * (freqs[i] - freqs[i - 1])))


def frc_resolution(
    a: Any,
    b: Any,
    pixel_size: float | Sequence[float] = 1.0,
    threshold: float = FRC_THRESHOLD,
    *,
    smooth: int = 3,
    tukey_alpha: float = 0.25,
) -> float:
    """FRC resolution ``1 / f*`` in the units of ``pixel_size`` (Nieuwenhuizen et al. 2013).

    ``f*`` is the first frequency where the FRC of :func:`fourier_ring_correlation`, smoothed by a
    moving average over ``smooth`` rings (1 = raw), falls below ``threshold`` (their fixed 1/7),
    linearly interpolated between rings. Lower is finer. Meant for two images with independent
    noise (two acquisitions, or a restoration and its ground truth).

    Returns:
        The resolution; ``1 / f_max`` (``2 * pixel_size`` for isotropic pixels: the sampling limit)
        when the curve never falls below the threshold; ``inf`` when it is below already at the
        first ring (the images share no measurable detail).

    Raises:
        ValueError: as :func:`fourier_ring_correlation`, or ``threshold`` outside (0, 1), or
            ``smooth`` < 1.
    """
    freqs, frc = fourier_ring_correlation(a, b, pixel_size, tukey_alpha=tukey_alpha)
    return _resolution(freqs, frc, threshold, smooth)


# --- ensemble calibration -------------------------------------------------------------------------


def _ensemble(samples: Any, target: Any) -> tuple[np.ndarray, np.ndarray]:
    s, t = _array(samples, "samples"), _array(target, "target")
    if s.ndim != t.ndim + 1 or s.shape[1:] != t.shape:
        raise ValueError(
            f"samples have shape {s.shape} but target has shape {t.shape}; samples must be "
            "(M, *target.shape) with the ensemble on axis 0"
        )
    if s.shape[0] < 2:
        raise ValueError(f"an ensemble needs at least 2 samples, got {s.shape[0]}")
    return s, t


def interval_coverage(samples: Any, target: Any, level: float = 0.9) -> float:
    """Fraction of pixels whose target lies in the ensemble's central ``level`` interval.

    The interval runs between the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the
    ``M`` samples at each pixel, estimated with ``np.quantile(method="weibull")`` (Hyndman & Fan
    1996, type 6: the k-th of M sorted samples sits at ``k / (M + 1)``), for which a target
    exchangeable with the samples falls inside with probability ``level``. A calibrated ensemble
    gives ``level``; less is over-confident, more is under-confident (Gneiting et al. 2007).

    Args:
        samples: ensemble ``(M, *image)``; at least ``2 / (1 - level) - 1`` members, so that the
            interval's ends fall between samples rather than on the ensemble's min and max.
        target: ground truth ``(*image)``.
        level: nominal coverage in (0, 1).

    Raises:
        ValueError: shapes that do not pair, ``level`` outside (0, 1), too few members, NaN/inf.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    s, t = _ensemble(samples, target)
    m = s.shape[0]
    needed = int(np.ceil(2 / (1 - level) - 1 - 1e-9))
    if m < needed:
        raise ValueError(
            f"a central {level:g} interval needs at least {needed} samples, got {m}; draw more samples "
            "or lower level"
        )
    lo, hi = np.quantile(s, [(1 - level) / 2, (1 + level) / 2], axis=0, method="weibull")
    return float(np.mean((t >= lo) & (t <= hi)))


def error_std_spearman(mean: Any, std: Any, target: Any) -> float:
    """Spearman rank correlation of the error ``|mean - target|`` with the predicted ``std``.

    Near 1 when the ensemble's spread ranks pixels by their actual error, ~0 when the spread says
    nothing about it (``scipy.stats.spearmanr`` over all pixels). ``mean``, ``std`` and ``target``
    share one shape.

    Raises:
        ValueError: the shapes differ, NaN/inf, or a constant ``std`` or error (the rank
            correlation is then undefined, e.g. a collapsed ensemble).
    """
    from scipy.stats import spearmanr

    mu, sd, t = _array(mean, "mean"), _array(std, "std"), _array(target, "target")
    _same_shape(mu, t, ("mean", "target"))
    _same_shape(sd, t, ("std", "target"))
    err = np.abs(mu - t).ravel()
    for name, x in (("std", sd), ("|mean - target|", err)):
        if np.ptp(x) == 0:
            raise ValueError(f"{name} is constant; its rank correlation is undefined")
    return float(spearmanr(err, sd.ravel())[0])


# --- Metric classes -------------------------------------------------------------------------------


class RestorationConfig(BaseModel):
    """Options of the PSNR and NRMSE metrics (CARE conventions)."""

    model_config = ConfigDict(extra="forbid")

    scale: bool = Field(True, description="Fit a * prediction + b to the target first (CARE).")
    percentiles: tuple[float, float] = Field(
        CARE_PERCENTILES,
        description="Target percentiles whose range is the data range; (0, 100) = max - min.",
    )
    spatial_dims: Literal[2, 3] = Field(
        2, description="Trailing spatial axes of one image; leading axes (batch, channel) are averaged over."
    )

    @field_validator("percentiles")
    @classmethod
    def _valid_percentiles(cls, v: tuple[float, float]) -> tuple[float, float]:
        return _check_percentiles(v)


class SSIMConfig(RestorationConfig):
    """Options of the SSIM metric."""

    win_size: int = Field(7, ge=3, description="Side of SSIM's uniform window (odd).")

    @field_validator("win_size")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError(f"win_size must be odd, got {v}")
        return v


class FRCConfig(BaseModel):
    """Options of the FRC resolution metric."""

    model_config = ConfigDict(extra="forbid")

    pixel_size: float | tuple[float, ...] = Field(
        1.0, description="Pixel size in physical units (e.g. µm): one value or one per spatial axis."
    )
    threshold: float = Field(
        FRC_THRESHOLD, gt=0, lt=1, description="FRC threshold (1/7, Nieuwenhuizen 2013)."
    )
    smooth: int = Field(3, ge=1, description="Moving-average width in rings before thresholding (1 = raw).")
    tukey_alpha: float = Field(0.25, ge=0, le=1, description="Tukey window taper (0 = none, 1 = Hann).")
    spatial_dims: Literal[2, 3] = Field(2, description="2 = Fourier ring, 3 = Fourier shell correlation.")

    @model_validator(mode="after")
    def _sizes(self) -> FRCConfig:
        _pixel_sizes(self.pixel_size, self.spatial_dims)
        return self


class CoverageConfig(BaseModel):
    """Options of the ensemble calibration metric."""

    model_config = ConfigDict(extra="forbid")

    level: float = Field(0.9, gt=0, lt=1, description="Nominal coverage of the central interval.")


def _images(generated: Any, reference: Any, spatial_dims: int) -> tuple[np.ndarray, np.ndarray]:
    """Both inputs as ``(N, *spatial)`` stacks of images."""
    g, r = _array(generated, "generated"), _array(reference, "reference")
    _same_shape(g, r, ("generated", "reference"))
    if g.ndim < spatial_dims:
        raise ValueError(f"inputs of shape {g.shape} have fewer than spatial_dims={spatial_dims} axes")
    spatial = g.shape[g.ndim - spatial_dims :]
    return g.reshape(-1, *spatial), r.reshape(-1, *spatial)


class _MeanOverImages(Metric):
    """A score per image of ``(..., *spatial)`` batches, averaged; subclasses give :meth:`score`."""

    config: RestorationConfig

    def score(self, generated: np.ndarray, reference: np.ndarray) -> float:
        """The score of one image pair."""
        raise NotImplementedError

    def __call__(self, generated: Any, reference: Any) -> float:
        g, r = _images(generated, reference, self.config.spatial_dims)
        return float(np.mean([self.score(x, y) for x, y in zip(g, r, strict=True)]))


class PSNRMetric(_MeanOverImages):
    """Mean PSNR in dB over images, CARE convention (:func:`psnr`); higher is better.

    ``generated`` (the restoration) and ``reference`` (the ground truth) are ``(..., *spatial)``
    arrays or tensors of equal shape; each image is normalised and fitted on its own, and the dB
    values are averaged. Raises ValueError as :func:`psnr` and for shapes that differ.
    """

    higher_is_better = True

    def __init__(self, config: RestorationConfig | None = None) -> None:
        self.config = config or RestorationConfig()

    def score(self, generated: np.ndarray, reference: np.ndarray) -> float:
        """:func:`psnr` of one image pair."""
        return psnr(generated, reference, self.config.scale, self.config.percentiles)


class NRMSEMetric(_MeanOverImages):
    """Mean NRMSE over images, CARE convention (:func:`nrmse`); lower is better (0 = identical)."""

    higher_is_better = False

    def __init__(self, config: RestorationConfig | None = None) -> None:
        self.config = config or RestorationConfig()

    def score(self, generated: np.ndarray, reference: np.ndarray) -> float:
        """:func:`nrmse` of one image pair."""
        return nrmse(generated, reference, self.config.scale, self.config.percentiles)


class SSIMMetric(_MeanOverImages):
    """Mean SSIM over 2-D images or 3-D stacks, CARE convention (:func:`ssim`); higher is better."""

    higher_is_better = True
    config: SSIMConfig

    def __init__(self, config: SSIMConfig | None = None) -> None:
        self.config = config or SSIMConfig()

    def score(self, generated: np.ndarray, reference: np.ndarray) -> float:
        """:func:`ssim` of one image pair."""
        c = self.config
        return ssim(generated, reference, c.scale, c.percentiles, c.win_size)


class FRCMetric(Metric):
    """FRC resolution of generated against reference images, in units of ``pixel_size``; lower is better.

    The FRC curves of the image pairs (leading axes of ``(..., *spatial)``) are averaged, then the
    resolution is read off the mean curve as in :func:`frc_resolution`. Identical inputs give the
    sampling limit ``1 / f_max``; images sharing no detail give ``inf``.
    """

    higher_is_better = False

    def __init__(self, config: FRCConfig | None = None) -> None:
        self.config = config or FRCConfig()

    def __call__(self, generated: Any, reference: Any) -> float:
        c = self.config
        g, r = _images(generated, reference, c.spatial_dims)
        curves = [
            fourier_ring_correlation(x, y, c.pixel_size, tukey_alpha=c.tukey_alpha)
            for x, y in zip(g, r, strict=True)
        ]
        freqs = curves[0][0]
        return _resolution(freqs, np.mean([frc for _, frc in curves], axis=0), c.threshold, c.smooth)


class CoverageMetric(Metric):
    """Calibration of an ensemble's uncertainty against the ground truth.

    ``generated`` is an ensemble ``(M, *image)``, ``reference`` the ground truth ``(*image)``.
    Returns ``{"coverage": ..., "coverage_error": ..., "spearman_error_std": ...}``:

    - ``coverage``: :func:`interval_coverage` at ``level`` (ideal: ``level``);
    - ``coverage_error``: ``|coverage - level|`` (lower is better; the declared direction);
    - ``spearman_error_std``: :func:`error_std_spearman` of the ensemble mean and standard
      deviation (``ddof=1``) with the target (higher is better).
    """

    higher_is_better = False
    ensemble = True

    def __init__(self, config: CoverageConfig | None = None) -> None:
        self.config = config or CoverageConfig()

    def __call__(self, generated: Any, reference: Any) -> dict[str, float]:
        s, t = _ensemble(generated, reference)
        level = self.config.level
        coverage = interval_coverage(s, t, level)
        return {
            "coverage": coverage,
            "coverage_error": abs(coverage - level),
            "spearman_error_std": error_std_spearman(s.mean(0), s.std(0, ddof=1), t),
        }
