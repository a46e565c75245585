"""The ``vae`` encoder: a KL autoencoder with its own training stage, for latent diffusion.

Latent diffusion (Rombach et al. 2022, https://arxiv.org/abs/2112.10752) trains the
denoiser on the latents of an autoencoder trained first. :class:`VAE` is that autoencoder
as a pipeline Encoder:

- ``fit(source)`` fits a per-channel standardisation, trains the network (unless the
  ``trained`` buffer is set or ``weights`` names a saved VAE to reuse), then estimates the
  latent scale factor. ``Pipeline.from_config`` calls it, so ``sciddpm train`` runs this
  stage before the diffusion training.
- ``encode`` / ``decode`` map physical units to scaled latents and back; sizes the
  downsampling cannot represent are padded at the end of each axis, and the pipeline
  crops decoded samples back to its data shape.
- ``save(dir)`` / ``VAE.load(dir)`` write and read ``vae.json`` + ``vae.safetensors``
  (:mod:`sciddpm.persistence`); :func:`sciddpm.training.encoder.train_encoder`
  (``sciddpm train RUN --stage encoder --out DIR``) trains only this stage from a run file.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from sciddpm import persistence, seeding
from sciddpm.bridge.vae import is_diffusers_vae, read_vae_state, vae_fields
from sciddpm.components.encoders import Standardize
from sciddpm.config import check_warmup, default_warmup
from sciddpm.data.batching import collate, spread_indices
from sciddpm.interfaces import DataSource, Encoder
from sciddpm.nn.unet import pad_axes
from sciddpm.nn.vae import AutoencoderKL, Layout, kl_standard_normal
from sciddpm.training.distributed import broadcast_from_rank0, resolve_device
from sciddpm.training.stage import Stage

__all__ = ["VAE", "VAEConfig", "crop", "vae_loss"]

Padding = Literal["zeros", "reflect", "circular"]
CONFIG_FILE = "vae.json"
WEIGHTS_FILE = "vae.safetensors"
#: Fields that fix the network's tensors; a saved VAE fills the ones a config leaves out.
ARCHITECTURE = ("channels", "latent_channels", "blocks_per_level", "groups", "padding", "layout")
#: Fields added after the first saved format: filled from a saved VAE when one is read, but their
#: absence alone triggers no read, so stored configs that predate them still load without the files.
LATER = ("layout", "shift_factor")
#: Fields the pipeline fills in from the data; a saved VAE must agree with them.
FROM_DATA = ("dims", "in_channels")


class VAEConfig(BaseModel):
    """The KL autoencoder's architecture, its training stage, or a saved VAE to reuse."""

    model_config = ConfigDict(extra="forbid")

    dims: Literal[1, 2, 3] | None = Field(
        None, description="Spatial dims of a sample (1, 2 or 3); None = filled in by the pipeline."
    )
    in_channels: int | None = Field(
        None, ge=1, description="Channels of a sample; None = filled in by the pipeline from the data."
    )
    channels: list[int] = Field(
        [32, 64, 64],
        min_length=1,
        description="Width of each level; the latent is 2 ** (len(channels) - 1) times smaller per axis.",
    )
    latent_channels: int = Field(4, ge=1, description="Channels of the latent.")
    blocks_per_level: int = Field(1, ge=1, description="Residual blocks per encoder level (decoder: +1).")
    groups: int = Field(8, ge=1, description="GroupNorm groups; must divide every width in channels.")
    padding: Padding | list[Padding] = Field(
        "zeros", description="Boundary mode of every conv: one mode or one per spatial axis."
    )
    layout: Layout = Field(
        "sciddpm",
        description="Network layout: 'sciddpm' (smaller, no attention) or 'ldm', latent diffusion's "
        "AutoencoderKL exactly as diffusers has it (mid-block attention, quant convs), which pretrained "
        "diffusers VAEs use.",
    )
    shift_factor: float = Field(
        0.0,
        description="Subtracted from the posterior mean before scaling (diffusers' shift_factor): latents "
        "are (mean - shift_factor) * scale. 0 for VAEs trained by sciddpm.",
    )
    steps: int = Field(2000, ge=1, description="Optimizer steps of the autoencoder stage.")
    batch_size: int = Field(32, ge=1, description="Samples per autoencoder step.")
    lr: float = Field(1e-3, gt=0, description="Peak AdamW learning rate (warm-up, then cosine decay).")
    warmup_steps: int | None = Field(
        None,
        ge=0,
        description="Linear warm-up steps of the learning rate; null = a tenth of steps, at most 50.",
    )
    beta: float = Field(
        1e-4,
        ge=0,
        description="Weight of the KL term against the squared error, both summed per sample "
        "(LDM's kl_weight); small values give sharp reconstructions and still bound the latents.",
    )
    gradient_weight: float = Field(
        0.0, ge=0, description="Weight of a squared error on finite differences (sharper edges); 0 = off."
    )
    seed: int = Field(0, description="Seed of the initial weights, data order and posterior noise.")
    device: str = Field("auto", description="Device of the autoencoder stage: 'auto', 'cpu' or 'cuda'.")
    scale_samples: int = Field(
        1024,
        ge=1,
        description="Samples (a seeded random subset, spread over the source) whose latents estimate "
        "the scale factor 1 / std.",
    )
    weights: str | None = Field(
        None,
        description="Directory of a trained VAE to reuse instead of training: one written by VAE.save "
        "or `sciddpm train --stage encoder`, or a diffusers AutoencoderKL folder (config.json + "
        "safetensors); architecture fields left out are read from it.",
    )
    data_range: tuple[float, float] = Field(
        (0.0, 1.0),
        description="Physical values a diffusers VAE sees as -1 and 1 (e.g. [0, 255] for 8-bit images); "
        "read only when weights names a diffusers folder (sciddpm's own VAEs fit their normalisation).",
    )

    @model_validator(mode="before")
    @classmethod
    def _from_weights(cls, data: Any) -> Any:
        # Fill the architecture from a saved VAE so `{type = "vae", weights = "dir"}` is enough.
        # Only absent fields trigger a read, so a stored pipeline config (every field present)
        # never touches the directory and loads on a machine that lacks it.
        if not isinstance(data, Mapping) or data.get("weights") is None:
            return data
        if all(f in data for f in ARCHITECTURE if f not in LATER):
            return data
        saved = _read_config(Path(str(data["weights"])))
        return {**{f: saved[f] for f in (*ARCHITECTURE, *LATER) if f in saved}, **data}

    @model_validator(mode="before")
    @classmethod
    def _warmup(cls, data: Any) -> Any:
        return default_warmup(data, 50, 2000)

    @model_validator(mode="after")
    def _check(self) -> VAEConfig:
        check_warmup(self.steps, self.warmup_steps, "")
        if not self.data_range[0] < self.data_range[1]:
            raise ValueError(f"data_range must be [lo, hi] with lo < hi, got {list(self.data_range)}")
        bad = [c for c in self.channels if c < 1 or c % self.groups]
        if bad:
            raise ValueError(
                f"groups={self.groups} must divide every width in channels={self.channels}; "
                f"{bad[0]} is not divisible by {self.groups}"
            )
        if isinstance(self.padding, list) and self.dims is not None and len(self.padding) != self.dims:
            raise ValueError(
                f"padding={self.padding} gives {len(self.padding)} modes for {self.dims}-D data; "
                "give one mode per spatial axis or a single mode"
            )
        return self


