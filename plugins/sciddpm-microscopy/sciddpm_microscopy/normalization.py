"""Per-channel percentile normalisation, CARE's, as a fitted Encoder saved with the model.

Fluorescence intensities have an arbitrary camera offset and a heavy bright tail (a few saturated
spots), so CARE maps the low and high percentiles of each channel to 0 and 1 instead of the min and
max or the mean and std (Weigert et al. 2018, Methods "Image normalization"; ``csbdeep.utils.normalize``
with ``pmin = 3``, ``pmax = 99.8``, its defaults). Here the percentiles are fitted once on the
training data and kept in the state dict, so generated images decode to the input's intensity
units (ADU, photons) and a saved model normalises new data exactly as it did its training data.
The map is to [-1, 1] (the scale diffusion's noise levels are set for), not CARE's [0, 1].
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sciddpm.interfaces import DataSource, Encoder
from torch import nn

__all__ = ["PercentileNormalize", "PercentileNormalizeConfig", "fit_percentiles"]


class PercentileNormalizeConfig(BaseModel):
    """Low/high percentiles mapped to -1 and 1 per channel (CARE's normalisation, fitted on the data)."""

    model_config = ConfigDict(extra="forbid")

    low: float = Field(3.0, ge=0, lt=100, description="Percentile mapped to -1 (csbdeep's pmin).")
    high: float = Field(99.8, gt=0, le=100, description="Percentile mapped to 1 (csbdeep's pmax).")
    max_values: int = Field(
        2_000_000,
        ge=1000,
        description="Values per channel the percentiles are estimated from (a seeded random subset "
        "of every sample's pixels when the data has more), bounding the fit's memory.",
    )
    seed: int = Field(0, description="Seed of the subset.")

    @model_validator(mode="after")
    def _ordered(self) -> PercentileNormalizeConfig:
        if self.low >= self.high:
            raise ValueError(f"low = {self.low} must be below high = {self.high} (percentiles)")
        return self


def fit_percentiles(
    arrays: Iterable[np.ndarray], count: int, low: float, high: float, max_values: int, seed: int, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``low`` and ``high`` percentiles of ``count`` arrays ``(C, *spatial)``.

    At most ``ceil(max_values / count)`` values per channel are drawn (seeded, without
    replacement) from each array, so the estimate sees every array and memory stays bounded; NaN
    values are ignored. Returns two float64 arrays of shape ``(C,)``. Raises ValueError naming
    ``what`` when there is nothing to fit or a channel is constant (its percentiles are equal:
    normalising would divide by zero).
    """
    rng = np.random.default_rng(seed)
    per_array = max(1, -(-max_values // max(count, 1)))
    chunks: list[np.ndarray] = []
    for a in arrays:
        flat = np.asarray(a, dtype=np.float64).reshape(a.shape[0], -1)
        if flat.shape[1] > per_array:
            flat = flat[:, rng.choice(flat.shape[1], per_array, replace=False)]
        chunks.append(flat)
    if not chunks:
        raise ValueError(f"cannot fit percentiles of {what}: there are no samples")
    values = np.concatenate(chunks, axis=1)
    lo, hi = np.nanpercentile(values, [low, high], axis=1)
    flat_channels = [c for c in range(len(lo)) if not hi[c] > lo[c]]
    if flat_channels:
        c = flat_channels[0]
        raise ValueError(
            f"channel {c} of {what} is constant at the {low}th-{high}th percentiles ({lo[c]:.6g} and "
            f"{hi[c]:.6g}): it cannot be normalised; drop the channel or widen the percentiles"
        )
    return lo, hi


class PercentileNormalize(nn.Module, Encoder):
    """``2 (x - p_low) / (p_high - p_low) - 1`` per channel, percentiles fitted on a DataSource.

    Buffers ``low_value``, ``high_value`` (``(C,)``, the input's units) and ``fitted`` are in the
    state dict, so a saved pipeline decodes to the same units. ``decode`` inverts ``encode``
    exactly (up to float rounding), also outside [-1, 1]: nothing is clipped, so a bright spot
    above the high percentile comes back as bright as it was.
    """

    low_value: torch.Tensor
    high_value: torch.Tensor
    fitted: torch.Tensor

    def __init__(self, config: PercentileNormalizeConfig | None = None) -> None:
        super().__init__()
        self.config = config or PercentileNormalizeConfig()
        self.register_buffer("low_value", torch.zeros(0))
        self.register_buffer("high_value", torch.ones(0))
        self.register_buffer("fitted", torch.tensor(False))

    @torch.no_grad()
    def fit(self, source: DataSource) -> None:
        """Fit the percentiles per channel on the samples of ``source`` (masked values excluded).

        Raises ValueError for an empty source or a constant channel (see :func:`fit_percentiles`).
        """
        cfg = self.config

        def values() -> Iterable[np.ndarray]:
            for s in source:
                x = s.x.detach().double().numpy().copy()
                if s.mask is not None:
                    x[np.broadcast_to(s.mask.numpy() <= 0, x.shape)] = np.nan
                yield x

        lo, hi = fit_percentiles(
            values(), len(source), cfg.low, cfg.high, cfg.max_values, cfg.seed, "the training data"
        )
        device = self.fitted.device
        self.low_value = torch.tensor(lo, dtype=torch.float32, device=device)
        self.high_value = torch.tensor(hi, dtype=torch.float32, device=device)
        self.fitted.fill_(True)

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not bool(self.fitted):
            raise RuntimeError(
                "PercentileNormalize is not fitted: call fit(source) on the training data first (the "
                "pipeline does this before training), or load a saved pipeline that holds its percentiles"
            )
        c = self.low_value.shape[0]
        if x.ndim < 2 or x.shape[1] != c:
            raise ValueError(
                f"PercentileNormalize was fitted on {c} channels but got a batch of shape "
                f"{tuple(x.shape)}; expected (B, {c}, *spatial)"
            )
        shape = (1, c) + (1,) * (x.ndim - 2)
        low = self.low_value.to(x.device, x.dtype).view(shape)
        return low, self.high_value.to(x.device, x.dtype).view(shape) - low

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``2 (x - p_low) / (p_high - p_low) - 1`` of ``x (B, C, *spatial)`` in the input's units.

        Raises RuntimeError before :meth:`fit` and ValueError for another channel count.
        """
        low, span = self._stats(x)
        return 2 * (x - low) / span - 1

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``(z + 1) / 2 (p_high - p_low) + p_low``: back to the input's units; raises as :meth:`encode`."""
        low, span = self._stats(z)
        return (z + 1) / 2 * span + low

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # A fresh encoder has empty buffers: take the saved sizes before loading the values.
        for name in ("low_value", "high_value"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
