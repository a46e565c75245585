"""A U-Net denoiser for 1-, 2- and 3-D fields of any size, readable top to bottom.

The layout is the improved-DDPM / ADM U-Net (Nichol & Dhariwal 2021,
https://arxiv.org/abs/2102.09672; Dhariwal & Nichol 2021,
https://arxiv.org/abs/2105.05233): GroupNorm residual blocks modulated by the
noise-level embedding, self-attention at chosen levels, strided-conv
downsampling, nearest + conv upsampling and one skip connection per block.
Scientific data add three things: the same code for 1/2/3 spatial dims, a
boundary mode per axis (longitude is periodic, latitude is not) and inputs of
any size, padded inside to what the depth needs and cropped back.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from torch.utils.checkpoint import checkpoint

from sciddpm.interfaces import Conditioning, Denoiser, PredictionType
from sciddpm.seeding import keyed_rand

__all__ = ["KeyedDropout", "UNet", "UNetConfig"]

Padding = Literal["zeros", "reflect", "circular"]
CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


class UNetConfig(BaseModel):
    """Constructor arguments of :class:`UNet`; ``dims`` and ``in_channels`` come from the data."""

    model_config = ConfigDict(extra="forbid")

    dims: Literal[1, 2, 3] | None = Field(
        None, description="Spatial dims of a sample (1, 2 or 3); None = filled in by the pipeline."
    )
    in_channels: int | None = Field(
        None, ge=1, description="Channels of x_t; None = filled in by the pipeline from the data."
    )
    out_channels: int | None = Field(None, ge=1, description="Output channels; None = in_channels.")
    channels: list[int] = Field(
        [32, 64, 128], min_length=1, description="Width of each level; depth = len(channels)."
    )
    blocks_per_level: int = Field(2, ge=1, description="Residual blocks per level on the way down.")
    attention_levels: list[int] = Field(
        [], description="Indices of levels (0 = full resolution) whose blocks get self-attention."
    )
    mid_attention: bool = Field(True, description="Self-attention in the bottleneck block.")
    heads: int = Field(4, ge=1, description="Attention heads; must divide the width of attention levels.")
    groups: int = Field(8, ge=1, description="GroupNorm groups; must divide every width in channels.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout inside residual blocks.")
    prediction: PredictionType = Field(
        "eps",
        description="What the network predicts: noise eps, clean x0, velocity v = alpha eps - sigma x0, "
        "'flow' = eps - x0 (the rectified-flow velocity), or 'edm', the preconditioned output F of "
        "Karras et al. 2022 (x0 = c_skip x_t + c_out F; needs the scheduler's sigma_data).",
    )
    padding: Padding | list[Padding] = Field(
        "zeros",
        description="Boundary mode of every conv: one mode, or one per spatial axis "
        '(e.g. ["reflect", "circular"] for (lat, lon)).',
    )
    vector_dim: int = Field(
        0, ge=0, description="Width of a conditioning vector added to the noise embedding."
    )
    concat_channels: int = Field(0, ge=0, description="Channels of conditioning fields concatenated to x_t.")
    token_dim: int = Field(
        0, ge=0, description="Width of conditioning tokens attended to by cross-attention."
    )
    embed_dim: int | None = Field(
        None, ge=1, description="Width of the noise-level embedding; None = 4 * channels[0]."
    )
    checkpointing: bool = Field(
        False,
        description="Gradient checkpointing: recompute each block's activations in the backward pass "
        "instead of storing them (less memory, about a third more compute). Training only.",
    )
    channels_last: bool = Field(
        False,
        description="Run 2-D/3-D activations channels-last (NHWC/NDHWC; ignored for 1-D). Same "
        "results; no faster on a CPU (measured), often faster on GPUs with mixed precision.",
    )

    @model_validator(mode="after")
    def _check(self) -> UNetConfig:
        if any(c < 1 for c in self.channels):
            raise ValueError(f"channels must be positive widths, got {self.channels}")
        bad = [c for c in self.channels if c % self.groups]
        if bad:
            raise ValueError(
                f"groups={self.groups} must divide every width in channels={self.channels}; "
                f"{bad[0]} is not divisible by {self.groups}"
            )
        levels = len(self.channels)
        wrong = [i for i in self.attention_levels if not 0 <= i < levels]
        if wrong:
            raise ValueError(
                f"attention_levels={self.attention_levels} has {wrong[0]}, but there are only "
                f"{levels} levels (0..{levels - 1})"
            )
        attended = [self.channels[i] for i in self.attention_levels]
        attended += [self.channels[-1]] if self.mid_attention else []
        bad = [c for c in attended if c % self.heads]
        if bad:
            raise ValueError(f"heads={self.heads} must divide the attention width {bad[0]}")
        if self.token_dim and not attended:
            raise ValueError(
                f"token_dim={self.token_dim} needs an attention block for cross-attention: "
                "set attention_levels or mid_attention=True"
            )
        if isinstance(self.padding, list) and self.dims is not None and len(self.padding) != self.dims:
            raise ValueError(
                f"padding={self.padding} gives {len(self.padding)} modes for {self.dims}-D data; "
                f"give one mode per spatial axis or a single mode"
            )
        return self


# --- boundary padding ----------------------------------------------------------------------------


def _source_index(n: int, before: int, after: int, mode: str, device: torch.device) -> torch.Tensor:
    """Which of ``n`` positions fills each position of the padded axis (any pad width)."""
    i = torch.arange(-before, n + after, device=device)
    if mode == "replicate":
        return i.clamp(0, n - 1)
    if mode == "circular":
        return i % n
    if n == 1:  # nothing to reflect: repeat the single value
        return torch.zeros_like(i)
    period = 2 * (n - 1)  # reflect without repeating the edge, folded as often as needed
    i = i % period
    return torch.where(i < n, i, period - i)


def pad_axes(x: torch.Tensor, pads: list[tuple[int, int]], modes: list[str]) -> torch.Tensor:
    """Pad spatial axis ``k`` of ``(B, C, *spatial)`` by ``pads[k] = (before, after)`` in ``modes[k]``.

    Modes: ``zeros``, ``reflect`` (without repeating the edge), ``circular``, ``replicate``.
    """
    for axis, ((before, after), mode) in enumerate(zip(pads, modes, strict=True)):
        if before == after == 0:
            continue
        if mode == "zeros":
            x = F.pad(x, [0, 0] * (len(pads) - 1 - axis) + [before, after])
        else:
            index = _source_index(x.shape[axis + 2], before, after, mode, x.device)
            x = x.index_select(axis + 2, index)
    return x


class Conv(nn.Module):
    """A 'same' conv (or strided by 2) whose boundary mode can differ per axis.

    Zero-padded axes use the conv's own padding (no copy); the others are
    padded explicitly before the conv.
    """

    def __init__(self, dims: int, c_in: int, c_out: int, modes: list[str], stride: int = 1) -> None:
        super().__init__()
        self.modes = modes
        self.pads = [(0, 0) if m == "zeros" else (1, 1) for m in modes]
        native = tuple(1 if m == "zeros" else 0 for m in modes)
        self.conv = CONV[dims](c_in, c_out, 3, stride=stride, padding=native)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_out, *spatial')``: the conv of ``x (B, C_in, *spatial)``, each axis padded in its mode."""
        return self.conv(pad_axes(x, self.pads, self.modes))


