"""Fréchet distance and kernel distance (KID) between two sets of feature vectors.

The Fréchet distance between Gaussians fitted to the features, ``|m1 - m2|^2 + tr(S1 + S2 -
2 (S1 S2)^(1/2))`` (Dowson & Landau 1982; Heusel et al. 2017, as FID), and the unbiased squared
MMD with the polynomial kernel ``(x.y / D + 1)^3`` averaged over random subsets (Bińkowski et al.
2018, as KID). The features are whatever fits the data: see :mod:`sciddpm.evaluation.features`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.linalg

__all__ = ["frechet_distance", "kernel_distance"]


def _features(f: Any, name: str) -> np.ndarray:
    a = np.asarray(f.detach().cpu() if hasattr(f, "detach") else f, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} features have shape {a.shape}; expected (N, D)")
    return a


def frechet_distance(generated: Any, reference: Any) -> float:
    """Fréchet distance of Gaussians fitted to ``generated (N1, D)`` and ``reference (N2, D)`` features.

    Raises ValueError when the feature widths differ or a set has no more samples than features
    (its covariance would be singular: use fewer features or more samples).
    """
    g, r = _features(generated, "generated"), _features(reference, "reference")
    if g.shape[1] != r.shape[1]:
        raise ValueError(f"generated features have {g.shape[1]} dims, reference {r.shape[1]}")
    for name, a in (("generated", g), ("reference", r)):
        if len(a) <= a.shape[1]:
            raise ValueError(
                f"a Fréchet distance on {a.shape[1]} features needs more than {a.shape[1]} {name} samples, "
                f"got {len(a)}: draw more, or use fewer features (pooled_features with fewer cells)"
            )
    mu_g, mu_r = g.mean(0), r.mean(0)
    cov_g, cov_r = np.cov(g, rowvar=False), np.cov(r, rowvar=False)
    root = scipy.linalg.sqrtm(cov_g @ cov_r)
    if np.iscomplexobj(root):  # rounding gives tiny imaginary parts to a real root
        root = root.real
    return float(((mu_g - mu_r) ** 2).sum() + np.trace(cov_g + cov_r - 2 * root))


def kernel_distance(
    generated: Any, reference: Any, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID: mean and std over ``subsets`` random subsets of the unbiased squared MMD (cubic kernel).

    Each subset draws ``min(subset_size, N1, N2)`` rows of each set without replacement, seeded.
    Raises ValueError when the widths differ or a set has fewer than 2 samples.
    """
    g, r = _features(generated, "generated"), _features(reference, "reference")
    if g.shape[1] != r.shape[1]:
        raise ValueError(f"generated features have {g.shape[1]} dims, reference {r.shape[1]}")
    m = min(subset_size, len(g), len(r))
    if m < 2:
        raise ValueError(f"a kernel distance needs at least 2 samples in each set, got {len(g)} and {len(r)}")
    d = g.shape[1]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        x = g[rng.choice(len(g), m, replace=False)]
        y = r[rng.choice(len(r), m, replace=False)]
        kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        off = m * (m - 1)
        values.append((kxx.sum() - np.trace(kxx)) / off + (kyy.sum() - np.trace(kyy)) / off - 2 * kxy.mean())
    return float(np.mean(values)), float(np.std(values))
