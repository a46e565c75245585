"""Built-in pixel-space encoders: identity, a fixed range mapped to [-1, 1], fitted standardisation.

Fitted state lives in registered buffers, so it is saved and loaded with the pipeline's
state dict and samples decode back to physical units.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from sciddpm.interfaces import DataSource, Encoder

__all__ = ["Identity", "IdentityConfig", "Range", "RangeConfig", "Standardize", "StandardizeConfig"]


class IdentityConfig(BaseModel):
    """The identity encoder has no options."""

    model_config = ConfigDict(extra="forbid")


class Identity(nn.Module, Encoder):
    """Model space = data space."""

    def __init__(self, config: IdentityConfig | None = None) -> None:
        super().__init__()
        self.config = config or IdentityConfig()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` itself: model space is data space."""
        return x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``z`` itself: model space is data space."""
        return z


class RangeConfig(BaseModel):
    """A fixed physical range ``[lo, hi]`` mapped to model space ``[-1, 1]``.

    Raises a validation error unless ``lo < hi``.
    """

    model_config = ConfigDict(extra="forbid")

    data_range: tuple[float, float] = Field(
        (0.0, 1.0), description="Physical values seen as -1 and 1 (e.g. [0, 255] for 8-bit images)."
    )

    @model_validator(mode="after")
    def _ordered(self) -> RangeConfig:
        lo, hi = self.data_range
        if not lo < hi:
            raise ValueError(f"data_range must be [lo, hi] with lo < hi, got {list(self.data_range)}")
        return self


class Range(nn.Module, Encoder):
    """``(x - (lo + hi) / 2) / ((hi - lo) / 2)``: the [-1, 1] scaling of DDPM's images (Ho et al. 2020,
    Sec. 4), which models trained in diffusers expect. Nothing is fitted; any shape ``(B, C, ...)``."""

    def __init__(self, config: RangeConfig | None = None) -> None:
        super().__init__()
        self.config = config or RangeConfig()
        lo, hi = self.config.data_range
        self.center, self.half_width = (lo + hi) / 2, (hi - lo) / 2

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Physical ``x`` to model space: ``lo -> -1``, ``hi -> 1``."""
        return (x - self.center) / self.half_width

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Model space back to physical units (not clipped)."""
        return z * self.half_width + self.center


class StandardizeConfig(BaseModel):
    """Per-channel standardisation ``(x - mean) / std`` fitted on the training data."""

    model_config = ConfigDict(extra="forbid")

    eps: float = Field(
        default=1e-6, gt=0, description="Floor on the fitted std, so constant channels do not divide by 0."
    )
    batch_size: int = Field(default=256, ge=1, description="Samples per step of the fitting pass.")


class Standardize(nn.Module, Encoder):
    """Per-channel ``(x - mean) / std`` with mean and (population) std fitted on a DataSource.

    ``fit`` makes one streaming pass (Chan et al. 1979 pairwise update of Welford's moments,
    in float64) that counts only valid values where samples carry a mask. The buffers
    ``mean``, ``std`` (shape ``(C,)``) and ``fitted`` are in the state dict; loading a state
    dict resizes them, so a fresh encoder can load a saved one.
    """

    mean: torch.Tensor
    std: torch.Tensor
    fitted: torch.Tensor

    def __init__(self, config: StandardizeConfig | None = None) -> None:
        super().__init__()
        self.config = config or StandardizeConfig()
        self.register_buffer("mean", torch.zeros(0))
        self.register_buffer("std", torch.ones(0))
        self.register_buffer("fitted", torch.tensor(False))

    @torch.no_grad()
    def fit(self, source: DataSource) -> None:
        """Fit ``mean`` and ``std`` per channel on every sample of ``source`` (masks respected)."""
        from sciddpm.data.batching import collate

        n_total = len(source)
        if n_total == 0:
            raise ValueError("Standardize.fit got an empty data source; it needs samples to fit on")
        channels = source.sample_shape[0]
        count = torch.zeros(channels, dtype=torch.float64)
        mean = torch.zeros(channels, dtype=torch.float64)
        m2 = torch.zeros(channels, dtype=torch.float64)
        step = self.config.batch_size
        for start in range(0, n_total, step):
            x, _, mask = collate([source[i] for i in range(start, min(start + step, n_total))])
            x = x.double().transpose(0, 1).reshape(channels, -1)  # (C, values)
            if mask is None:
                w = torch.ones_like(x)
            else:
                w = (mask.transpose(0, 1).reshape(channels, -1) > 0).double()
            n_b = w.sum(dim=1)
            mean_b = (w * x).sum(dim=1) / n_b.clamp_min(1)
            m2_b = (w * (x - mean_b[:, None]) ** 2).sum(dim=1)
            # Chan, Golub & LeVeque (1979): merge two sets' (count, mean, M2).
            n = count + n_b
            delta = mean_b - mean
            mean = mean + delta * n_b / n.clamp_min(1)
            m2 = m2 + m2_b + delta**2 * count * n_b / n.clamp_min(1)
            count = n
        if (count == 0).any():
            c = int(torch.nonzero(count == 0)[0])
            raise ValueError(f"Standardize.fit: channel {c} has no valid (unmasked) values to fit on")
        std = (m2 / count).sqrt().clamp_min(self.config.eps)
        device = self.fitted.device
        self.mean = mean.float().to(device)
        self.std = std.float().to(device)
        self.fitted.fill_(True)

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not bool(self.fitted):
            raise RuntimeError(
                "Standardize encoder is not fitted: call fit(source) on the training data first "
                "(the pipeline does this before training), or load a saved pipeline that holds its stats"
            )
        c = self.mean.shape[0]
        if x.ndim < 2 or x.shape[1] != c:
            raise ValueError(
                f"Standardize was fitted on {c} channels but got a batch of shape {tuple(x.shape)}; "
                f"expected (B, {c}, *spatial)"
            )
        shape = (1, c) + (1,) * (x.ndim - 2)
        return self.mean.to(x.dtype).view(shape), self.std.to(x.dtype).view(shape)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std`` per channel for ``x (B, C, *spatial)`` in physical units.

        Raises RuntimeError before :meth:`fit` and ValueError for another channel count.
        """
        mean, std = self._stats(x)
        return (x - mean) / std

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``z * std + mean`` per channel: back to physical units; raises as :meth:`encode`."""
        mean, std = self._stats(z)
        return z * std + mean

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # The channel count is only known after fit: take the buffers' shapes from the saved ones.
        for name in ("mean", "std"):
            saved = state_dict.get(prefix + name)
            if saved is not None and saved.shape != getattr(self, name).shape:
                setattr(self, name, torch.empty(saved.shape, dtype=torch.float32, device=self.fitted.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        """The channel count, whether it is fitted and the std floor, for ``repr``."""
        return f"channels={self.mean.shape[0]}, fitted={bool(self.fitted)}, eps={self.config.eps}"
