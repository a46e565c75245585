"""Synthetic degradation of clean fluorescence images: optics (Gaussian PSF, down-sampling) and camera noise.

Where a lab has only clean (high-SNR) images, training pairs are made by imaging them again with a
simulated low-light camera, as CARE does for its synthetic pairs (Weigert et al. 2018, Methods).
The camera is the Poisson-Gaussian model of scientific CMOS/CCD sensors (Foi et al. 2008,
"Practical Poissonian-Gaussian noise modeling and fitting for single-image raw-data", IEEE TIP
17(10), eq. 1-3): with ``lam`` expected photo-electrons in a pixel,

    ADU = gain * (Poisson(lam) + Normal(0, read_noise)) + offset,

so ``E[ADU] = gain * lam + offset`` and ``Var[ADU] = gain**2 * (lam + read_noise**2)``. The clean
image sets ``lam`` through ``photons``: the expected photo-electrons at the clean image's
intensity 1 (a clean image normalised so that its bright structures are about 1; see
:func:`expected_electrons`). The PSF blur is :func:`scipy.ndimage.gaussian_filter` and the
down-sampling :func:`skimage.transform.downscale_local_mean` (a binning camera sums, a mean keeps
the units).
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["CameraConfig", "degrade", "expected_electrons", "noise_moments"]


class CameraConfig(BaseModel):
    """A simulated low-light acquisition of a clean image: PSF, binning and a Poisson-Gaussian camera."""

    model_config = ConfigDict(extra="forbid")

    photons: float = Field(
        20.0,
        gt=0,
        description="Expected photo-electrons per pixel at clean intensity 1 (the signal level: "
        "low-light fluorescence is 5-50).",
    )
    read_noise: float = Field(2.0, ge=0, description="Read-noise standard deviation, in electrons.")
    gain: float = Field(1.0, gt=0, description="Analogue-to-digital gain, ADU per electron.")
    offset: float = Field(100.0, description="Camera offset (bias) added to every pixel, in ADU.")
    psf_sigma: list[float] | None = Field(
        None,
        description="Standard deviation of the Gaussian PSF in pixels, one per spatial axis (or one "
        "for all); None = no blur.",
    )
    downsample: int = Field(
        1, ge=1, description="Integer factor of spatial down-sampling (block mean) before the camera."
    )

    @field_validator("psf_sigma")
    @classmethod
    def _positive(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and (not v or any(s < 0 for s in v)):
            raise ValueError(f"psf_sigma must be one or more non-negative widths in pixels, got {v}")
        return v


def expected_electrons(clean: np.ndarray, config: CameraConfig, spatial_dims: int) -> np.ndarray:
    """The expected photo-electrons per pixel, ``photons * optics(clean)``, before noise.

    ``clean`` is ``(..., *spatial)`` with ``spatial_dims`` trailing spatial axes, in intensity
    units where 1 is bright structure; negative values (a background-subtracted image) are clipped
    to 0, since a camera cannot count negative photons. Returns float64, down-sampled by
    ``config.downsample`` on every spatial axis (the sizes must divide). Raises ValueError for a
    spatial size not divisible by the factor or a ``psf_sigma`` of the wrong length.
    """
    from scipy.ndimage import gaussian_filter
    from skimage.transform import downscale_local_mean

    x = np.clip(np.asarray(clean, dtype=np.float64), 0.0, None)
    spatial = x.shape[x.ndim - spatial_dims :]
    if config.psf_sigma is not None:
        widths = config.psf_sigma * spatial_dims if len(config.psf_sigma) == 1 else config.psf_sigma
        if len(widths) != spatial_dims:
            raise ValueError(
                f"psf_sigma has {len(config.psf_sigma)} widths for an image with {spatial_dims} "
                f"spatial axes {spatial}; give one width, or one per spatial axis"
            )
        # Blur only the spatial axes: the leading (channel) axes get width 0.
        x = gaussian_filter(x, sigma=[0.0] * (x.ndim - spatial_dims) + list(widths), mode="reflect")
    f = config.downsample
    if f > 1:
        if any(n % f for n in spatial):
            raise ValueError(
                f"downsample = {f} does not divide the spatial size {spatial}; crop the image or "
                f"the patch to a multiple of {f}"
            )
        x = downscale_local_mean(x, (1,) * (x.ndim - spatial_dims) + (f,) * spatial_dims)
    return config.photons * x


def degrade(
    clean: np.ndarray, config: CameraConfig, rng: np.random.Generator, spatial_dims: int | None = None
) -> np.ndarray:
    """A noisy low-light acquisition of ``clean``, in camera ADU (float32).

    ``clean`` is ``(..., *spatial)`` with ``spatial_dims`` trailing spatial axes (default: every
    axis is spatial; pass it when a leading axis holds channels). Returns
    ``gain * (Poisson(lam) + Normal(0, read_noise)) + offset`` with ``lam`` from
    :func:`expected_electrons` (Foi et al. 2008, eq. 1-3): spatially down-sampled by
    ``config.downsample``. The draw is reproducible from ``rng``. Raises ValueError as
    :func:`expected_electrons`.
    """
    x = np.asarray(clean)
    dims = x.ndim if spatial_dims is None else spatial_dims
    if not 1 <= dims <= x.ndim:
        raise ValueError(f"spatial_dims = {spatial_dims} for an image of shape {x.shape}")
    lam = expected_electrons(x, config, dims)
    electrons = rng.poisson(lam).astype(np.float64)
    if config.read_noise > 0:
        electrons += rng.normal(0.0, config.read_noise, size=lam.shape)
    return (config.gain * electrons + config.offset).astype(np.float32)


def noise_moments(lam: np.ndarray | float, config: CameraConfig) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance in ADU of a pixel with ``lam`` expected electrons (Foi et al. 2008, eq. 3)."""
    lam = np.asarray(lam, dtype=np.float64)
    return config.gain * lam + config.offset, config.gain**2 * (lam + config.read_noise**2)
