"""The ``climate/fields`` conditioner: static fields concatenated, time features as a FiLM vector.

It consumes the ``{"static": (S, h, w), "time": (4,)}`` conditions of ``climate/xarray``. Static
fields (orography, land-sea mask) are concatenated to ``x_t`` on channels; sin/cos of the time of
year and day go through a small MLP into the noise-level embedding. The null condition (for
condition dropout and guidance) is zero fields and a learned null vector.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from sciddpm.interfaces import Conditioner, Conditioning, DataSource
from torch import nn

__all__ = ["FieldsConditioner", "FieldsConditionerConfig"]

TIME_FEATURES = 4


class FieldsConditionerConfig(BaseModel):
    """Static conditioning fields and time-of-year/day features of ``climate/xarray`` samples."""

    model_config = ConfigDict(extra="forbid")

    static_channels: int = Field(0, ge=0, description="Number of static fields (the source's `static`).")
    time_features: bool = Field(False, description="Whether samples carry time features (source option).")
    dim: int = Field(64, ge=1, description="Width of the time-feature embedding vector.")
    data_shape: list[int] | None = Field(
        None, description="(C, h, w) of a sample; filled in by the pipeline (sizes the null fields)."
    )


class FieldsConditioner(nn.Module, Conditioner):
    """Static fields -> ``concat``; time features -> ``vector`` (MLP).

    ``forward`` takes a batched dict (what :meth:`collate` builds), one sample's dict (broadcast
    to the batch) or a list of per-sample dicts; ``Pipeline.sample(n, [cond] * n)`` passes a list.
    """

    def __init__(self, config: FieldsConditionerConfig) -> None:
        super().__init__()
        if config.static_channels == 0 and not config.time_features:
            raise ValueError(
                "climate/fields needs static_channels > 0 or time_features = true; "
                "for no conditioning use the 'none' conditioner"
            )
        if config.static_channels and config.data_shape is None:
            raise ValueError("climate/fields with static fields needs data_shape (the pipeline fills it in)")
        self.config = config
        self.concat_channels = config.static_channels
        self.vector_dim = config.dim if config.time_features else 0
        self.mlp = (
            nn.Sequential(nn.Linear(TIME_FEATURES, config.dim), nn.SiLU(), nn.Linear(config.dim, config.dim))
            if config.time_features
            else None
        )
        self.null_vector = nn.Parameter(torch.zeros(config.dim)) if config.time_features else None

    def fit(self, source: DataSource) -> None:
        """Check that the source delivers what the config declares (they are set separately)."""
        static = getattr(source, "static_fields", None)
        have = 0 if static is None else static.shape[0]
        feats = getattr(source, "time_feats", None) is not None
        if have != self.config.static_channels or feats != self.config.time_features:
            raise ValueError(
                f"climate/fields has static_channels={self.config.static_channels}, "
                f"time_features={self.config.time_features} but the data source gives {have} static "
                f"field(s) and time_features={feats}; set the conditioner to match"
            )

    def collate(self, raws: list[Any]) -> dict[str, torch.Tensor | None]:
        if any(r is None for r in raws):
            raise ValueError("climate/fields needs samples with a condition dict (static fields / time)")
        out: dict[str, torch.Tensor | None] = {}
        for key in ("static", "time"):
            parts = [r.get(key) for r in raws]
            out[key] = None if parts[0] is None else torch.stack(parts)
        return out

    def forward(self, raw: Any, batch_size: int) -> Conditioning:
        if raw is None:
            return self.null(batch_size)
        if isinstance(raw, (list, tuple)):  # per-sample condition dicts, as Pipeline.sample passes them
            raw = self.collate(list(raw))
        device = next(self.parameters(), torch.zeros(0)).device
        concat = vector = None
        if self.concat_channels:
            s = torch.as_tensor(raw["static"], dtype=torch.float32, device=device)
            concat = s.expand(batch_size, *s.shape) if s.ndim == 3 else s
        if self.mlp is not None:
            t = torch.as_tensor(raw["time"], dtype=torch.float32, device=device)
            vector = self.mlp(t.expand(batch_size, -1) if t.ndim == 1 else t)
        return Conditioning(concat=concat, vector=vector)

    def null(self, batch_size: int) -> Conditioning:
        concat = vector = None
        if self.concat_channels:
            assert self.config.data_shape is not None
            h, w = self.config.data_shape[1:]
            device = self.null_vector.device if self.null_vector is not None else None
            concat = torch.zeros(batch_size, self.concat_channels, h, w, device=device)
        if self.null_vector is not None:
            vector = self.null_vector.expand(batch_size, -1)
        return Conditioning(concat=concat, vector=vector)
