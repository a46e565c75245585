"""The ``clip`` conditioner: captions -> cross-attention tokens and a pooled vector, via a frozen CLIP.

Before diffusion training, :meth:`ClipConditioner.fit` trains CLIP contrastively on the data
source's (image, caption) pairs (symmetric InfoNCE, Radford et al. 2021), or loads pretrained
weights from a local directory (``weights``). CLIP is then frozen: the diffusion trainer only
optimises parameters that require gradients. The conditioner also offers zero-shot
classification (:meth:`ClipConditioner.zero_shot`) and the ``clip_score`` metric.

Conditioning, as in Stable Diffusion (Rombach et al. 2022) and SDXL (Podell et al. 2023):
``tokens`` = the text tower's last hidden states ``(B, context_length, width)`` for
cross-attention, ``vector`` = the projected pooled text embedding ``(B, projection_dim)`` for FiLM.
The ``clip_score`` metric is in :mod:`sciddpm.components.metrics`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from sciddpm import persistence
from sciddpm.components.encoders import Standardize, StandardizeConfig
from sciddpm.components.text import ByteTokenizer, HFTokenizer, Tokenizer
from sciddpm.config import check_warmup, default_warmup
from sciddpm.interfaces import Conditioner, Conditioning, DataSource
from sciddpm.nn.clip import (
    CLIP,
    MAX_LOGIT_SCALE,
    CLIPConfig,
    CLIPTextConfig,
    CLIPVisionConfig,
    clip_loss,
    load_state,
    read_config,
    read_pretrained_tensors,
    save_pretrained,
)
from sciddpm.training.distributed import broadcast_from_rank0
from sciddpm.training.stage import Stage, decay_groups

__all__ = [
    "ClipConditioner",
    "ClipConditionerConfig",
    "small_clip_config",
    "train_clip",
]


def small_clip_config(
    data_shape: Sequence[int],
    *,
    width: int = 64,
    layers: int = 2,
    heads: int = 4,
    projection_dim: int = 64,
    context_length: int = 32,
    image_size: int | None = None,
    patch_size: int | None = None,
) -> CLIPConfig:
    """A CLIP small enough to train on a CPU in a minute, with the byte tokenizer's vocabulary.

    ``image_size`` defaults to the largest spatial size of ``data_shape`` rounded up to a multiple
    of 4, and ``patch_size`` to a quarter of it (a 4 x 4 patch grid in 2-D).
    """
    channels, spatial = int(data_shape[0]), [int(s) for s in data_shape[1:]]
    if image_size is None:
        image_size = 4 * math.ceil(max(spatial) / 4)
    if patch_size is None:
        patch_size = max(image_size // 4, 1)
    tok = ByteTokenizer
    return CLIPConfig(
        text_config=CLIPTextConfig(
            vocab_size=tok.vocab_size,
            hidden_size=width,
            intermediate_size=4 * width,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            max_position_embeddings=context_length,
            pad_token_id=tok.pad_id,
            bos_token_id=tok.bos_id,
            eos_token_id=tok.eos_id,
        ),
        vision_config=CLIPVisionConfig(
            hidden_size=width,
            intermediate_size=4 * width,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_channels=channels,
            image_size=image_size,
            patch_size=patch_size,
            spatial_dims=len(spatial),  # type: ignore[arg-type]
        ),
        projection_dim=projection_dim,
    )


class ClipConditionerConfig(BaseModel):
    """Text conditioning through CLIP, trained on the data's captions or loaded from a local directory."""

    model_config = ConfigDict(extra="forbid")

    weights: str | None = Field(
        default=None,
        description="Local directory of pretrained CLIP weights in transformers' format (config.json + "
        "model.safetensors, optional tokenizer.json); None = train CLIP on the data source's captions.",
    )
    model: CLIPConfig | None = Field(
        default=None,
        description="The full architecture in transformers' CLIPConfig layout; None = read from weights, "
        "or the small model given by width/layers/heads/projection_dim/context_length/image_size/patch_size.",
    )
    data_shape: list[int] | None = Field(
        default=None, description="Shape (C, *spatial) of a data sample; filled in by the pipeline."
    )
    width: int = Field(64, ge=8, description="Small model: width of both towers.")
    layers: int = Field(2, ge=1, description="Small model: transformer blocks per tower.")
    heads: int = Field(4, ge=1, description="Small model: attention heads (divides width).")
    projection_dim: int = Field(
        64, ge=1, description="Small model: width of the joint embedding = vector_dim."
    )
    context_length: int = Field(32, ge=3, description="Small model: text context in tokens (bytes + 2).")
    image_size: int | None = Field(
        None, ge=1, description="Small model: side the images are resized to; None = the data's (to x4)."
    )
    patch_size: int | None = Field(
        None, ge=1, description="Small model: ViT patch side; None = image_size/4."
    )
    tokenizer: Literal["byte", "tokenizer.json"] | None = Field(
        None,
        description="'byte' (UTF-8 bytes, no download) or 'tokenizer.json' from the weights directory; "
        "None = tokenizer.json when weights has one, else byte.",
    )
    steps: int = Field(1000, ge=0, description="Contrastive training steps of fit().")
    batch_size: int = Field(64, ge=2, description="Contrastive batch size (in-batch negatives).")
    lr: float = Field(2e-3, gt=0, description="Peak AdamW learning rate of fit() (warm-up, cosine decay).")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay on weight matrices.")
    warmup_steps: int | None = Field(
        None, ge=0, description="Linear warm-up steps of fit(); null = a tenth of steps, at most 50."
    )
    shift: int = Field(
        1, ge=0, description="fit() augmentation: random circular shift of images by up to this many pixels."
    )
    seed: int = Field(0, description="Seed of fit(): initialisation, batches and augmentation.")

    @model_validator(mode="before")
    @classmethod
    def _warmup(cls, data: Any) -> Any:
        return default_warmup(data, 50, 1000)

    @model_validator(mode="after")
    def _resolve(self) -> ClipConditionerConfig:
        check_warmup(self.steps, self.warmup_steps, "")
        if self.weights is not None and (self.model is None or self.tokenizer is None):
            # Read only while resolving: a stored config has both, so loading never needs the directory.
            directory = Path(self.weights)
            if not (directory / "config.json").is_file():
                where = "does not exist" if not directory.is_dir() else "has no config.json"
                raise ValueError(
                    f"weights: CLIP directory {self.weights!r} {where}; give a local directory written by "
                    "CLIPModel.save_pretrained (config.json + model.safetensors)"
                )
            if self.model is None:
                self.model = read_config(directory)
            if self.tokenizer is None:
                has_json = (directory / "tokenizer.json").is_file()
                vocab = self.model.text_config.vocab_size
                if not has_json and vocab != ByteTokenizer.vocab_size:
                    # A text tower trained on another vocabulary would embed byte ids as noise.
                    raise ValueError(
                        f"weights: {self.weights!r} has no tokenizer.json and its text tower has "
                        f"vocab_size={vocab}, not the byte tokenizer's {ByteTokenizer.vocab_size}; copy "
                        "the model's tokenizer.json into the directory, or set tokenizer = 'byte' if "
                        "the model was trained on UTF-8 bytes"
                    )
                self.tokenizer = "tokenizer.json" if has_json else "byte"
        elif self.model is None and self.data_shape is not None:
            if self.width % self.heads:
                raise ValueError(f"heads={self.heads} must divide width={self.width}")
            self.model = small_clip_config(
                self.data_shape,
                width=self.width,
                layers=self.layers,
                heads=self.heads,
                projection_dim=self.projection_dim,
                context_length=self.context_length,
                image_size=self.image_size,
                patch_size=self.patch_size,
            )
        if self.tokenizer is None:
            self.tokenizer = "byte"
        if self.tokenizer == "tokenizer.json" and self.weights is None:
            raise ValueError("tokenizer='tokenizer.json' reads it from the weights directory: set weights")
        text = self.model.text_config if self.model is not None else None
        if self.tokenizer == "byte" and text is not None:
            b = ByteTokenizer
            if text.vocab_size < b.vocab_size or text.eos_token_id not in (b.eos_id, 2):
                raise ValueError(
                    f"the byte tokenizer needs vocab_size >= {b.vocab_size} and eos_token_id = {b.eos_id}, "
                    f"but the text tower has vocab_size={text.vocab_size}, eos_token_id={text.eos_token_id}; "
                    "use tokenizer='tokenizer.json' with the model's own tokenizer"
                )
        return self


