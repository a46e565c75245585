"""CLIP (Radford et al. 2021, https://arxiv.org/abs/2103.00020): a ViT image tower and a causal text tower.

The module tree, parameter names and maths follow Hugging Face ``transformers``' ``CLIPModel``
(pre-LayerNorm blocks, quick-GELU, a class token pooled through ``post_layernorm``, the text
pooled at its first end-of-text token), so a state dict written by ``CLIPModel.save_pretrained``
loads unchanged and the two give the same embeddings (tested). :func:`load_pretrained` reads such
a directory (``config.json`` + ``model.safetensors``) and :func:`save_pretrained` writes one.
Unlike ``transformers``, the image tower takes 1-, 2- or 3-D inputs (``spatial_dims``; 2 is the
published layout) and the logit scale is clamped at 100 where it is used (the paper's clip).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from sciddpm import persistence

__all__ = [
    "CLIP",
    "MAX_LOGIT_SCALE",
    "CLIPConfig",
    "CLIPTextConfig",
    "CLIPVisionConfig",
    "clip_loss",
    "load_pretrained",
    "load_state",
    "read_config",
    "read_pretrained_tensors",
    "save_pretrained",
]

#: Radford et al. 2021, sec. 2.5: the learnable temperature "is clipped to prevent scaling the logits by
#: more than 100", i.e. ``exp(logit_scale) <= 100``.
MAX_LOGIT_SCALE = math.log(100.0)
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_PICKLES = (
    "pytorch_model.bin",
    "model.bin",
    "model.pt",
    "model.pth",
    "model.ckpt",
    "open_clip_pytorch_model.bin",
)

Activation = Literal["quick_gelu", "gelu"]
_CFG = ConfigDict(extra="forbid")


class CLIPTextConfig(BaseModel):
    """The text tower, in ``transformers``' ``CLIPTextConfig`` names and defaults (ViT-B/32's)."""

    model_config = _CFG

    vocab_size: int = Field(49408, ge=1, description="Number of token ids.")
    hidden_size: int = Field(512, ge=1, description="Width of the transformer.")
    intermediate_size: int = Field(2048, ge=1, description="Width of the MLP inside each block.")
    num_hidden_layers: int = Field(12, ge=1, description="Number of transformer blocks.")
    num_attention_heads: int = Field(8, ge=1, description="Attention heads; must divide hidden_size.")
    max_position_embeddings: int = Field(77, ge=2, description="Context length in tokens.")
    hidden_act: Activation = Field("quick_gelu", description="MLP activation.")
    layer_norm_eps: float = Field(1e-5, gt=0, description="LayerNorm epsilon.")
    pad_token_id: int = Field(1, description="Padding token id.")
    bos_token_id: int = Field(49406, description="Start-of-text token id.")
    eos_token_id: int = Field(
        49407,
        description="End-of-text token id; the text is pooled at its first occurrence (at the largest "
        "id for legacy configs with eos_token_id = 2, as transformers does).",
    )


class CLIPVisionConfig(BaseModel):
    """The image tower (a ViT), in ``transformers``' ``CLIPVisionConfig`` names and defaults."""

    model_config = _CFG

    hidden_size: int = Field(768, ge=1, description="Width of the transformer.")
    intermediate_size: int = Field(3072, ge=1, description="Width of the MLP inside each block.")
    num_hidden_layers: int = Field(12, ge=1, description="Number of transformer blocks.")
    num_attention_heads: int = Field(12, ge=1, description="Attention heads; must divide hidden_size.")
    num_channels: int = Field(3, ge=1, description="Input channels.")
    image_size: int = Field(224, ge=1, description="Side length of the (square/cubic) input.")
    patch_size: int = Field(32, ge=1, description="Side length of a patch; must divide image_size.")
    hidden_act: Activation = Field("quick_gelu", description="MLP activation.")
    layer_norm_eps: float = Field(1e-5, gt=0, description="LayerNorm epsilon.")
    spatial_dims: Literal[1, 2, 3] = Field(
        2, description="Spatial dims of the input (sciddpm extension; transformers' layout is 2)."
    )