class VAE(nn.Module, Encoder):
    """KL-VAE encoder: physical units ``(B, C, *spatial)`` <-> scaled latents.

    ``encode`` returns the posterior *mean* times ``scale`` rather than a posterior sample:
    the encoder is then a function, so the same data give the same latents in training,
    in ``sigma_data`` estimation and after save/load, and the denoiser does not spend
    capacity learning the encoder's noise. The decoder was trained on posterior samples
    around the mean (the KL term keeps their spread small), so it decodes the mean well.
    (LDM and diffusers' training scripts sample ``z ~ q(z|x)`` instead; with a small
    ``beta`` the two differ by a small, data-independent jitter.)

    ``scale`` is ``1 / std`` of the mean latents over ``scale_samples`` training samples
    (Rombach et al. 2022, Sec. G), so the denoiser sees unit-variance latents and the
    schedulers' default ``sigma_data = 1`` holds.
    """

    trainable = True
    #: The file :meth:`save` writes its configuration to (``train_encoder`` refuses to overwrite it).
    config_file = CONFIG_FILE
    scale: torch.Tensor
    trained: torch.Tensor

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        if config.dims is None or config.in_channels is None:
            raise ValueError(
                f"VAEConfig needs dims and in_channels (got dims={config.dims}, in_channels="
                f"{config.in_channels}); set them, or build the VAE through a pipeline, which fills "
                "them in from the data"
            )
        self.config = cfg = config
        modes = list(cfg.padding) if isinstance(cfg.padding, list) else [cfg.padding] * cfg.dims
        if len(modes) != cfg.dims:
            raise ValueError(f"padding={cfg.padding} gives {len(modes)} modes for {cfg.dims}-D data")
        self.modes = modes
        self.normalize = Standardize()
        # The initial weights depend on the VAE's own seed only, not on the caller's RNG state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.net = AutoencoderKL(
                dims=cfg.dims,
                in_channels=cfg.in_channels,
                channels=cfg.channels,
                latent_channels=cfg.latent_channels,
                blocks_per_level=cfg.blocks_per_level,
                groups=cfg.groups,
                modes=modes,
                layout=cfg.layout,
            )
        self.factor = self.net.factor
        self.spatial_dims = cfg.dims
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("trained", torch.tensor(False))
        self.last_fit: dict[str, Any] = {}

    # ------------------------------------------------------------------ Encoder

    def latent_shape(self, data_shape: tuple[int, ...]) -> tuple[int, ...]:
        """``(latent_channels, *ceil(spatial / factor))`` for a sample of ``data_shape`` ``(C, *spatial)``.

        Raises ValueError for a shape the VAE was not built for.
        """
        self._check_shape(tuple(data_shape), "data_shape", batch=False)
        return (self.config.latent_channels, *(math.ceil(n / self.factor) for n in data_shape[1:]))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled posterior mean ``(mean - shift_factor) * scale``.

        Shape ``(B, latent_channels, *ceil(spatial / factor))``.
        """
        self._check_trained()
        mean, _ = self.posterior(x)
        return (mean - self.config.shift_factor) * self.scale.to(mean.dtype)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Physical units ``(B, C, *spatial * factor)``: crop to the data's size (the pipeline does)."""
        self._check_trained()
        if z.ndim != self.config.dims + 2 or z.shape[1] != self.config.latent_channels:
            raise ValueError(
                f"VAE.decode expects latents (B, {self.config.latent_channels}, ...) with "
                f"{self.config.dims} spatial dims, got shape {tuple(z.shape)}"
            )
        x = self.net.decode(z / self.scale.to(z.dtype) + self.config.shift_factor)
        return self.normalize.decode(x)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """``decode(encode(x))`` cropped to the size of ``x``: the autoencoder's reconstruction."""
        return crop(self.decode(self.encode(x)), tuple(x.shape[2:]))

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unscaled mean and log-variance of q(z | x) for data ``x`` in physical units."""
        self._check_shape(tuple(x.shape), "x", batch=True)
        return self.net.encode(self._prepare(x))

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Standardise, then pad the end of each axis up to a multiple of the downsampling factor."""
        h = self.normalize.encode(x)
        pads = [(0, (-n) % self.factor) for n in x.shape[2:]]
        return pad_axes(h, pads, self.modes)

    def _check_shape(self, shape: tuple[int, ...], name: str, batch: bool) -> None:
        cfg = self.config
        sample = shape[1:] if batch else shape
        if len(sample) != cfg.dims + 1 or sample[0] != cfg.in_channels:
            layout = {1: "L", 2: "H, W", 3: "D, H, W"}[cfg.dims]
            want = f"(B, {cfg.in_channels}, {layout})" if batch else f"({cfg.in_channels}, {layout})"
            raise ValueError(
                f"VAE was built for {cfg.in_channels}-channel {cfg.dims}-D data {want}; "
                f"got {name} of shape {shape}"
            )

    def _check_trained(self) -> None:
        if not bool(self.trained):
            raise RuntimeError(
                "VAE is not trained: call fit(source) (the pipeline does this before training), "
                "set weights = '<dir of a saved VAE>', or load a saved pipeline"
            )

    # ------------------------------------------------------------------ training stage

    def fit(self, source: DataSource) -> None:
        """Train the autoencoder on ``source`` and estimate ``scale``; no-op once trained.

        With ``weights`` set, load that saved VAE instead of training.
        """
        if bool(self.trained):
            return
        self._check_shape(tuple(source.sample_shape), "the data source's sample_shape", batch=False)
        if self.config.weights is not None:
            self.load_weights(self.config.weights)
            return
        device = resolve_device(self.config.device, "pipeline.encoder.device")
        home = self.scale.device
        self.normalize.fit(source)
        self.to(device)
        try:
            self.last_fit = _train(self, source, device)
            self.scale.fill_(1.0 / _latent_std(self, source, device))
        finally:
            self.to(home)
        broadcast_from_rank0(self)  # under torchrun every rank encodes with rank 0's VAE
        self.trained.fill_(True)

    # ------------------------------------------------------------------ persistence

    def save(self, directory: str | Path) -> Path:
        """Write ``vae.json`` (config, versions, training figures) and ``vae.safetensors``.

        Returns ``directory``; raises RuntimeError for an untrained VAE.
        """
        self._check_trained()
        meta = {
            "encoder": {"type": "vae", **self.config.model_dump(mode="json"), "weights": None},
            "scale": float(self.scale),
            "train": self.last_fit,
        }
        return persistence.save(directory, CONFIG_FILE, meta, {WEIGHTS_FILE: self.state_dict()})

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> VAE:
        """Rebuild a VAE written by :meth:`save`, in eval mode; raises as :meth:`load_weights`."""
        saved = _read_config(Path(directory))
        vae = cls(VAEConfig.model_validate({k: v for k, v in saved.items() if k != "type"}))
        vae.load_weights(directory)
        return vae.to(device).eval()

    def load_weights(self, directory: str | Path) -> None:
        """Load a saved VAE's tensors into this one.

        Raises ValueError when the saved VAE's architecture or data fields differ from this config
        (naming the field), when it is untrained, or when a tensor is missing or misshapen.
        """
        directory = Path(directory)
        saved = _read_config(directory)
        mine = self.config.model_dump(mode="json")
        # A field a saved VAE predates has its default value there.
        default = {f: VAEConfig.model_fields[f].default for f in ARCHITECTURE}
        differ = [f for f in (*FROM_DATA, *ARCHITECTURE) if saved.get(f, default.get(f)) != mine[f]]
        if differ:
            f = differ[0]
            raise ValueError(
                f"the VAE in {str(directory)!r} has {f}={saved.get(f)!r} but this VAE needs "
                f"{f}={mine[f]!r}"
                + (" (from the data)" if f in FROM_DATA else "")
                + "; use a VAE trained on data like this, or leave the architecture fields out"
            )
        if is_diffusers_vae(directory) and not (directory / CONFIG_FILE).is_file():
            self._load_diffusers(directory)
            return
        path = directory / WEIGHTS_FILE
        self.load_state_dict(persistence.read_tensors(path, self.state_dict(), "VAE"))
        if not bool(self.trained):
            raise ValueError(f"{path} holds an untrained VAE (its 'trained' flag is false)")

    @classmethod
    def from_diffusers(cls, directory: str | Path, data_range: tuple[float, float] = (0.0, 1.0)) -> VAE:
        """A trained ``vae`` encoder from a diffusers ``AutoencoderKL`` folder, in eval mode.

        ``data_range`` is the physical ``(lo, hi)`` the diffusers VAE sees as ``(-1, 1)``. The
        network is the ``ldm`` layout, so ``decode(encode(x))`` is diffusers' to float rounding;
        latents are ``(mean - shift_factor) * scaling_factor`` as diffusers scales them. Raises
        ValueError for a configuration sciddpm cannot reproduce, a pickle-only folder or a
        misshapen tensor (:mod:`sciddpm.bridge.vae`).
        """
        fields = vae_fields(directory)
        config = VAEConfig(
            weights=str(directory), data_range=data_range, dims=2, in_channels=fields["in_channels"]
        )
        return cls(config).loaded()

    def loaded(self) -> VAE:
        """This VAE with its ``weights`` loaded, in eval mode (for configs naming saved weights)."""
        if self.config.weights is not None:
            self.load_weights(self.config.weights)
        return self.eval()

    def _load_diffusers(self, directory: Path) -> None:
        fields = vae_fields(directory)
        if fields["shift_factor"] != self.config.shift_factor:
            raise ValueError(
                f"the VAE in {str(directory)!r} has shift_factor={fields['shift_factor']} but this config "
                f"says {self.config.shift_factor}; leave shift_factor out to take the folder's"
            )
        state = self.state_dict()
        state.update(read_vae_state(directory, self.net, state))
        lo, hi = self.config.data_range
        channels = self.config.in_channels or 1
        state["normalize.mean"] = torch.full((channels,), (lo + hi) / 2)
        state["normalize.std"] = torch.full((channels,), (hi - lo) / 2)
        state["normalize.fitted"] = torch.tensor(True)
        state["scale"] = torch.tensor(fields["scaling_factor"])
        state["trained"] = torch.tensor(True)
        self.load_state_dict(state)

    def extra_repr(self) -> str:
        """The latent width, downsampling factor and whether it is trained, for ``repr``."""
        c = self.config
        return f"latent_channels={c.latent_channels}, factor={self.factor}, trained={bool(self.trained)}"