class ClipConditioner(nn.Module, Conditioner):
    """Captions -> ``Conditioning(tokens, vector)`` through a frozen CLIP text tower.

    ``forward`` takes one caption for the whole batch, or a list of ``batch_size`` captions;
    ``None`` gives the null condition. The null condition is the empty caption's embedding, as in
    Stable Diffusion: it is what the frozen text tower says about "no text", needs no extra
    parameter (a learned null vector would be the only trainable part of a frozen conditioner),
    and works unchanged for pretrained weights.
    """

    fitted: torch.Tensor
    image_mean: torch.Tensor
    image_std: torch.Tensor
    tokenizer_json: torch.Tensor

    def __init__(self, config: ClipConditionerConfig) -> None:
        super().__init__()
        if config.model is None:
            raise ValueError(
                "ClipConditioner needs the data shape to size its image tower: build it through a "
                "pipeline (which fills data_shape), set data_shape=[C, *spatial], or give weights/model"
            )
        self.config = config
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
            torch.manual_seed(config.seed)
            self.clip = CLIP(config.model).requires_grad_(False)
        text = config.model.text_config
        self.token_dim = text.hidden_size
        self.vector_dim = config.model.projection_dim
        self.context_length = text.max_position_embeddings
        channels = config.model.vision_config.num_channels
        self.register_buffer("fitted", torch.tensor(False))
        self.register_buffer("image_mean", torch.zeros(channels))
        self.register_buffer("image_std", torch.ones(channels))
        # A pretrained tokenizer.json travels with the weights (as UTF-8 bytes), so a saved pipeline
        # needs nothing but its own directory.
        self.register_buffer("tokenizer_json", torch.zeros(0, dtype=torch.uint8))
        self._tokenizer: Tokenizer | None = None
        #: Set by fit's contrastive stage; empty / None for pretrained weights or a loaded pipeline.
        self.losses: list[float] = []
        self.fit_seconds: float | None = None

    # ------------------------------------------------------------------ text

    @property
    def tokenizer(self) -> Tokenizer:
        """The text tower's tokenizer: UTF-8 bytes, or the weights' ``tokenizer.json``.

        Raises RuntimeError when a ``tokenizer.json`` tokenizer is asked for before it is loaded.
        """
        if self._tokenizer is None:
            if self.config.tokenizer == "byte":
                self._tokenizer = ByteTokenizer(self.context_length)
            else:
                if self.tokenizer_json.numel() == 0:
                    raise RuntimeError(
                        "the clip conditioner's tokenizer.json is not loaded yet: call fit() (which reads "
                        "the weights directory) or load a saved pipeline"
                    )
                text = self.config.model.text_config  # type: ignore[union-attr]
                self._tokenizer = HFTokenizer(
                    bytes(self.tokenizer_json.tolist()).decode("utf-8"),
                    self.context_length,
                    text.pad_token_id,
                    text.bos_token_id,
                    text.eos_token_id,
                )
        return self._tokenizer

    def check_fitted(self) -> None:
        """Raise RuntimeError unless CLIP is trained or loaded (fit, weights or a saved pipeline)."""
        if not bool(self.fitted):
            raise RuntimeError(
                "the clip conditioner is not trained: call fit(source) with captioned data (the pipeline "
                "does this before diffusion training), give pretrained weights, or load a saved pipeline"
            )

    def _captions(self, raw: Any, batch_size: int) -> list[str]:
        if isinstance(raw, str):
            return [raw] * batch_size
        if isinstance(raw, (list, tuple)):
            if len(raw) != batch_size:
                raise ValueError(f"got {len(raw)} captions for a batch of {batch_size}")
            bad = [r for r in raw if not isinstance(r, str)]
            if not bad:
                return list(raw)
            raise TypeError(f"captions must be strings, got {type(bad[0]).__name__} {bad[0]!r}")
        raise TypeError(
            f"the clip conditioner takes a caption string or a list of strings, got {type(raw).__name__}"
        )

    def encode_text(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(last hidden states (B, L, token_dim), projected pooled embedding (B, vector_dim))``.

        Each distinct caption is encoded once.
        """
        row = {c: i for i, c in enumerate(dict.fromkeys(captions))}
        unique = list(row)
        ids = self.tokenizer(unique).to(self.clip.logit_scale.device)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.clip.logit_scale.requires_grad):
            hidden, pooled = self.clip.text_model(ids)
            vector = self.clip.text_projection(pooled)
        if len(unique) == len(captions):
            return hidden, vector
        where = torch.tensor([row[c] for c in captions], device=hidden.device)
        return hidden[where], vector[where]

    def forward(self, raw: Any, batch_size: int) -> Conditioning:
        """``Conditioning(vector (B, projection_dim), tokens (B, context_length, width))`` of captions.

        ``raw`` is one caption for the batch or ``batch_size`` of them; None gives :meth:`null`. Raises
        RuntimeError before CLIP is fitted, TypeError for non-string captions, ValueError for a wrong count.
        """
        if raw is None:
            return self.null(batch_size)
        self.check_fitted()
        tokens, vector = self.encode_text(self._captions(raw, batch_size))
        return Conditioning(vector=vector, tokens=tokens)

    def null(self, batch_size: int) -> Conditioning:
        """The empty caption's embedding for ``batch_size`` rows, as Stable Diffusion's null condition."""
        self.check_fitted()
        tokens, vector = self.encode_text([""])
        return Conditioning(vector=vector.expand(batch_size, -1), tokens=tokens.expand(batch_size, -1, -1))

    def collate(self, raws: list[Any]) -> list[str]:
        """The captions of a batch of samples.

        Raises ValueError naming a sample whose condition is not a string.
        """
        bad = [i for i, r in enumerate(raws) if not isinstance(r, str)]
        if bad:
            raise ValueError(
                f"sample {bad[0]} of the batch has condition {raws[bad[0]]!r}, not a caption; the clip "
                "conditioner needs a data source whose samples carry caption strings (e.g. digits_captions)"
            )
        return list(raws)

    # ------------------------------------------------------------------ images

    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, *spatial)`` in data units -> the image tower's normalised, resized input."""
        vision = self.clip.vision_model.config
        if images.ndim != vision.spatial_dims + 2 or images.shape[1] != vision.num_channels:
            raise ValueError(
                f"the CLIP image tower takes (B, {vision.num_channels}, *spatial) with {vision.spatial_dims} "
                f"spatial dims, got {tuple(images.shape)}"
            )
        shape = (1, -1) + (1,) * vision.spatial_dims
        x = (images.to(self.image_mean) - self.image_mean.view(shape)) / self.image_std.view(shape)
        size = (vision.image_size,) * vision.spatial_dims
        if tuple(x.shape[2:]) != size:
            mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[vision.spatial_dims]
            x = F.interpolate(x, size=size, mode=mode, align_corners=False)
        return x

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Projected image embeddings ``(B, projection_dim)`` of images in data units."""
        return self.clip.encode_image(self.pixels(images.to(self.image_mean.device)))

    @torch.no_grad()
    def similarity(self, images: torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
        """Cosine similarity ``(B_images, B_captions)`` in the joint embedding space."""
        self.check_fitted()
        image = F.normalize(self.encode_images(images), dim=-1)
        text = F.normalize(self.encode_text(list(captions))[1], dim=-1)
        return image @ text.t()

    @torch.no_grad()
    def zero_shot(
        self,
        images: torch.Tensor,
        class_captions: Sequence[str] | Sequence[Sequence[str]],
        batch_size: int = 256,
    ) -> torch.Tensor:
        """Predicted class ``(B,)``: the class whose caption embedding is closest to each image.

        ``class_captions[k]`` is one caption for class ``k`` or a list of them, whose normalised
        embeddings are averaged (prompt ensembling, Radford et al. 2021, sec. 3.1.4).
        """
        self.check_fitted()
        groups = [[c] if isinstance(c, str) else list(c) for c in class_captions]
        if not groups or any(not g for g in groups):
            raise ValueError("class_captions needs at least one caption per class")
        flat = [c for g in groups for c in g]
        text = F.normalize(self.encode_text(flat)[1], dim=-1)
        owner = torch.tensor([k for k, g in enumerate(groups) for _ in g], device=text.device)
        classes = torch.zeros(len(groups), text.shape[1], device=text.device).index_add_(0, owner, text)
        classes = F.normalize(classes, dim=-1)
        preds = []
        for start in range(0, len(images), batch_size):
            image = F.normalize(self.encode_images(images[start : start + batch_size]), dim=-1)
            preds.append((image @ classes.t()).argmax(-1).cpu())
        return torch.cat(preds)

    # ------------------------------------------------------------------ fitting

    def fit(self, source: DataSource | None) -> None:
        """Train CLIP on ``source``'s (image, caption) pairs, or load ``weights``; no-op once fitted."""
        if bool(self.fitted):
            return
        if self.config.weights is not None:
            self.load_weights(self.config.weights)
        else:
            if source is None:
                raise ValueError("ClipConditioner.fit needs a captioned data source (or weights=...)")
            begin = time.perf_counter()
            self._fit_image_stats(source)
            self.clip.requires_grad_(True)
            try:
                self.losses = train_clip(self, source)
            finally:
                self.clip.requires_grad_(False)
            self.fit_seconds = time.perf_counter() - begin
        broadcast_from_rank0(self)  # under torchrun every rank takes rank 0's fitted CLIP
        self.fitted.fill_(True)

    def load_weights(self, directory: str | Path) -> None:
        """Load pretrained weights, tokenizer.json and image statistics from a local directory."""
        directory = Path(directory)
        load_state(self.clip, read_pretrained_tensors(directory), str(directory))
        if self.config.tokenizer == "tokenizer.json":
            text = self.config.model.text_config  # type: ignore[union-attr]
            tok = HFTokenizer.from_directory(
                directory, self.context_length, text.pad_token_id, text.bos_token_id, text.eos_token_id
            )
            data = tok.json_text.encode("utf-8")  # carries the directory's pad token
            self.tokenizer_json = torch.tensor(list(data), dtype=torch.uint8, device=self.fitted.device)
            self._tokenizer = None
        processor = directory / "preprocessor_config.json"
        if processor.is_file():
            # transformers' processors rescale (e.g. by 1/255) then normalise; fold both into one affine map.
            raw = json.loads(processor.read_text(encoding="utf-8"))
            rescale = float(raw.get("rescale_factor", 1.0)) if raw.get("do_rescale", True) else 1.0
            if raw.get("do_normalize", True) and "image_mean" in raw:
                mean = torch.tensor(raw["image_mean"], dtype=torch.float32)
                std = torch.tensor(raw.get("image_std", [1.0] * len(mean)), dtype=torch.float32)
                self.image_mean.copy_(mean / rescale)
                self.image_std.copy_(std / rescale)

    def _fit_image_stats(self, source: DataSource) -> None:
        """Per-channel mean and std of the images: one streaming pass that respects masks."""
        channels = source.sample_shape[0]
        if channels != self.image_mean.shape[0]:
            raise ValueError(
                f"the data have {channels} channels but the CLIP image tower takes {self.image_mean.shape[0]}"
            )
        stats = Standardize(StandardizeConfig(eps=1e-8))
        stats.fit(source)
        self.image_mean.copy_(stats.mean)
        self.image_std.copy_(stats.std)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write CLIP in transformers' format: config.json, model.safetensors, preprocessor_config.json.

        Plus tokenizer.json when the conditioner holds one; every file atomically. Returns
        ``directory``; raises RuntimeError before CLIP is fitted.
        """
        self.check_fitted()
        directory = save_pretrained(self.clip, directory)
        mean, std = self.image_mean.tolist(), self.image_std.tolist()
        processor = {"do_rescale": False, "do_normalize": True, "image_mean": mean, "image_std": std}
        persistence.write_json(directory / "preprocessor_config.json", processor)
        if self.tokenizer_json.numel():
            data = bytes(self.tokenizer_json.tolist())
            persistence.write_atomic(directory / "tokenizer.json", lambda p: Path(p).write_bytes(data))
        return directory

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        saved = state_dict.get(prefix + "tokenizer_json")
        if saved is not None and saved.shape != self.tokenizer_json.shape:
            self.tokenizer_json = torch.empty(saved.shape, dtype=torch.uint8, device=self.fitted.device)
        self._tokenizer = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        """The conditioner's widths, tokenizer and whether it is fitted, for ``repr``."""
        return (
            f"token_dim={self.token_dim}, vector_dim={self.vector_dim}, "
            f"context_length={self.context_length}, "
            f"tokenizer={self.config.tokenizer!r}, fitted={bool(self.fitted)}"
        )


def _shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Roll each image by a random integer offset in [-max_shift, max_shift] along every spatial axis."""
    if max_shift == 0:
        return x
    dims = tuple(range(2, x.ndim))
    offsets = torch.randint(-max_shift, max_shift + 1, (len(x), len(dims)), generator=generator)
    return torch.stack(
        [
            torch.roll(xi, tuple(o.tolist()), dims=tuple(d - 1 for d in dims))
            for xi, o in zip(x, offsets, strict=True)
        ]
    )


def train_clip(cond: ClipConditioner, source: DataSource) -> list[float]:
    """Contrastive training of ``cond.clip`` on ``source`` (symmetric InfoNCE, Radford et al. 2021).

    Returns the mean loss of every 10 steps. Runs on the shared :class:`~sciddpm.training.stage.Stage`:
    AdamW (betas 0.9/0.98, eps 1e-6) with linear warm-up and cosine decay, weight decay on weight
    matrices only, no clipping, and the logit scale clamped in place to [0, log 100] after each step,
    as OpenCLIP does. Raises ValueError for fewer than 2 samples.
    """
    cfg = cond.config
    model = cond.clip
    n = len(source)
    if n < 2:
        raise ValueError(f"contrastive training needs at least 2 captioned samples, the source has {n}")
    batch = min(cfg.batch_size, n)
    g = torch.Generator().manual_seed(cfg.seed)
    device = cond.image_mean.device

    def loss(step: int) -> tuple[float, None]:
        index = torch.randperm(n, generator=g)[:batch].tolist()
        samples = [source[i] for i in index]
        captions = cond.collate([s.condition for s in samples])
        images = _shift(torch.stack([s.x for s in samples]).float(), cfg.shift, g).to(device)
        logits_per_image, _ = model(cond.pixels(images), cond.tokenizer(captions).to(device))
        value = clip_loss(logits_per_image)
        value.backward()
        return float(value.detach()), None

    def clamp() -> None:
        with torch.no_grad():
            model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)

    stage = Stage(
        "CLIP contrastive",
        decay_groups(model, cfg.weight_decay),
        cfg,
        betas=(0.9, 0.98),
        eps=1e-6,
        grad_clip=None,
        after_step=clamp,
        hint=f"lower CLIP's lr (now {cfg.lr}) or check the images and captions",
    )
    model.train()
    steps = stage.run(loss)
    model.eval()
    return [sum(steps[i : i + 10]) / 10 for i in range(0, len(steps) - 9, 10)]
