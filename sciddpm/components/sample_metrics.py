"""Registered metrics of generated samples against reference data, for any data shape.

Thin Metric components over :mod:`sciddpm.evaluation`: each is called as ``metric(generated,
reference)`` with batches ``(N, C, *spatial)`` in physical units (N may differ) and raises
ValueError naming both shapes when the samples differ in shape. Distances on whole samples use
``pooled_features`` fitted on the reference (channels standardised, spatially pooled).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from sciddpm.evaluation import (
    channel_wasserstein,
    frechet_distance,
    kernel_distance,
    pooled_features,
    precision_recall_density_coverage,
    sliced_wasserstein,
    spectrum_distance,
)
from sciddpm.evaluation.features import check_pair
from sciddpm.interfaces import Metric

__all__ = [
    "FeatureMetricConfig",
    "FrechetMetric",
    "KernelMetric",
    "NoOptions",
    "PRDCConfig",
    "PRDCMetric",
    "SlicedConfig",
    "SlicedWassersteinMetric",
    "SpectrumMetric",
    "WassersteinMetric",
]


class NoOptions(BaseModel):
    """No options."""

    model_config = ConfigDict(extra="forbid")


class SlicedConfig(BaseModel):
    """Number of random directions and their seed."""

    model_config = ConfigDict(extra="forbid")

    projections: int = Field(256, ge=1, description="Random unit directions averaged over.")
    seed: int = Field(0, description="Seed of the directions.")


class FeatureMetricConfig(BaseModel):
    """The pooled features: cells per spatial axis after pooling."""

    model_config = ConfigDict(extra="forbid")

    cells: int = Field(
        4, ge=1, description="Cells per spatial axis of the pooled features (C * cells**d features)."
    )


class PRDCConfig(FeatureMetricConfig):
    """Pooled features and the neighbourhood size k of Naeem et al. 2020."""

    k: int = Field(5, ge=1, description="The k-th nearest neighbour sets each reference sample's ball.")


class WassersteinMetric(Metric):
    """Mean over channels of ``W1(generated_c, reference_c) / std(reference_c)``: 0 = same marginals.

    Each channel's distance is scipy's 1-D Wasserstein distance of all its values, divided by the
    reference channel's std so channels in different units average fairly. Lower is better.
    """

    def __init__(self, config: NoOptions | None = None) -> None:
        self.config = config or NoOptions()

    def __call__(self, generated: Any, reference: Any) -> float:
        g, r = check_pair(generated, reference)
        std = r.transpose(0, 1).flatten(1).std(dim=1).clamp_min(1e-12).numpy()
        return float(np.mean(np.asarray(channel_wasserstein(g, r)) / std))


class SlicedWassersteinMetric(Metric):
    """Sliced Wasserstein-1 distance of whole samples, channels standardised by the reference.

    Lower is better; 0 for identical sets.
    """

    def __init__(self, config: SlicedConfig | None = None) -> None:
        self.config = config or SlicedConfig()

    def __call__(self, generated: Any, reference: Any) -> float:
        return sliced_wasserstein(generated, reference, self.config.projections, self.config.seed)


class SpectrumMetric(Metric):
    """Mean ``|log10|`` ratio of radially averaged power spectra (0 = same spectra). Lower is better."""

    def __init__(self, config: NoOptions | None = None) -> None:
        self.config = config or NoOptions()

    def __call__(self, generated: Any, reference: Any) -> float:
        return spectrum_distance(generated, reference)[0]


class FrechetMetric(Metric):
    """Fréchet distance of pooled features (FID's formula on features that fit any data). Lower is better.

    Needs more samples than features in each set (``C * cells**d``); raises ValueError saying so.
    """

    def __init__(self, config: FeatureMetricConfig | None = None) -> None:
        self.config = config or FeatureMetricConfig()

    def __call__(self, generated: Any, reference: Any) -> float:
        g, r = check_pair(generated, reference)
        features = pooled_features(r, self.config.cells)
        return frechet_distance(features(g), features(r))


class KernelMetric(Metric):
    """Kernel distance (KID's unbiased cubic-kernel MMD^2) of pooled features; lower is better, ~0 = same."""

    #: No bootstrap interval in ``evaluate``: the estimate already loops over 100 random subsets.
    bootstrap = False

    def __init__(self, config: FeatureMetricConfig | None = None) -> None:
        self.config = config or FeatureMetricConfig()

    def __call__(self, generated: Any, reference: Any) -> float:
        g, r = check_pair(generated, reference)
        features = pooled_features(r, self.config.cells)
        return kernel_distance(features(g), features(r))[0]


class PRDCMetric(Metric):
    """``{"precision", "recall", "density", "coverage"}`` of pooled features (Naeem et al. 2020).

    Each is in [0, 1] except density (about 1 when the distributions match); higher is better.
    """

    higher_is_better = True
    #: No bootstrap interval in ``evaluate``: repeated points in a resample shrink the neighbour radii.
    bootstrap = False

    def __init__(self, config: PRDCConfig | None = None) -> None:
        self.config = config or PRDCConfig()

    def __call__(self, generated: Any, reference: Any) -> dict[str, float]:
        g, r = check_pair(generated, reference)
        features = pooled_features(r, self.config.cells)
        return precision_recall_density_coverage(features(g), features(r), self.config.k)
