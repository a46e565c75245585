"""Memorisation: is a generated sample a copy of a training sample?

For each generated sample, the distance to its nearest training sample over the distance to the
second nearest: a copy sits much closer to one training sample than to any other, a novel sample
about as close to several (the ratio test of Yoon et al. 2023, in the spirit of Carlini et al.
2023's nearest-neighbour extraction criterion). A ratio below ``threshold`` (1/3 by default) flags
the sample. Distances are computed in chunks with ``torch.cdist`` on feature vectors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["MemorizationReport", "memorization"]


@dataclass
class MemorizationReport:
    """Per generated sample: nearest training index, its distance, the ratio, and whether it is flagged.

    ``fraction`` is the share flagged; ``closest`` lists generated indices from the lowest ratio up
    (the pairs to look at side by side).
    """

    nearest: list[int]
    distance: list[float]
    ratio: list[float]
    threshold: float
    flagged: list[bool] = field(default_factory=list)

    @property
    def fraction(self) -> float:
        """Share of generated samples whose ratio is below the threshold."""
        return sum(self.flagged) / max(len(self.flagged), 1)

    @property
    def closest(self) -> list[int]:
        """Generated indices ordered by ratio, most copy-like first."""
        return sorted(range(len(self.ratio)), key=lambda i: self.ratio[i])

    def summary(self) -> dict[str, Any]:
        """JSON-able headline figures: fraction flagged, threshold, median ratio, the 5 closest pairs."""
        ordered = self.closest[:5]
        return {
            "fraction_flagged": self.fraction,
            "threshold": self.threshold,
            "median_ratio": float(torch.tensor(self.ratio).median()),
            "closest_pairs": [
                {"generated": i, "training": self.nearest[i], "ratio": self.ratio[i]} for i in ordered
            ],
        }


def memorization(
    generated: Any, training: Any, threshold: float = 1 / 3, chunk: int = 512
) -> MemorizationReport:
    """Nearest-to-second-nearest distance ratios of ``generated (N1, D)`` features to ``training (N2, D)``.

    Raises ValueError when the widths differ or the training set has fewer than 2 samples.
    """
    g, t = torch.as_tensor(generated).double(), torch.as_tensor(training).double()
    if g.ndim != 2 or t.ndim != 2 or g.shape[1] != t.shape[1]:
        raise ValueError(f"features must be (N, D) of one width, got {tuple(g.shape)} and {tuple(t.shape)}")
    if len(t) < 2:
        raise ValueError(f"the ratio needs at least 2 training samples, got {len(t)}")
    nearest, d1, d2 = [], [], []
    for i in range(0, len(g), chunk):
        two = torch.cdist(g[i : i + chunk], t).topk(2, dim=1, largest=False)
        nearest += two.indices[:, 0].tolist()
        d1 += two.values[:, 0].tolist()
        d2 += two.values[:, 1].tolist()
    ratio = [a / b if b > 0 else 0.0 for a, b in zip(d1, d2, strict=True)]
    return MemorizationReport(nearest, d1, ratio, threshold, [r < threshold for r in ratio])
