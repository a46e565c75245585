"""Precision, recall, density and coverage of generated samples on reference features.

Naeem et al. 2020 (the ``prdc`` reference code): each reference sample's ball reaches its k-th
nearest reference neighbour; precision is the fraction of generated samples in some reference ball,
recall the fraction of reference samples within their own k-th generated-neighbour distance of
some generated sample, density the mean number of balls a generated sample falls in over k, and
coverage the fraction of reference balls that hold a generated sample. Distances are computed in
chunks with ``torch.cdist``, so the reference set may be large.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["kth_neighbour_distance", "precision_recall_density_coverage"]


def _rows(f: Any) -> torch.Tensor:
    t = torch.as_tensor(f).double()
    if t.ndim != 2:
        raise ValueError(f"features have shape {tuple(t.shape)}; expected (N, D)")
    return t


def kth_neighbour_distance(x: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """Distance ``(N,)`` of each row of ``x`` to its k-th nearest other row (Euclidean)."""
    if len(x) <= k:
        raise ValueError(f"the k = {k}-th neighbour needs more than {k} samples, got {len(x)}")
    return torch.cat(
        [torch.cdist(x[i : i + chunk], x).kthvalue(k + 1, dim=1).values for i in range(0, len(x), chunk)]
    )


def precision_recall_density_coverage(
    generated: Any, reference: Any, k: int = 5, chunk: int = 1024
) -> dict[str, float]:
    """``{"precision", "recall", "density", "coverage"}`` of ``generated (N1, D)`` on ``reference (N2, D)``.

    Raises ValueError when the widths differ or a set has no more than ``k`` samples.
    """
    g, r = _rows(generated), _rows(reference)
    if g.shape[1] != r.shape[1]:
        raise ValueError(f"generated features have {g.shape[1]} dims, reference {r.shape[1]}")
    radius_r, radius_g = kth_neighbour_distance(r, k, chunk), kth_neighbour_distance(g, k, chunk)
    inside = torch.zeros(len(g), dtype=torch.float64)  # balls of reference samples holding each generated one
    covered = torch.zeros(len(r), dtype=torch.bool)
    recalled = torch.zeros(len(r), dtype=torch.bool)
    for i in range(0, len(r), chunk):
        d = torch.cdist(r[i : i + chunk], g)  # (chunk of reference, N1)
        within = d < radius_r[i : i + chunk, None]
        inside += within.double().sum(0)
        covered[i : i + chunk] = d.min(dim=1).values < radius_r[i : i + chunk]
        recalled[i : i + chunk] = (d < radius_g[None, :]).any(dim=1)
    return {
        "precision": float((inside > 0).double().mean()),
        "recall": float(recalled.double().mean()),
        "density": float(inside.mean() / k),
        "coverage": float(covered.double().mean()),
    }
