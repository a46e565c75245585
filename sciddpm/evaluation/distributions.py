"""Distribution distances in physical units: per-channel Wasserstein-1, histogram overlap, sliced W1.

Per-channel distances compare the values of each channel over all samples and positions (the
marginal distribution); the sliced distance compares whole samples through random 1-D projections
(Rabin et al. 2011; Bonneel et al. 2015). The 1-D Wasserstein distances are scipy's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.stats import wasserstein_distance

from sciddpm.evaluation.features import check_pair

__all__ = ["channel_wasserstein", "histogram_overlap", "sliced_wasserstein"]


def _channel_values(x: torch.Tensor, mask: Any, c: int) -> np.ndarray:
    """The finite values of channel ``c`` where the mask (like x, or (N, 1, ...)) is > 0."""
    values = x[:, c].numpy().ravel()
    keep = np.isfinite(values)
    if mask is not None:
        m = torch.as_tensor(np.asarray(mask)).double()
        m = m[:, min(c, m.shape[1] - 1)].numpy().ravel()
        keep &= m > 0
    return values[keep]


def channel_wasserstein(generated: Any, reference: Any, reference_mask: Any = None) -> list[float]:
    """Wasserstein-1 distance of each channel's values, generated vs reference, in the channel's units.

    ``generated, reference``: ``(N, C, *spatial)`` (N may differ); ``reference_mask`` marks valid
    reference values (> 0); NaN values are left out. Returns one distance per channel. Raises
    ValueError for samples of different shapes or a channel without valid values.
    """
    g, r = check_pair(generated, reference)
    out = []
    for c in range(g.shape[1]):
        a, b = _channel_values(g, None, c), _channel_values(r, reference_mask, c)
        if len(a) == 0 or len(b) == 0:
            raise ValueError(
                f"channel {c} has no valid values in the {'generated' if len(a) == 0 else 'reference'} data"
            )
        out.append(float(wasserstein_distance(a, b)))
    return out


def histogram_overlap(
    generated: Any, reference: Any, bins: int = 64, reference_mask: Any = None
) -> list[float]:
    """Overlap ``sum_k min(p_k, q_k)`` of each channel's histograms (1 = identical, 0 = disjoint).

    The ``bins`` bins span the reference's 0.1-99.9 percentile range, widened by half of it on each
    side, so that values far outside it count as non-overlapping mass. Returns one value per channel.
    """
    g, r = check_pair(generated, reference)
    out = []
    for c in range(g.shape[1]):
        a, b = _channel_values(g, None, c), _channel_values(r, reference_mask, c)
        lo, hi = np.percentile(b, [0.1, 99.9])
        pad = 0.5 * max(hi - lo, 1e-12)
        edges = np.linspace(lo - pad, hi + pad, bins + 1)
        p = np.histogram(a, edges)[0] / len(a)
        q = np.histogram(b, edges)[0] / len(b)
        out.append(float(np.minimum(p, q).sum()))
    return out


def sliced_wasserstein(
    generated: Any, reference: Any, projections: int = 256, seed: int = 0, standardize: bool = True
) -> float:
    """Mean over random unit directions of the W1 distance of the samples' projections.

    Samples are flattened to vectors; with ``standardize`` each channel is first divided by the
    reference's std, so channels in different units weigh alike. Directions are uniform on the
    sphere, drawn from ``seed``. Raises ValueError for samples of different shapes.
    """
    g, r = check_pair(generated, reference)
    if standardize:
        dims = tuple(i for i in range(r.ndim) if i != 1)
        std = r.std(dim=dims).clamp_min(1e-12).view(1, -1, *([1] * (r.ndim - 2)))
        g, r = g / std, r / std
    g, r = g.flatten(1).numpy(), r.flatten(1).numpy()
    rng = np.random.default_rng(seed)
    theta = rng.standard_normal((projections, g.shape[1]))
    theta /= np.linalg.norm(theta, axis=1, keepdims=True)
    pg, pr = g @ theta.T, r @ theta.T
    return float(np.mean([wasserstein_distance(pg[:, k], pr[:, k]) for k in range(projections)]))