class CLIPConfig(BaseModel):
    """Both towers plus the shared embedding space, in ``transformers``' ``CLIPConfig`` layout."""

    model_config = _CFG

    text_config: CLIPTextConfig = Field(default_factory=CLIPTextConfig, description="The text tower.")
    vision_config: CLIPVisionConfig = Field(default_factory=CLIPVisionConfig, description="The image tower.")
    projection_dim: int = Field(512, ge=1, description="Width of the shared embedding space.")
    logit_scale_init_value: float = Field(
        math.log(1 / 0.07), description="Initial log temperature, log(1/0.07) as in the paper."
    )

    @classmethod
    def from_hf(cls, raw: Mapping[str, Any]) -> CLIPConfig:
        """From a ``transformers`` ``config.json``: known keys are read, missing ones take its defaults."""

        def pick(model: type[BaseModel], d: Mapping[str, Any] | None) -> dict[str, Any]:
            return {k: v for k, v in (d or {}).items() if k in model.model_fields and k != "spatial_dims"}

        return cls(
            text_config=CLIPTextConfig(**pick(CLIPTextConfig, raw.get("text_config"))),
            vision_config=CLIPVisionConfig(**pick(CLIPVisionConfig, raw.get("vision_config"))),
            **{k: raw[k] for k in ("projection_dim", "logit_scale_init_value") if k in raw},
        )

    def to_hf(self) -> dict[str, Any]:
        """A ``config.json`` that ``transformers.CLIPModel.from_pretrained`` reads."""
        text = {**self.text_config.model_dump(), "model_type": "clip_text_model"}
        vision = {
            **self.vision_config.model_dump(exclude={"spatial_dims"}),
            "model_type": "clip_vision_model",
        }
        if self.vision_config.spatial_dims != 2:
            vision["spatial_dims"] = self.vision_config.spatial_dims  # not readable by transformers
        return {
            "architectures": ["CLIPModel"],
            "model_type": "clip",
            "projection_dim": self.projection_dim,
            "logit_scale_init_value": self.logit_scale_init_value,
            "text_config": text,
            "vision_config": vision,
        }


# --- the transformer shared by both towers -------------------------------------------------------


def _activation(name: str) -> Any:
    if name == "quick_gelu":  # the original CLIP's sigmoid approximation of GELU
        return lambda x: x * torch.sigmoid(1.702 * x)
    return F.gelu


