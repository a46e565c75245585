"""Batches and feature vectors for evaluation: shape checks, pooled features, an encoder's latents.

Distances between whole samples need feature vectors ``(N, D)``. Two kinds come with sciddpm:
``pooled_features`` (each channel standardised by the reference's statistics, then averaged over
a coarse grid, so channels in different units weigh alike and D stays small), and
``encoder_features`` (a fitted encoder's latents, e.g. a pipeline's VAE). Any callable
``batch (N, C, *spatial) -> (N, D)`` works too: sciddpm never applies an ImageNet network to data
it was not trained on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["FeatureFn", "as_batch", "check_pair", "encoder_features", "pooled_features", "with_missing"]

#: A feature extractor: a batch ``(N, C, *spatial)`` in physical units -> features ``(N, D)``.
FeatureFn = Callable[[Any], torch.Tensor]


def as_batch(x: Any, name: str) -> torch.Tensor:
    """``x`` as a float64 tensor ``(N, C, *spatial)``, 1-3 spatial dims; ValueError naming ``name`` if not."""
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).detach().cpu().double()
    if not 3 <= t.ndim <= 5 or len(t) == 0:
        raise ValueError(
            f"{name} has shape {tuple(t.shape)}; expected a batch (N, C, *spatial) with N >= 1 and 1-3 "
            "spatial dims"
        )
    return t


def with_missing(sample: Any) -> torch.Tensor:
    """A data source's ``Sample`` as float64 ``x (C, *spatial)``, its missing values (mask 0) as NaN.

    How the metrics see gaps: NaN is left out of their statistics, where the 0 a source stores
    in ``x`` would count as a value.
    """
    x = sample.x.double()
    if sample.mask is None:
        return x
    return torch.where(sample.mask.expand_as(x) > 0, x, torch.full_like(x, float("nan")))


def check_pair(generated: Any, reference: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Both batches as tensors; ValueError naming both shapes when a sample's shape differs."""
    g, r = as_batch(generated, "generated"), as_batch(reference, "reference")
    if g.shape[1:] != r.shape[1:]:
        raise ValueError(
            f"generated samples have shape {tuple(g.shape[1:])} but reference samples {tuple(r.shape[1:])}; "
            "compare data of one shape (same channels and size)"
        )
    return g, r


def pooled_features(reference: Any, cells: int = 4) -> FeatureFn:
    """Features: per-channel standardisation by ``reference``'s mean and std, then average pooling.

    Each spatial axis is pooled to at most ``cells`` cells (adaptive average pooling), so a
    ``(C, H, W)`` sample gives ``C * cells**2`` features. NaN values (missing) are left out of the
    statistics and count as the channel mean. Returns the extractor, which takes a batch
    ``(N, C, *spatial)`` as a tensor or an array (``np.load`` output) and raises ValueError naming
    the shapes when its channels or dimensions differ from the reference's.
    """
    r = as_batch(reference, "reference")
    dims = tuple(i for i in range(r.ndim) if i != 1)
    mean = r.nanmean(dim=dims)
    std = (r - mean.view(1, -1, *([1] * (r.ndim - 2)))).pow(2).nanmean(dim=dims).sqrt().clamp_min(1e-12)
    pool = {3: F.adaptive_avg_pool1d, 4: F.adaptive_avg_pool2d, 5: F.adaptive_avg_pool3d}[r.ndim]

    def features(x: Any) -> torch.Tensor:
        x = as_batch(x, "samples")
        if x.ndim != r.ndim or x.shape[1] != r.shape[1]:
            raise ValueError(
                f"samples have shape {tuple(x.shape[1:])} but the features were fitted on reference "
                f"samples of shape {tuple(r.shape[1:])}; give data with the same channels and dimensions"
            )
        view = (1, -1, *([1] * (x.ndim - 2)))
        z = torch.nan_to_num((x - mean.view(view)) / std.view(view), nan=0.0)
        size = [min(cells, n) for n in x.shape[2:]]
        return pool(z, size).flatten(1)

    return features


def encoder_features(encoder: Any, cells: int = 4) -> FeatureFn:
    """Features from a fitted encoder (a Pipeline's ``encoder``, e.g. the ``vae``): latents, pooled.

    The latents ``(N, C', *spatial')`` are average-pooled to at most ``cells`` cells per axis and
    flattened. Raises ValueError, naming the encoder and what it takes, when it cannot encode the
    data (another channel count or dimensionality).
    """

    def features(x: Any) -> torch.Tensor:
        # A tensor keeps its device (an encoder on a GPU takes GPU batches); an array is read in.
        x = x if isinstance(x, torch.Tensor) else as_batch(x, "samples")
        try:
            with torch.no_grad():
                z = encoder.encode(x.float()).double()
        except (ValueError, RuntimeError) as exc:
            raise ValueError(
                f"the {type(encoder).__name__} encoder cannot give features of data {tuple(x.shape)}: {exc}; "
                "use features='pooled', or an encoder trained on data of this shape"
            ) from None
        pool = {3: F.adaptive_avg_pool1d, 4: F.adaptive_avg_pool2d, 5: F.adaptive_avg_pool3d}[z.ndim]
        return pool(z, [min(cells, n) for n in z.shape[2:]]).flatten(1)

    return features
