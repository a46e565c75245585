"""Radially averaged power spectra of 1-, 2- and 3-D fields, and the log-ratio distance between two.

A generative model that gets the values right can still smooth out small scales or add noise at
them; the spectrum shows at which scale. Wavenumbers are in cycles per pixel (multiply by
1 / pixel size for physical units), binned in steps of one over the smallest axis length.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sciddpm.evaluation.features import as_batch, check_pair

__all__ = ["radial_power_spectrum", "spectrum_distance"]


def radial_power_spectrum(x: Any) -> tuple[np.ndarray, np.ndarray]:
    """Wavenumbers ``(K,)`` (cycles per pixel) and mean power ``(C, K)`` of a batch ``(N, C, *spatial)``.

    Each sample's channel has its mean removed (the k = 0 term carries no shape), is transformed
    with ``torch.fft.fftn`` over the spatial axes, and ``|F|^2 / n_pixels`` is averaged over rings
    (shells in 3-D) ``round(|k| * min(size)) = j`` and over samples. NaN values count as the channel
    mean. Raises ValueError for a batch of the wrong shape.
    """
    t = as_batch(x, "x")
    spatial = tuple(t.shape[2:])
    t = torch.nan_to_num(t - t.nanmean(dim=tuple(range(2, t.ndim)), keepdim=True))
    power = torch.fft.fftn(t, dim=tuple(range(2, t.ndim))).abs().pow(2).mean(0) / np.prod(
        spatial
    )  # (C, *spatial)
    grids = np.meshgrid(*(np.fft.fftfreq(n) for n in spatial), indexing="ij")
    k = np.sqrt(sum(g**2 for g in grids))
    ring = np.rint(k * min(spatial)).astype(int).ravel()
    rings = min(spatial) // 2 + 1  # up to the Nyquist wavenumber of the shortest axis
    keep = ring < rings
    counts = np.bincount(ring[keep], minlength=rings)
    flat = power.reshape(power.shape[0], -1).numpy()[:, keep]
    sums = np.stack([np.bincount(ring[keep], weights=row, minlength=rings) for row in flat])
    return np.arange(rings) / min(spatial), sums / np.maximum(counts, 1)


def spectrum_distance(generated: Any, reference: Any) -> tuple[float, np.ndarray]:
    """Mean ``|log10(P_generated / P_reference)|`` over channels and wavenumbers k > 0, and per wavenumber.

    0 when the spectra agree; 1 means a factor of 10 in power. Returns the mean and the per-scale
    distances ``(K - 1,)`` (averaged over channels). Raises ValueError for samples of different shapes.
    """
    g, r = check_pair(generated, reference)
    _, pg = radial_power_spectrum(g)
    _, pr = radial_power_spectrum(r)
    tiny = 1e-30
    per = np.abs(np.log10((pg[:, 1:] + tiny) / (pr[:, 1:] + tiny)))  # (C, K - 1)
    return float(per.mean()), per.mean(axis=0)
