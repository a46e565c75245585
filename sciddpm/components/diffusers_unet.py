"""The ``diffusers_unet`` denoiser: a diffusers U-Net, as it was trained, behind sciddpm's Denoiser contract.

Pretrained ``UNet2DModel`` (unconditional or class-conditional) and ``UNet2DConditionModel``
(cross-attention to tokens, e.g. a text encoder's hidden states) folders load from local
safetensors (:mod:`sciddpm.bridge.files`; pickles are refused). The module is diffusers' own, so
its output is diffusers' output: this wrapper only translates the call.

- **Noise input.** sciddpm reads diffusers timestep ``i`` as ``t = (i + 1) / T``
  (:func:`sciddpm.diffusion.spacing.sampling_times`), and a VP scheduler with ``discrete_betas =
  true`` gives the noise input ``1000 (t - 1/T)``; the wrapper passes ``T / 1000`` times that, which
  is ``i``. Sample it with such a scheduler and the diffusers scheduler's betas
  (:func:`sciddpm.bridge.schedulers.scheduler_spec` writes one).
- **Class labels.** diffusers adds ``class_embedding(label)`` to the time embedding. Here the
  ``class_label`` conditioner supplies that vector (``cond.vector``, width = the time-embedding
  width), so classifier-free guidance has a null class; :meth:`DiffusersUNet.init_conditioner`
  copies the trained ``class_embedding`` rows into it and gives the null class a zero vector.
- **Concat conditions** are joined to ``x_t`` on channels, as diffusers' conditional U-Nets expect.
- **Any size**: inputs are zero-padded on both sides to a multiple of the U-Net's downsampling and
  cropped back (as sciddpm's ``unet``); sizes that are already multiples see diffusers' exact output.

Needs the optional ``diffusers`` package (``pip install sciddpm[diffusers]``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from sciddpm.bridge.files import MODEL_CONFIG, read_json, read_weights
from sciddpm.bridge.unet import time_embedding_width
from sciddpm.interfaces import Conditioner, Conditioning, Denoiser, PredictionType
from sciddpm.persistence import loading_saved

__all__ = ["DiffusersUNet", "DiffusersUNetConfig", "diffusers_module"]

CLASSES = ("UNet2DModel", "UNet2DConditionModel")
#: U-Net options whose extra inputs (SDXL's added time ids, image embeddings, timestep-conditioned
#: projections, VE's Fourier noise input) the wrapper does not supply, and the values it accepts.
UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "addition_embed_type": (None,),
    "class_embed_type": (None,),
    "encoder_hid_dim_type": (None,),
    "time_cond_proj_dim": (None,),
    "time_embedding_type": (None, "positional"),
}


class DiffusersUNetConfig(BaseModel):
    """A diffusers U-Net folder and how sciddpm calls it; the widths are checked against the data."""

    model_config = ConfigDict(extra="forbid")

    weights: str | None = Field(
        None, description="Local diffusers U-Net folder (config.json + diffusion_pytorch_model.safetensors)."
    )
    unet_config: dict[str, Any] | None = Field(
        None,
        description="The folder's config.json, filled in from weights and stored with the pipeline, so a "
        "saved pipeline rebuilds without the folder.",
    )
    prediction: PredictionType = Field(
        "eps",
        description="What the U-Net predicts: diffusers' epsilon -> 'eps', v_prediction -> 'v', "
        "sample -> 'x0'.",
    )
    train_steps: int = Field(
        1000,
        ge=1,
        description="T of the diffusers scheduler the U-Net was trained with (num_train_timesteps).",
    )
    dims: Literal[2] | None = Field(None, description="Spatial dims; diffusers' U-Nets are 2-D. Filled in.")
    in_channels: int | None = Field(None, ge=1, description="Channels of x_t; filled in by the pipeline.")
    concat_channels: int = Field(0, ge=0, description="Conditioning channels joined to x_t; filled in.")
    vector_dim: int = Field(0, ge=0, description="Class-embedding width taken from cond.vector; filled in.")
    token_dim: int = Field(0, ge=0, description="Width of cross-attention tokens; filled in.")

    @model_validator(mode="before")
    @classmethod
    def _read_folder(cls, data: Any) -> Any:
        # Only a missing unet_config triggers a read, so a stored pipeline loads without the folder.
        if isinstance(data, dict) and data.get("unet_config") is None and data.get("weights") is not None:
            where = Path(str(data["weights"])).resolve()
            if (where / "model_index.json").is_file() and not (where / MODEL_CONFIG).is_file():
                raise ValueError(
                    f"weights={str(where)!r} is a whole diffusers pipeline; give its unet/ folder "
                    f"({str(where / 'unet')!r}), or import the pipeline with Pipeline.from_diffusers"
                )
            config = read_json(where / MODEL_CONFIG, f"the diffusers U-Net in {str(where)!r}")
            data = {**data, "weights": str(where), "unet_config": config}
        return data

    @model_validator(mode="after")
    def _check(self) -> DiffusersUNetConfig:
        if self.unet_config is None:
            raise ValueError("diffusers_unet needs weights = '<a local diffusers U-Net folder>'")
        kind = self.unet_config.get("_class_name")
        if kind not in CLASSES:
            raise ValueError(
                f"weights={self.weights!r} holds a {kind!r}; diffusers_unet wraps {' or '.join(CLASSES)}"
            )
        for key, allowed in UNSUPPORTED.items():
            value = self.unet_config.get(key)
            if value not in allowed:
                raise ValueError(
                    f"the U-Net in {self.weights!r} has {key}={value!r}, an input diffusers_unet does not "
                    f"pass (it passes x_t, the timestep, class vectors and tokens)"
                )
        return self


def diffusers_module(kind: str, config: dict[str, Any]) -> nn.Module:
    """A diffusers ``kind`` (UNet2DModel, UNet2DConditionModel) built from ``config``, randomly initialised.

    Raises ImportError naming the extra to install when diffusers is missing.
    """
    try:
        import diffusers
    except ImportError:
        raise ImportError(
            "the diffusers_unet denoiser needs the diffusers package: pip install 'sciddpm[diffusers]'"
        ) from None
    return getattr(diffusers, kind).from_config(config)


class DiffusersUNet(nn.Module, Denoiser):
    """A diffusers U-Net ``(x_t, c_noise, cond) -> F`` for ``(B, C, H, W)``, F of the configured prediction.

    ``cond.concat`` ``(B, concat_channels, H, W)`` is joined to ``x_t``; ``cond.vector``
    ``(B, time-embedding width)`` is the class embedding of a class-conditional U-Net;
    ``cond.tokens`` ``(B, L, cross_attention_dim)`` are a ``UNet2DConditionModel``'s
    ``encoder_hidden_states``. Raises ValueError when the pipeline's widths contradict the
    U-Net's config (naming both), and for a bad input shape.
    """

    def __init__(self, config: DiffusersUNetConfig) -> None:
        super().__init__()
        self.config = config
        unet_cfg = dict(config.unet_config or {})
        self.kind = str(unet_cfg.pop("_class_name"))
        unet_cfg = {k: v for k, v in unet_cfg.items() if not k.startswith("_")}
        self.prediction_type = config.prediction
        self.spatial_dims = 2
        total_in = int(unet_cfg.get("in_channels", 4))
        self.in_channels = config.in_channels or total_in - config.concat_channels
        self.out_channels = int(unet_cfg.get("out_channels", total_in))
        self.concat_channels = config.concat_channels
        classes = unet_cfg.get("num_class_embeds") is not None and unet_cfg.get("class_embed_type") is None
        self.vector_dim = time_embedding_width(unet_cfg) if classes else 0
        self.token_dim = int(unet_cfg.get("cross_attention_dim") or 0) if self.kind == CLASSES[1] else 0
        self._check_widths(total_in, config)
        self.unet = diffusers_module(self.kind, unet_cfg)
        self.multiple = 2 ** (len(unet_cfg.get("block_out_channels", [0])) - 1)
        #: diffusers' trained class embedding ``(K, width)``, moved to the class_label conditioner.
        self.class_table: torch.Tensor | None = None
        # A saved pipeline holds the tensors itself: Pipeline.load does not read the folder.
        if config.weights is not None and not loading_saved() and Path(config.weights).is_dir():
            self._load(Path(config.weights))
        if classes:
            self.unet.class_embedding = nn.Identity()  # cond.vector is the class embedding

    def _check_widths(self, total_in: int, config: DiffusersUNetConfig) -> None:
        where = f"the diffusers U-Net in {config.weights!r}"
        if self.in_channels + self.concat_channels != total_in:
            raise ValueError(
                f"{where} takes {total_in} input channels, but the pipeline gives x_t with "
                f"{self.in_channels} "
                f"and {self.concat_channels} concat channels; use data (or latents) with {total_in} channels"
            )
        if config.vector_dim not in (0, self.vector_dim):
            raise ValueError(
                f"{where} takes a class embedding of width {self.vector_dim}, but the conditioner gives "
                f"vectors of width {config.vector_dim}; use class_label with dim = {self.vector_dim}"
                if self.vector_dim
                else f"{where} takes no conditioning vector, but the conditioner gives width "
                f"{config.vector_dim}"
            )
        if config.token_dim not in (0, self.token_dim):
            raise ValueError(
                f"{where} attends to tokens of width {self.token_dim}, but the conditioner gives "
                f"{config.token_dim}"
            )

    def _load(self, folder: Path) -> None:
        tensors = read_weights(folder)
        if self.vector_dim:  # loaded into the module being replaced, kept for the conditioner
            self.class_table = tensors.get("class_embedding.weight")
        missing, unexpected = self.unet.load_state_dict(tensors, strict=False)
        bad = missing or unexpected
        if bad:
            what = "lack" if missing else "have an unknown"
            raise ValueError(
                f"the weights in {str(folder)!r} {what} tensor {bad[0]!r} ({len(bad)} such); the weights "
                "and config.json belong to different models"
            )

    def init_conditioner(self, conditioner: Conditioner) -> None:
        """Copy diffusers' trained class embedding into a ``class_label`` conditioner; null class = 0.

        Raises ValueError when the U-Net is class-conditional and ``conditioner`` has no class
        embedding of its shape (naming the conditioner to use).
        """
        if not self.vector_dim:
            return
        table = self.class_table
        weight = getattr(getattr(conditioner, "embedding", None), "weight", None)
        classes = int(self.config.unet_config.get("num_class_embeds") or 0)  # type: ignore[union-attr]
        if weight is None or weight.shape != (classes + 1, self.vector_dim):
            raise ValueError(
                f"the diffusers U-Net is class-conditional ({classes} classes): use the conditioner "
                f"{{type = 'class_label', num_classes = {classes}, dim = {self.vector_dim}}}"
            )
        if table is None:  # built from a stored config: the saved pipeline's state fills it
            return
        null = (self.config.unet_config or {}).get("_sciddpm_null_class")  # written by sciddpm's export
        with torch.no_grad():
            weight[:classes] = table.to(weight.dtype)
            # Without one, the null class adds no class embedding.
            weight[classes:] = torch.tensor(null, dtype=weight.dtype) if null else 0.0

    def forward(
        self, x_t: torch.Tensor, noise: torch.Tensor, cond: Conditioning | None = None
    ) -> torch.Tensor:
        """F ``(B, out_channels, H, W)`` for ``x_t (B, in_channels, H, W)`` at noise input ``noise (B,)``."""
        cond = cond if cond is not None else Conditioning()
        if x_t.ndim != 4 or x_t.shape[1] != self.in_channels:
            raise ValueError(
                f"diffusers_unet expects x_t of shape (B, {self.in_channels}, H, W), got {tuple(x_t.shape)}"
            )
        for part, width in (
            ("concat", self.concat_channels),
            ("vector", self.vector_dim),
            ("tokens", self.token_dim),
        ):
            given = getattr(cond, part)
            if bool(width) != (given is not None):
                raise ValueError(
                    f"diffusers_unet was built {'with' if width else 'without'} cond.{part} "
                    f"(width {width}) but got {'none' if given is None else tuple(given.shape)}"
                )
        h = x_t if cond.concat is None else torch.cat([x_t, cond.concat.to(x_t.dtype)], dim=1)
        # diffusers needs sizes its downsampling divides: pad with zeros on both sides, crop after.
        spatial = x_t.shape[2:]
        extra = [(-n) % self.multiple for n in spatial]
        h = F.pad(h, [extra[1] // 2, extra[1] - extra[1] // 2, extra[0] // 2, extra[0] - extra[0] // 2])
        noise = torch.as_tensor(noise, device=x_t.device).expand(len(x_t))
        timestep = noise.to(torch.float32) * (self.config.train_steps / 1000)
        kwargs: dict[str, Any] = {}
        if self.vector_dim:
            kwargs["class_labels"] = cond.vector.to(x_t.dtype)
        if self.kind == CLASSES[1]:
            kwargs["encoder_hidden_states"] = cond.tokens.to(x_t.dtype) if cond.tokens is not None else None
        out = self.unet(h, timestep, return_dict=False, **kwargs)[0]
        top, left = extra[0] // 2, extra[1] // 2
        return out[..., top : top + spatial[0], left : left + spatial[1]]