def crop(x: torch.Tensor, spatial: tuple[int, ...]) -> torch.Tensor:
    """The first ``spatial`` positions of each spatial axis of ``(B, C, *spatial')``."""
    return x[(..., *(slice(0, n) for n in spatial))]


def vae_loss(
    x: torch.Tensor,
    recon: torch.Tensor,
    mean: torch.Tensor,
    logvar: torch.Tensor,
    *,
    beta: float,
    gradient_weight: float = 0.0,
    mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The negative ELBO of a Gaussian decoder, per data value, averaged over the batch.

    ``reconstruction`` is the squared error per valid value (``mask`` weights it);
    ``kl`` is KL(q(z|x) || N(0, I)) in closed form, summed over the latent and divided by the
    same count, so ``beta`` weighs sums against sums as LDM's ``kl_weight``. ``gradient`` is
    the squared error of finite differences along every spatial axis (pairs of valid
    values only). ``loss = reconstruction + beta * kl + gradient_weight * gradient``.
    """
    w = torch.ones_like(x) if mask is None else mask.to(x).expand_as(x)
    count = w.flatten(1).sum(1).clamp_min(1)
    err = recon - x
    reconstruction = (w * err.square()).flatten(1).sum(1) / count
    kl = kl_standard_normal(mean, logvar).flatten(1).sum(1) / count
    gradient = torch.zeros_like(reconstruction)
    if gradient_weight:
        for axis in range(2, x.ndim):
            d = err.diff(dim=axis)
            pair = w.narrow(axis, 1, x.shape[axis] - 1) * w.narrow(axis, 0, x.shape[axis] - 1)
            gradient = gradient + (pair * d.square()).flatten(1).sum(1) / count
    loss = reconstruction + beta * kl + gradient_weight * gradient
    parts = {"loss": loss, "reconstruction": reconstruction, "kl": kl, "gradient": gradient}
    return {k: v.mean() for k, v in parts.items()}


def _train(vae: VAE, source: DataSource, device: torch.device) -> dict[str, Any]:
    """The autoencoder stage on the shared :class:`~sciddpm.training.stage.Stage`: posterior
    samples by reparameterisation (Kingma & Welling 2014), data order and noise from one stream."""
    cfg = vae.config
    n = len(source)
    g = seeding.generator(seeding.AUTOENCODER, cfg.seed)
    order = torch.empty(0, dtype=torch.long)
    window: list[dict[str, float]] = []

    def loss(step: int) -> tuple[float, None]:
        nonlocal order, window
        while len(order) < cfg.batch_size:  # consecutive slices of seeded epoch permutations
            order = torch.cat([order, torch.randperm(n, generator=g)])
        index, order = order[: cfg.batch_size], order[cfg.batch_size :]
        x, _, mask = collate([source[int(i)] for i in index])
        x = x.to(device)
        mask = mask.to(device) if mask is not None else None
        h = vae._prepare(x)
        latent = (len(x), cfg.latent_channels, *(s // vae.factor for s in h.shape[2:]))
        recon, mean, logvar = vae.net(h, torch.randn(latent, generator=g).to(device))
        target, recon = vae.normalize.encode(x), crop(recon, tuple(x.shape[2:]))
        parts = vae_loss(
            target, recon, mean, logvar, beta=cfg.beta, gradient_weight=cfg.gradient_weight, mask=mask
        )
        parts["loss"].backward()
        window = [*window[-49:], {k: float(v.detach()) for k, v in parts.items()}]
        return window[-1]["loss"], None

    stage = Stage(
        "autoencoder",
        vae.net.parameters(),
        cfg,
        grad_clip=1.0,
        hint=f"lower the autoencoder's lr (now {cfg.lr}) or check the data for extreme values",
    )
    vae.net.train()
    start = time.perf_counter()
    stage.run(loss)
    vae.net.eval()
    return {
        "steps": cfg.steps,
        "seconds": round(time.perf_counter() - start, 1),
        "device": str(device),
        **{f"final_{k}": _mean(window, k) for k in window[-1]},
    }


def _mean(window: list[dict[str, float]], key: str) -> float:
    return sum(w[key] for w in window) / len(window)


@torch.no_grad()
def _latent_std(vae: VAE, source: DataSource, device: torch.device) -> float:
    """Std of the unscaled posterior means over ``scale_samples`` samples spread over the source."""
    indices = spread_indices(len(source), vae.config.scale_samples, vae.config.seed)
    total = total_sq = count = 0.0
    for start in range(0, len(indices), 64):
        x, _, _ = collate([source[i] for i in indices[start : start + 64]])
        mean = vae.posterior(x.to(device))[0].double()
        total, total_sq, count = (
            total + mean.sum().item(),
            total_sq + mean.square().sum().item(),
            count + mean.numel(),
        )
    std = max(total_sq / count - (total / count) ** 2, 0.0) ** 0.5
    if not std > 0:
        raise ValueError("the trained VAE maps every sample to the same latent; cannot set its scale")
    return std


def _read_config(directory: Path) -> dict[str, Any]:
    """The encoder spec stored in a saved VAE directory (or read from a diffusers VAE folder).

    Raises ValueError when there is none.
    """
    if not (directory / CONFIG_FILE).is_file() and is_diffusers_vae(directory):
        fields = vae_fields(directory)
        del fields["scaling_factor"]
        return {"type": "vae", **fields}
    if not (directory / CONFIG_FILE).is_file():
        raise ValueError(
            f"weights={str(directory)!r} is not a saved VAE ({CONFIG_FILE} is missing); write one with "
            "VAE.save(dir) or `sciddpm train RUN --stage encoder --out DIR`"
        )
    meta = persistence.read_meta(directory, CONFIG_FILE, "VAE")
    if not isinstance(meta.get("encoder"), Mapping):
        raise ValueError(f"{directory / CONFIG_FILE} holds no encoder config")
    return dict(meta["encoder"])
