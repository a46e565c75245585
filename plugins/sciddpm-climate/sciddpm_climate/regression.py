"""CorrDiff's first stage: a regression U-Net for the conditional mean of the fine field.

CorrDiff (Mardani et al. 2023, https://arxiv.org/abs/2309.15214) downscales in two stages: a
U-Net trained with MSE predicts the mean of the fine field from the coarse input, and a diffusion
model generates the residual around that mean. Here the regression predicts the correction to
the bilinear interpolation of the coarse field, from that interpolation, the static fields and
the time features; ``climate/xarray`` with ``residual = true`` and ``regression = DIR`` then
trains the diffusion model on ``target - (coarse + correction)``, and adds the mean back when
writing members.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from sciddpm import persistence
from sciddpm.data import collate
from sciddpm.interfaces import Conditioning
from sciddpm.training.stage import Stage
from torch import nn

__all__ = ["RegressionConfig", "RegressionMean", "train_regression"]

CONFIG_FILE = "regression.json"
WEIGHTS_FILE = "regression.safetensors"


class RegressionConfig(BaseModel):
    """The regression U-Net and its (short) MSE training."""

    model_config = ConfigDict(extra="forbid")

    channels: list[int] = Field([16, 32, 64], description="U-Net widths per level.")
    blocks_per_level: int = Field(1, ge=1, description="Residual blocks per level.")
    padding: list[str] = Field(["reflect", "circular"], description="U-Net padding for (lat, lon).")
    groups: int = Field(8, ge=1, description="GroupNorm groups; must divide every width.")
    steps: int = Field(500, ge=1, description="AdamW steps.")
    batch_size: int = Field(16, ge=1, description="Samples per step.")
    lr: float = Field(2e-3, gt=0, description="Learning rate (cosine decay to 0).")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps of the learning rate.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (torch's default).")
    seed: int = Field(0, description="Seed of the initialisation and the sample order.")


class RegressionMean(nn.Module):
    """``mean = coarse + std * UNet(standardised coarse | static, time)``, per channel."""

    def __init__(self, config: RegressionConfig, meta: dict[str, Any]) -> None:
        from sciddpm.registry import get_registry

        from sciddpm_climate.conditioning import FieldsConditioner, FieldsConditionerConfig

        super().__init__()
        self.config, self.meta = config, dict(meta)
        c, h, w = meta["data_shape"]
        s, tf = int(meta["static_channels"]), bool(meta["time_features"])
        self.register_buffer("mean", torch.zeros(c))
        self.register_buffer("std", torch.ones(c))
        self.cond = (
            FieldsConditioner(
                FieldsConditionerConfig(static_channels=s, time_features=tf, dim=32, data_shape=[c, h, w])
            )
            if s or tf
            else None
        )
        spec = {
            "type": "unet", "dims": 2, "in_channels": c, "channels": config.channels,
            "blocks_per_level": config.blocks_per_level, "attention_levels": [], "mid_attention": False,
            "padding": config.padding, "groups": config.groups, "prediction": "x0",
            "concat_channels": s, "vector_dim": 32 if tf else 0,
        }  # fmt: skip
        self.net = get_registry().build("denoiser", spec)

    def forward(self, condition: dict[str, Any]) -> torch.Tensor:
        """The mean field ``(B, C, h, w)`` (physical units) for batched or single conditions."""
        coarse = torch.as_tensor(condition["coarse"], dtype=torch.float32)
        single = coarse.ndim == 3
        coarse = coarse[None] if single else coarse
        b = len(coarse)
        z = (coarse - self.mean.view(-1, 1, 1)) / self.std.view(-1, 1, 1)
        cond = Conditioning()
        if self.cond is not None:
            raw = {k: condition.get(k) for k in ("static", "time")}
            if single:
                raw = {k: None if v is None else torch.as_tensor(v)[None] for k, v in raw.items()}
            cond = self.cond(raw, b)
        out = coarse + self.std.view(-1, 1, 1) * self.net(z, torch.zeros(b), cond)
        return out[0] if single else out

    def save(self, directory: str | Path) -> Path:
        """Write ``regression.json`` (config, grid, channels) and ``regression.safetensors``.

        Returns ``directory``. The files are sciddpm's one saved format (:mod:`sciddpm.persistence`).
        """
        meta = {"config": self.config.model_dump(), "model": self.meta}
        return persistence.save(directory, CONFIG_FILE, meta, {WEIGHTS_FILE: self.state_dict()})

    @classmethod
    def load(cls, directory: str | Path) -> RegressionMean:
        """Rebuild a model written by :meth:`save`, in eval mode.

        Models saved by sciddpm-climate 0.1.0 (before the format stamp) load too. Raises
        FileNotFoundError when ``regression.json`` is missing, ValueError for another format or a
        missing or misshapen tensor.
        """
        path = Path(directory) / CONFIG_FILE
        raw = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        if raw and "format" not in raw:  # written by sciddpm-climate 0.1.0, before the one saved format
            config, grid = raw.pop("config"), raw
        else:
            hint = " (train one with sciddpm_climate.regression.train_regression)"
            meta = persistence.read_meta(directory, CONFIG_FILE, "regression model", hint)
            config, grid = meta["config"], meta["model"]
        model = cls(RegressionConfig(**config), grid)
        path = Path(directory) / WEIGHTS_FILE
        weights = persistence.read_tensors(path, model.state_dict(), "regression model")
        model.load_state_dict(weights)
        return model.eval()


def train_regression(source: Any, out: str | Path, config: RegressionConfig | None = None) -> RegressionMean:
    """Fit the regression mean on a ``coarsen`` source (masked MSE, AdamW) and save it in ``out``.

    The source must not itself use a regression; ``residual`` or not, the target is the full field.
    """
    config = config or RegressionConfig()
    if not source.config.coarsen or source.config.regression:
        raise ValueError("train_regression needs a climate/xarray source with coarsen and no regression")
    torch.manual_seed(config.seed)
    meta = {
        "data_shape": list(source.sample_shape),
        "static_channels": 0 if source.static_fields is None else int(source.static_fields.shape[0]),
        "time_features": source.time_feats is not None,
        "channels": source.channel_names,
    }
    model = RegressionMean(config, meta)
    stats = source.statistics()
    model.mean.copy_(torch.tensor([s["mean"] for s in stats.values()]))
    model.std.copy_(torch.tensor([max(s["std"], 1e-6) for s in stats.values()]))
    if model.cond is not None and source.static_fields is not None:
        flat = torch.from_numpy(source.static_fields).reshape(len(source.static_fields), -1)
        model.cond.field_mean.copy_(flat.mean(1))
        model.cond.field_std.copy_(flat.std(1).clamp_min(1e-6))
    rng = torch.Generator().manual_seed(config.seed)

    def loss(step: int) -> tuple[float, None]:
        idx = torch.randint(len(source), (config.batch_size,), generator=rng).tolist()
        samples = [source[i] for i in idx]
        x, _, mask = collate(samples)
        raw = {
            k: None if samples[0].condition[k] is None else torch.stack([s.condition[k] for s in samples])
            for k in ("coarse", "static", "time")
        }
        if source.config.residual:
            x = x + raw["coarse"]
        err = ((model(raw) - x) / model.std.view(-1, 1, 1)) ** 2
        value = (err * mask).sum() / mask.sum().clamp_min(1)
        value.backward()
        return float(value.detach()), None

    model.train()
    stage = Stage("regression", model.parameters(), config, weight_decay=config.weight_decay, grad_clip=None)
    losses = stage.run(loss)
    model.eval()
    model.last_loss = losses[-1]  # type: ignore[attr-defined]
    model.save(out)
    return model
