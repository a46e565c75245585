"""The ``climate/fields`` conditioner: coarse and static fields concatenated, time features as FiLM.

It consumes the ``{"coarse": (C, h, w), "static": (S, h, w), "time": (4,)}`` conditions of
``climate/xarray``. The coarse field (downscaling) and static fields (orography, land-sea mask)
are standardised with statistics fitted on the data (kept in the state dict) and concatenated to
``x_t`` on channels, coarse first; sin/cos of the time of year and day go through a small MLP
into the noise-level embedding. The null condition (for condition dropout and guidance) is zero
(i.e. mean) fields and a learned null vector.
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

    coarse_channels: int = Field(
        0, ge=0, description="Channels of the coarse condition (the source's channels when it has `coarsen`)."
    )
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
        if config.static_channels == 0 and config.coarse_channels == 0 and not config.time_features:
            raise ValueError(
                "climate/fields needs coarse_channels > 0, static_channels > 0 or time_features = true; "
                "for no conditioning use the 'none' conditioner"
            )
        if (config.static_channels or config.coarse_channels) and config.data_shape is None:
            raise ValueError("climate/fields with fields needs data_shape (the pipeline fills it in)")
        self.config = config
        self.concat_channels = config.coarse_channels + config.static_channels
        # Per-channel mean and std of the concatenated fields, fitted on the data (saved with the model):
        # raw orography (1000s of m) or temperatures (~280 K) would swamp a standardised x_t.
        self.register_buffer("field_mean", torch.zeros(self.concat_channels))
        self.register_buffer("field_std", torch.ones(self.concat_channels))
        self.vector_dim = config.dim if config.time_features else 0
        self.mlp = (
            nn.Sequential(nn.Linear(TIME_FEATURES, config.dim), nn.SiLU(), nn.Linear(config.dim, config.dim))
            if config.time_features
            else None
        )
        self.null_vector = nn.Parameter(torch.zeros(config.dim)) if config.time_features else None

    def fit(self, source: DataSource) -> None:
        """Check that the source delivers what the config declares; fit the fields' mean and std.

        The coarse channels use the source's statistics of the target variables (the coarse field
        is their block mean); the static fields their own mean and std.
        """
        static = getattr(source, "static_fields", None)
        have = 0 if static is None else static.shape[0]
        feats = getattr(source, "time_feats", None) is not None
        coarse = getattr(getattr(source, "config", None), "coarsen", None)
        n_coarse = source.sample_shape[0] if coarse else 0
        cfg = self.config
        if (have, feats, n_coarse) != (cfg.static_channels, cfg.time_features, cfg.coarse_channels):
            raise ValueError(
                f"climate/fields has coarse_channels={cfg.coarse_channels}, static_channels="
                f"{cfg.static_channels}, time_features={cfg.time_features} but the data source gives "
                f"{n_coarse} coarse channel(s), {have} static field(s) and time_features={feats}; "
                "set the conditioner to match"
            )
        means, stds = [], []
        if n_coarse:
            stats = source.statistics()  # type: ignore[attr-defined]
            means += [s["mean"] for s in stats.values()]
            stds += [s["std"] for s in stats.values()]
        if have:
            flat = static.reshape(have, -1)
            means += flat.mean(1).tolist()
            stds += flat.std(1).tolist()
        if means:
            self.field_mean.copy_(torch.tensor(means, dtype=torch.float32))
            self.field_std.copy_(torch.tensor(stds, dtype=torch.float32).clamp_min(1e-6))

    def collate(self, raws: list[Any]) -> dict[str, torch.Tensor | None]:
        """The samples' condition dicts stacked per key (None where absent).

        Raises ValueError when a sample has no condition dict.
        """
        if any(r is None for r in raws):
            raise ValueError("climate/fields needs samples with a condition dict (static fields / time)")
        out: dict[str, torch.Tensor | None] = {}
        for key in ("coarse", "static", "time"):
            parts = [r.get(key) for r in raws]
            out[key] = None if parts[0] is None else torch.stack(parts)
        return out

    def forward(self, raw: Any, batch_size: int) -> Conditioning:
        """``Conditioning(concat=standardised static fields, vector=embedded time features)`` of ``raw``.

        ``raw`` is one condition dict, a batch of them stacked, or a list of per-sample dicts; None
        gives :meth:`null`.
        """
        if raw is None:
            return self.null(batch_size)
        if isinstance(raw, (list, tuple)):  # per-sample condition dicts, as Pipeline.sample passes them
            raw = self.collate(list(raw))
        device = next(self.parameters(), torch.zeros(0)).device
        concat = vector = None
        if self.concat_channels:
            keys = [
                k
                for k, n in (("coarse", self.config.coarse_channels), ("static", self.config.static_channels))
                if n
            ]
            missing = [k for k in keys if raw.get(k) is None]
            if missing:
                raise ValueError(
                    f"climate/fields expects condition field(s) {missing}; the condition has none"
                )
            fields = [torch.as_tensor(raw[k], dtype=torch.float32, device=device) for k in keys]
            f = torch.cat(fields, dim=-3)
            f = (f - self.field_mean.view(-1, 1, 1)) / self.field_std.view(-1, 1, 1)
            concat = f.expand(batch_size, *f.shape) if f.ndim == 3 else f
        if self.mlp is not None:
            t = torch.as_tensor(raw["time"], dtype=torch.float32, device=device)
            vector = self.mlp(t.expand(batch_size, -1) if t.ndim == 1 else t)
        return Conditioning(concat=concat, vector=vector)

    def null(self, batch_size: int) -> Conditioning:
        """Zero fields and the null time embedding for ``batch_size`` rows.

        The unconditional input of guidance.
        """
        concat = vector = None
        if self.concat_channels:
            assert self.config.data_shape is not None
            h, w = self.config.data_shape[1:]
            device = self.null_vector.device if self.null_vector is not None else None
            concat = torch.zeros(batch_size, self.concat_channels, h, w, device=device)
        if self.null_vector is not None:
            vector = self.null_vector.expand(batch_size, -1)
        return Conditioning(concat=concat, vector=vector)