class CLIPAttention(nn.Module):
    """Multi-head self-attention with separate q/k/v projections (transformers' names)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"num_attention_heads={heads} must divide hidden_size={width}")
        self.heads = heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        """Multi-head self-attention over ``x (B, L, width)``, causal for the text tower."""
        q, k, v = (
            rearrange(p(x), "b n (h d) -> b h n d", h=self.heads)
            for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.out_proj(rearrange(out, "b h n d -> b n (h d)"))


class CLIPMLP(nn.Module):
    """The transformer block's two-layer MLP (width -> hidden -> width) with CLIP's activation."""

    def __init__(self, width: int, hidden: int, act: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)
        self.act = _activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``fc2(act(fc1(x)))`` on ``x (B, L, width)``."""
        return self.fc2(self.act(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    """Pre-LayerNorm transformer block (GPT-2 / ViT layout)."""

    def __init__(self, cfg: CLIPTextConfig | CLIPVisionConfig) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.self_attn = CLIPAttention(cfg.hidden_size, cfg.num_attention_heads)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = CLIPMLP(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act)

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        """Pre-norm attention and MLP residual steps on ``x (B, L, width)``."""
        x = x + self.self_attn(self.layer_norm1(x), causal)
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Module):
    """A stack of ``num_hidden_layers`` :class:`CLIPEncoderLayer` (transformers' ``CLIPEncoder``)."""

    def __init__(self, cfg: CLIPTextConfig | CLIPVisionConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList([CLIPEncoderLayer(cfg) for _ in range(cfg.num_hidden_layers)])

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        """Every layer in turn on ``x (B, L, width)``; ``causal`` masks future tokens (the text tower)."""
        for layer in self.layers:
            x = layer(x, causal)
        return x


# --- the towers ----------------------------------------------------------------------------------


class CLIPTextEmbeddings(nn.Module):
    """Token plus learned position embeddings of the text tower."""

    def __init__(self, cfg: CLIPTextConfig) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embedding = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """``(B, L, width)`` embeddings of token ``ids (B, L)``."""
        return self.token_embedding(ids) + self.position_embedding.weight[: ids.shape[1]]


class CLIPTextTransformer(nn.Module):
    """Causal transformer over token ids; pooled at the end-of-text token (GPT-style)."""

    def __init__(self, cfg: CLIPTextConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embeddings = CLIPTextEmbeddings(cfg)
        self.encoder = CLIPEncoder(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(last_hidden_state (B, L, width), pooled (B, width))`` for token ids ``(B, L)``."""
        n = self.config.max_position_embeddings
        if ids.ndim != 2 or ids.shape[1] > n:
            raise ValueError(f"token ids must be (B, L) with L <= {n}, got shape {tuple(ids.shape)}")
        hidden = self.final_layer_norm(self.encoder(self.embeddings(ids), causal=True))
        eos = self.config.eos_token_id
        # transformers' rule: legacy configs (eos_token_id == 2) pool at the largest id.
        where = ids.argmax(-1) if eos == 2 else (ids == eos).int().argmax(-1)
        return hidden, hidden[torch.arange(len(ids), device=ids.device), where]


class CLIPVisionEmbeddings(nn.Module):
    """Patch embeddings (a strided conv, 1/2/3-D) with a class token and learned positions (ViT)."""

    def __init__(self, cfg: CLIPVisionConfig) -> None:
        super().__init__()
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"patch_size={cfg.patch_size} must divide image_size={cfg.image_size}")
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[cfg.spatial_dims]
        self.class_embedding = nn.Parameter(torch.randn(cfg.hidden_size))
        self.patch_embedding = conv(
            cfg.num_channels, cfg.hidden_size, cfg.patch_size, stride=cfg.patch_size, bias=False
        )
        positions = (cfg.image_size // cfg.patch_size) ** cfg.spatial_dims + 1
        self.position_embedding = nn.Embedding(positions, cfg.hidden_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(B, 1 + patches, width)``: the class token and the patches of ``pixels (B, C, *spatial)``."""
        patches = self.patch_embedding(pixels).flatten(2).transpose(1, 2)  # (B, patches, width)
        cls = self.class_embedding.to(patches.dtype).expand(len(patches), 1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding.weight


class CLIPVisionTransformer(nn.Module):
    """ViT (Dosovitskiy et al. 2021) with CLIP's extra LayerNorm before the blocks."""

    def __init__(self, cfg: CLIPVisionConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embeddings = CLIPVisionEmbeddings(cfg)
        self.pre_layrnorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)  # transformers' spelling
        self.encoder = CLIPEncoder(cfg)
        self.post_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(last_hidden_state (B, 1 + patches, width), pooled (B, width))`` for ``(B, C, *spatial)``."""
        c = self.config
        expected = (c.num_channels, *[c.image_size] * c.spatial_dims)
        if tuple(pixels.shape[1:]) != expected:
            raise ValueError(
                f"CLIP image tower expects (B, {', '.join(map(str, expected))}), got {tuple(pixels.shape)}"
            )
        hidden = self.encoder(self.pre_layrnorm(self.embeddings(pixels)))
        return hidden, self.post_layernorm(hidden[:, 0])


class CLIP(nn.Module):
    """Image and text towers with linear projections into a shared space and a learnable temperature.

    State-dict keys equal ``transformers.CLIPModel``'s.
    """

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        self.config = config
        self.text_model = CLIPTextTransformer(config.text_config)
        self.vision_model = CLIPVisionTransformer(config.vision_config)
        self.visual_projection = nn.Linear(
            config.vision_config.hidden_size, config.projection_dim, bias=False
        )
        self.text_projection = nn.Linear(config.text_config.hidden_size, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init_value)))
        _init_weights(self)

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """Projected (not normalised) text embeddings ``(B, projection_dim)``: transformers' text features."""
        return self.text_projection(self.text_model(ids)[1])

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Projected (not normalised) image embeddings ``(B, projection_dim)``."""
        return self.visual_projection(self.vision_model(pixels)[1])

    def scale(self) -> torch.Tensor:
        """The temperature ``exp(logit_scale)``, clamped at 100 (Radford et al. 2021, sec. 2.5)."""
        return self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()

    def forward(self, pixels: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits_per_image (B_img, B_txt), logits_per_text)``: scaled cosine similarities."""
        image = F.normalize(self.encode_image(pixels), dim=-1)
        text = F.normalize(self.encode_text(ids), dim=-1)
        logits_per_text = self.scale() * text @ image.t()
        return logits_per_text.t(), logits_per_text


def _init_weights(model: CLIP) -> None:
    """transformers' CLIP initialisation (initializer_factor 1): scaled normals, zero biases."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            nn.init.normal_(module.weight, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
    for tower in (model.text_model, model.vision_model):
        cfg = tower.config
        width, depth = cfg.hidden_size, cfg.num_hidden_layers
        for layer in tower.encoder.layers:
            attn, mlp = layer.self_attn, layer.mlp
            for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
                nn.init.normal_(proj.weight, std=width**-0.5 * (2 * depth) ** -0.5)
            nn.init.normal_(attn.out_proj.weight, std=width**-0.5)
            nn.init.normal_(mlp.fc1.weight, std=(2 * width) ** -0.5)
            nn.init.normal_(mlp.fc2.weight, std=width**-0.5 * (2 * depth) ** -0.5)
    nn.init.normal_(
        model.vision_model.embeddings.class_embedding, std=model.vision_model.config.hidden_size**-0.5
    )
    nn.init.normal_(model.text_projection.weight, std=model.text_model.config.hidden_size**-0.5)
    nn.init.normal_(model.visual_projection.weight, std=model.vision_model.config.hidden_size**-0.5)


def clip_loss(logits_per_image: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE: the mean of the image->text and text->image cross-entropies.

    Row ``i`` of ``logits_per_image`` scores image ``i`` against every text; the matching text is ``i``
    (Radford et al. 2021, Figure 3).
    """
    target = torch.arange(len(logits_per_image), device=logits_per_image.device)
    return (F.cross_entropy(logits_per_image, target) + F.cross_entropy(logits_per_image.t(), target)) / 2


# --- pretrained weights: a transformers-style directory ------------------------------------------


def read_config(directory: str | Path) -> CLIPConfig:
    """The :class:`CLIPConfig` of a pretrained directory's ``config.json``."""
    directory = Path(directory)
    path = directory / CONFIG_FILE
    if not directory.is_dir():
        raise FileNotFoundError(f"CLIP weights directory {str(directory)!r} does not exist")
    if not path.is_file():
        raise FileNotFoundError(
            f"{str(directory)!r} has no {CONFIG_FILE}: a pretrained CLIP directory needs config.json + "
            "model.safetensors as written by transformers' CLIPModel.save_pretrained"
        )
    raw = json.loads(path.read_text(encoding="utf-8"))
    kind = raw.get("model_type", "clip")
    if kind != "clip":
        raise ValueError(f"{path} describes a {kind!r} model; sciddpm reads CLIP (model_type 'clip') only")
    return CLIPConfig.from_hf(raw)


def read_pretrained_tensors(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of ``model.safetensors`` (or its shards); a pickled checkpoint is refused."""
    from safetensors.torch import load_file

    single, index = directory / WEIGHTS_FILE, directory / INDEX_FILE
    if single.is_file():
        return load_file(str(single))
    if index.is_file():  # sharded: model-00001-of-0000N.safetensors + an index
        files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return {k: v for f in files for k, v in load_file(str(directory / f)).items()}
    pickles = [
        p.name
        for p in directory.iterdir()
        if p.name in _PICKLES or p.suffix in (".bin", ".pt", ".pth", ".ckpt")
    ]
    if pickles:
        raise ValueError(
            f"{str(directory)!r} holds {pickles[0]}, a pickled checkpoint, which sciddpm refuses to load "
            "(unpickling can run arbitrary code); convert it to safetensors once, in an environment you "
            "trust: CLIPModel.from_pretrained(dir).save_pretrained(dir) writes model.safetensors"
        )
    raise FileNotFoundError(f"{str(directory)!r} has no {WEIGHTS_FILE} (nor a sharded {INDEX_FILE})")


def load_state(model: CLIP, tensors: Mapping[str, torch.Tensor], where: str) -> None:
    """Copy ``tensors`` (transformers' names) into ``model``, checking every name and shape first.

    Raises ValueError naming ``where`` and the first missing, unexpected or misshapen tensor.
    """
    expected = model.state_dict()
    # transformers' position_ids buffers are saved by old versions; they are aranges, not weights.
    found = {k: v for k, v in tensors.items() if not k.endswith("position_ids")}
    persistence.check_tensors(found, expected, where, "CLIP model", "is it a full CLIPModel?")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in found.items()})


def load_pretrained(directory: str | Path, config: CLIPConfig | None = None) -> CLIP:
    """A :class:`CLIP` with the weights of a local ``transformers``-format directory.

    The directory holds ``config.json`` and ``model.safetensors`` (or a sharded index); pickled
    checkpoints (``pytorch_model.bin``) are refused. ``config`` overrides ``config.json``; a tensor
    whose shape differs from the model's is an error naming it and both shapes.
    """
    directory = Path(directory)
    model = CLIP(config or read_config(directory))
    load_state(model, read_pretrained_tensors(directory), str(directory))
    return model


def save_pretrained(model: CLIP, directory: str | Path) -> Path:
    """Write ``config.json`` + ``model.safetensors``, readable by :func:`load_pretrained` and transformers.

    transformers' layout, not sciddpm's own (nothing stamped), written atomically file by file.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    persistence.write_atomic(
        directory / WEIGHTS_FILE, lambda p: save_file(state, p, metadata={"format": "pt"})
    )
    persistence.write_json(directory / CONFIG_FILE, model.config.to_hf())
    return directory