class KeyedDropout(nn.Module):
    """Dropout (Srivastava et al. 2014) whose masks are keyed to the samples' run positions.

    ``x (B, ...)`` keeps each value with probability ``1 - p`` (scaled by ``1 / (1 - p)``) while
    training. The mask comes from :func:`sciddpm.seeding.keyed_rand` with this layer's ``key``, so
    under the trainer a sample gets the same mask however the batch is split (gradient
    accumulation, ranks) and when checkpointing recomputes the layer. ``nn.Dropout`` draws from
    torch's global generator instead, which every rank seeds alike. No parameters: the state dict
    is that of ``nn.Dropout``.
    """

    def __init__(self, p: float = 0.0, key: int = 0) -> None:
        super().__init__()
        self.p, self.key = float(p), int(key)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with a keyed dropout mask while training; ``x`` itself in eval mode or for p = 0."""
        if not self.training or self.p == 0:
            return x
        keep = keyed_rand(len(x), x.shape[1:], self.key, device=x.device) >= self.p
        return x * keep.to(x.dtype) / (1 - self.p)

    def extra_repr(self) -> str:
        """The drop probability and the layer's key, for ``repr``."""
        return f"p={self.p}, key={self.key}"


def zero_init(module: nn.Module) -> nn.Module:
    """Start a residual branch at zero, as in the improved-DDPM code, so an untrained net outputs 0."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


# --- building blocks: every layer takes (h, emb, tokens) so a level is a plain loop -------------


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice; the noise embedding, if any, scales and shifts the second norm.

    Adaptive GroupNorm (Dhariwal & Nichol 2021, https://arxiv.org/abs/2105.05233), i.e. FiLM
    (Perez et al. 2018, https://arxiv.org/abs/1709.07871) applied after normalisation.
    With ``embed_dim=0`` it is the plain block of the LDM autoencoder (the ``vae`` encoder).
    """

    def __init__(
        self,
        dims: int,
        c_in: int,
        c_out: int,
        modes: list[str],
        *,
        groups: int,
        embed_dim: int = 0,
        dropout: float = 0.0,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in, eps=eps)
        self.conv1 = Conv(dims, c_in, c_out, modes)
        self.film = nn.Linear(embed_dim, 2 * c_out) if embed_dim else None
        self.norm2 = nn.GroupNorm(groups, c_out, eps=eps)
        self.dropout = KeyedDropout(dropout)
        self.conv2 = zero_init(Conv(dims, c_out, c_out, modes))
        self.skip = CONV[dims](c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(
        self, x: torch.Tensor, emb: torch.Tensor | None = None, tokens: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``x + f(x, emb)`` for ``x (B, C_in, *spatial)`` (a 1x1 conv on the skip if widths differ).

        ``emb (B, embed_dim)`` scales and shifts the second norm (FiLM); ``tokens`` is unused.
        """
        h = self.norm2(self.conv1(F.silu(self.norm1(x))))
        if self.film is not None:
            film = self.film(emb)
            scale, shift = film.view(*film.shape, *[1] * (x.ndim - 2)).chunk(2, dim=1)
            h = torch.addcmul(shift, h, 1 + scale)
        h = self.conv2(self.dropout(F.silu(h)))
        return h + self.skip(x)


class Attention(nn.Module):
    """Multi-head self-attention over all spatial positions, plus cross-attention to tokens.

    ``heads`` must divide ``channels``; GroupNorm with ``groups`` and ``eps`` normalises the input;
    ``token_dim > 0`` adds the key/value projection of conditioning tokens.

    Tokens are projected to keys/values and appended to the spatial ones, as in
    GLIDE (Nichol et al. 2021, https://arxiv.org/abs/2112.10741), so one attention
    call serves both.

    The projections are stored as 1x1 ``Conv1d`` weights (the checkpoint layout) but
    applied as matrix products on ``(b, positions, c)``: that is a plain GEMM, a view
    of channels-last activations, and gives q/k/v a contiguous last axis, which
    ``scaled_dot_product_attention`` needs for its fused (flash) CPU kernel; a 1x1
    conv on ``(b, c, positions)`` measured 1.7x slower (forward + backward, CPU).
    """

    def __init__(self, channels: int, heads: int, groups: int, token_dim: int = 0, eps: float = 1e-5) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels, eps=eps)
        self.to_qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.to_kv_tokens = nn.Linear(token_dim, 2 * channels) if token_dim else None
        self.to_out = zero_init(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor, tokens: torch.Tensor | None) -> torch.Tensor:
        """``x + attention(x)`` for ``x (B, C, *spatial)``.

        The queries are the positions; keys and values the positions and ``tokens (B, L, D)``.
        """
        h = rearrange(self.norm(x), "b c ... -> b (...) c")
        qkv = F.linear(h, self.to_qkv.weight.flatten(1), self.to_qkv.bias)
        q, k, v = rearrange(qkv, "b n (three h d) -> three b h n d", three=3, h=self.heads)
        if self.to_kv_tokens is not None:
            kt, vt = rearrange(self.to_kv_tokens(tokens), "b l (two h d) -> two b h l d", two=2, h=self.heads)
            k, v = torch.cat([k, kt], dim=2), torch.cat([v, vt], dim=2)
        out = rearrange(F.scaled_dot_product_attention(q, k, v), "b h n d -> b n (h d)")
        out = F.linear(out, self.to_out.weight.flatten(1), self.to_out.bias)
        return x + out.transpose(1, 2).unflatten(2, x.shape[2:])


class Downsample(nn.Module):
    """Halve every spatial axis with a stride-2 conv."""

    def __init__(self, dims: int, channels: int, modes: list[str]) -> None:
        super().__init__()
        self.conv = Conv(dims, channels, channels, modes, stride=2)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, tokens: torch.Tensor | None) -> torch.Tensor:
        """``x (B, C, *spatial)`` -> ``(B, C, *ceil(spatial / 2))`` by a stride-2 conv."""
        return self.conv(x)


class Upsample(nn.Module):
    """Double every spatial axis: nearest neighbour, then a 3-wide conv (avoids checkerboard artefacts).

    Computed without materialising the upsampled tensor, as a sub-pixel convolution
    (Shi et al. 2016, https://arxiv.org/abs/1609.05158): along an axis, output ``2i``
    sees inputs ``i-1, i, i`` through taps ``w0, w1, w2`` and output ``2i+1`` sees
    ``i, i, i+1``, so each output phase is a 2-wide conv of the low-resolution input
    with summed taps. That is ``(2/3) ** dims`` of the multiply-adds (0.44 in 2-D,
    0.30 in 3-D) and stores a 4x (8x) smaller tensor for the backward pass, for the
    same function. A boundary mode maps to the low-resolution input: zeros stay
    zeros, circular stays circular and reflect (of the upsampled axis, without
    repeating the edge) is the edge value itself, i.e. replicate.
    """

    def __init__(self, dims: int, channels: int, modes: list[str]) -> None:
        super().__init__()
        self.dims = dims
        self.conv = Conv(dims, channels, channels, modes)  # the 3-wide kernel; checkpoint layout
        self.low_modes = ["replicate" if m == "reflect" else m for m in modes]
        axes = [f"s{k}" for k in range(dims)], [f"x{k}" for k in range(dims)]
        self.depth_to_space = (
            f"b ({' '.join(axes[0])} o) {' '.join(axes[1])} -> "
            f"b o {' '.join(f'({x} {s})' for s, x in zip(*axes, strict=True))}"
        )

    def phase_weight(self) -> torch.Tensor:
        """``(O, I, 3, ...)`` taps -> ``(2**dims * O, I, 2, ...)``: one 2-wide kernel per output phase.

        Along each axis the phase index ``s = 0`` holds the odd outputs and ``s = 1`` the
        even ones, so that on the input padded by one, phase output ``r`` lands at
        upsampled position ``2r + s - 1``: the phases interleave in order, shifted by one.
        """
        w = self.conv.conv.weight
        for k in range(self.dims):
            axis = 2 + 2 * k  # k phase dims are stacked in front by now
            w0, w1, w2 = w.unbind(axis)
            odd, even = torch.stack([w0 + w1, w2], axis), torch.stack([w0, w1 + w2], axis)
            w = torch.stack([odd, even], 0)
        # Stacking put the last axis's phase outermost; order them as (s0, s1, ..., o).
        w = w.permute(*reversed(range(self.dims)), *range(self.dims, w.ndim))
        return w.flatten(0, self.dims)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, tokens: torch.Tensor | None) -> torch.Tensor:
        """``x (B, C, *spatial)`` -> ``(B, C, *2 spatial)``: nearest doubling then a conv, as phases."""
        conv = F.conv1d if self.dims == 1 else F.conv2d if self.dims == 2 else F.conv3d
        bias = self.conv.conv.bias.repeat(2**self.dims)
        y = conv(pad_axes(x, [(1, 1)] * self.dims, self.low_modes), self.phase_weight(), bias)
        y = rearrange(y, self.depth_to_space, **{f"s{k}": 2 for k in range(self.dims)})
        return y[(..., *[slice(1, -1)] * self.dims)]


class Step(nn.ModuleList):
    """Layers applied in order, each given the embedding and tokens."""

    def forward(self, h: torch.Tensor, emb: torch.Tensor, tokens: torch.Tensor | None) -> torch.Tensor:
        """Apply each layer in turn to ``h``, each given ``emb`` and ``tokens``."""
        for layer in self:
            h = layer(h, emb, tokens)
        return h


def _cat_step(
    step: Step, h: torch.Tensor, skip: torch.Tensor | None, emb: torch.Tensor, tokens: torch.Tensor | None
) -> torch.Tensor:
    """Apply ``step`` to ``h``, first joined on channels with the skip from the way down if given."""
    return step(h if skip is None else torch.cat([h, skip], dim=1), emb, tokens)


def sinusoidal_embedding(noise: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer position encoding of the noise input (Vaswani et al. 2017; Ho et al. 2020).

    ``noise`` is the scheduler's ``c_noise``, about ``1000 * t`` for DDPM-style schedules.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=noise.device) / half)
    args = noise.float()[:, None] * freqs[None]
    return F.pad(torch.cat([torch.cos(args), torch.sin(args)], dim=1), (0, dim % 2))


# --- the network ---------------------------------------------------------------------------------


class UNet(nn.Module, Denoiser):
    """U-Net denoiser ``(x_t, noise, cond) -> eps | x0 | v`` for ``(B, C, *spatial)`` with 1-3 spatial dims.

    Inputs of any size are padded inside to a multiple of ``2 ** (len(channels) - 1)``
    with each axis's boundary mode and cropped back. For exact periodicity along a
    circular axis, use a size that is already such a multiple.
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        if config.dims is None or config.in_channels is None:
            raise ValueError(
                f"UNetConfig needs dims and in_channels (got dims={config.dims}, "
                f"in_channels={config.in_channels}); set them, or build the UNet through a pipeline, "
                "which fills them in from the data"
            )
        self.config = cfg = config
        dims, ch = config.dims, config.channels
        modes = list(cfg.padding) if isinstance(cfg.padding, list) else [cfg.padding] * dims
        if len(modes) != dims:
            raise ValueError(f"padding={cfg.padding} gives {len(modes)} modes for {dims}-D data")
        self.modes = modes
        self.prediction_type = cfg.prediction
        self.spatial_dims = dims
        self.in_channels = cfg.in_channels
        self.out_channels = cfg.out_channels or cfg.in_channels
        self.concat_channels, self.vector_dim, self.token_dim = (
            cfg.concat_channels,
            cfg.vector_dim,
            cfg.token_dim,
        )
        self.multiple = 2 ** (len(ch) - 1)
        embed_dim = cfg.embed_dim or 4 * ch[0]
        self.memory_format = (
            {2: torch.channels_last, 3: torch.channels_last_3d}[dims]
            if cfg.channels_last and dims > 1
            else None
        )

        self.noise_mlp = nn.Sequential(
            nn.Linear(ch[0], embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim)
        )
        self.vector_proj = nn.Linear(cfg.vector_dim, embed_dim) if cfg.vector_dim else None
        self.conv_in = Conv(dims, cfg.in_channels + cfg.concat_channels, ch[0], modes)

        def res(c_in: int, c_out: int) -> ResBlock:
            return ResBlock(
                dims, c_in, c_out, modes, groups=cfg.groups, embed_dim=embed_dim, dropout=cfg.dropout
            )

        # Down: every step leaves a skip for the matching up step (improved-DDPM layout).
        self.down = nn.ModuleList()
        skips, c = [ch[0]], ch[0]
        for level, width in enumerate(ch):
            for _ in range(cfg.blocks_per_level):
                attn = (
                    [Attention(width, cfg.heads, cfg.groups, cfg.token_dim)]
                    if level in cfg.attention_levels
                    else []
                )
                self.down.append(Step([res(c, width), *attn]))
                c = width
                skips.append(c)
            if level < len(ch) - 1:
                self.down.append(Step([Downsample(dims, c, modes)]))
                skips.append(c)

        self.mid = Step(
            [
                res(c, c),
                *([Attention(c, cfg.heads, cfg.groups, cfg.token_dim)] if cfg.mid_attention else []),
                res(c, c),
            ]
        )

        # Up: one more block per level than down, each consuming one skip.
        self.up = nn.ModuleList()
        for level, width in reversed(list(enumerate(ch))):
            for i in range(cfg.blocks_per_level + 1):
                layers: list[nn.Module] = [res(c + skips.pop(), width)]
                c = width
                if level in cfg.attention_levels:
                    layers.append(Attention(width, cfg.heads, cfg.groups, cfg.token_dim))
                if level > 0 and i == cfg.blocks_per_level:
                    layers.append(Upsample(dims, c, modes))
                self.up.append(Step(layers))

        self.norm_out = nn.GroupNorm(cfg.groups, c)
        self.conv_out = zero_init(Conv(dims, c, self.out_channels, modes))
        # Each dropout draws its own keyed stream (numbered in module order, which is fixed).
        for key, layer in enumerate(m for m in self.modules() if isinstance(m, KeyedDropout)):
            layer.key = key

    def forward(
        self, x_t: torch.Tensor, noise: torch.Tensor, cond: Conditioning | None = None
    ) -> torch.Tensor:
        """The prediction ``(B, out_channels, *spatial)`` for ``x_t (B, in_channels, *spatial)`` of any size.

        ``noise`` is ``(B,)`` (or a scalar), the scheduler's noise input; ``cond`` carries the parts the
        U-Net was built for. Raises ValueError naming a bad shape or a missing or extra conditioning part.
        """
        cond = Conditioning() if cond is None else cond
        self._check_inputs(x_t, cond)
        batch, spatial = x_t.shape[0], x_t.shape[2:]
        noise = torch.as_tensor(noise, device=x_t.device)
        noise = noise.expand(batch) if noise.numel() == 1 else noise
        if noise.shape != (batch,):
            raise ValueError(f"noise must have shape ({batch},) or be a scalar, got {tuple(noise.shape)}")

        emb = self.noise_mlp(sinusoidal_embedding(noise, self.config.channels[0]).to(x_t.dtype))
        if self.vector_proj is not None:
            emb = emb + self.vector_proj(cond.vector)
        emb = F.silu(emb)  # every block's FiLM projection starts with SiLU; apply it once here

        h = x_t if cond.concat is None else torch.cat([x_t, cond.concat], dim=1)
        extra = [(-n) % self.multiple for n in spatial]  # what the depth needs, split over both sides
        pads = [(e // 2, e - e // 2) for e in extra]
        h = self.conv_in(pad_axes(h, pads, self.modes))
        if self.memory_format is not None:
            # After conv_in: with one input channel both layouts have the same strides and
            # torch would keep the standard one. Every later op keeps the layout.
            h = h.contiguous(memory_format=self.memory_format)

        run = self._checkpointed if self.config.checkpointing and self.training else _cat_step
        skips = [h]
        for step in self.down:
            h = run(step, h, None, emb, cond.tokens)
            skips.append(h)
        h = run(self.mid, h, None, emb, cond.tokens)
        for step in self.up:
            h = run(step, h, skips.pop(), emb, cond.tokens)
        h = self.conv_out(F.silu(self.norm_out(h)))

        crop = tuple(slice(lo, lo + n) for (lo, _), n in zip(pads, spatial, strict=True))
        return h[(..., *crop)].contiguous()

    @staticmethod
    def _checkpointed(
        step: Step, h: torch.Tensor, skip: torch.Tensor | None, emb: torch.Tensor, tokens: torch.Tensor | None
    ) -> torch.Tensor:
        """One step under gradient checkpointing (Chen et al. 2016, https://arxiv.org/abs/1604.06174).

        Only the step's inputs are kept; its activations are recomputed in the backward
        pass. ``use_reentrant=False`` is the variant PyTorch recommends: it works when
        some inputs need no gradient and restores the RNG, so dropout masks repeat.
        """
        if not torch.is_grad_enabled():
            return _cat_step(step, h, skip, emb, tokens)
        return checkpoint(_cat_step, step, h, skip, emb, tokens, use_reentrant=False)

    def _check_inputs(self, x_t: torch.Tensor, cond: Conditioning) -> None:
        """Errors that name the bad shape and what was expected."""
        d, cfg = self.spatial_dims, self.config
        if x_t.ndim != d + 2:
            layout = {1: "(B, C, L)", 2: "(B, C, H, W)", 3: "(B, C, D, H, W)"}[d]
            raise ValueError(
                f"UNet was built for {d}-D data {layout}; got x_t of shape {tuple(x_t.shape)} "
                f"with {x_t.ndim - 2} spatial dims"
            )
        if x_t.shape[1] != self.in_channels:
            raise ValueError(
                f"UNet expects {self.in_channels} input channels, got {x_t.shape[1]} "
                f"(x_t has shape {tuple(x_t.shape)})"
            )
        batch, spatial = x_t.shape[0], tuple(x_t.shape[2:])
        expected = {
            "concat": (cfg.concat_channels, (batch, cfg.concat_channels, *spatial)),
            "vector": (cfg.vector_dim, (batch, cfg.vector_dim)),
            "tokens": (cfg.token_dim, None),
        }
        for name, (width, shape) in expected.items():
            part = getattr(cond, name)
            field = "concat_channels" if name == "concat" else f"{name}_dim"
            if width and part is None:
                raise ValueError(f"UNet was built with {field}={width} but cond.{name} is missing")
            if not width and part is not None:
                raise ValueError(
                    f"UNet was built with {field}=0 but got cond.{name} of shape {tuple(part.shape)}; "
                    f"set {field} in the UNet config"
                )
            if part is None:
                continue
            if name == "tokens":
                ok = part.ndim == 3 and part.shape[0] == batch and part.shape[2] == width
                shape_text = f"({batch}, L, {width})"
            else:
                ok, shape_text = tuple(part.shape) == shape, str(shape)
            if not ok:
                raise ValueError(f"cond.{name} must have shape {shape_text}, got {tuple(part.shape)}")
