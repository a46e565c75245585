"""A convolutional KL autoencoder for 1-, 2- and 3-D fields: the network of the ``vae`` encoder.

The variational autoencoder of Kingma & Welling 2014 (https://arxiv.org/abs/1312.6114) in
the layout of the latent-diffusion autoencoder (Rombach et al. 2022,
https://arxiv.org/abs/2112.10752, ``ldm.modules.diffusionmodules.model``): GroupNorm
residual blocks, stride-2 convolutions down, nearest + conv up, one more residual block
per level in the decoder than in the encoder, and an encoder head giving the mean and
log-variance of a diagonal Gaussian posterior. The convolutions are the U-Net's, so every
spatial axis has its own boundary mode (zeros, reflect, circular).

Two layouts: ``"sciddpm"`` (the default, smaller: no attention, 'same' stride-2 convs) and
``"ldm"``, LDM's exact network as diffusers' ``AutoencoderKL`` has it (self-attention in the
middle blocks, GroupNorm eps 1e-6, downsampling padded by one at the end of each axis, 1x1
``quant_conv`` / ``post_quant_conv``), so pretrained weights load with the same maths.

The network sees sizes that are multiples of ``factor = 2 ** (len(channels) - 1)``; the
``vae`` encoder (``sciddpm/components/vae.py``) pads other sizes and normalises the data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from sciddpm.nn.unet import CONV, Attention, Conv, ResBlock, Upsample, pad_axes

__all__ = ["LOGVAR_RANGE", "AutoencoderKL", "Layout", "kl_standard_normal"]

Layout = Literal["sciddpm", "ldm"]

#: Clamp of the posterior log-variance, as LDM's DiagonalGaussianDistribution: keeps exp() finite.
LOGVAR_RANGE = (-30.0, 20.0)


def kl_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(N(mean, exp(logvar)) || N(0, 1)) in nats (Kingma & Welling 2014, App. B)."""
    return 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar)


class _Upsample(Upsample):
    """The U-Net's nearest + conv upsampling (a sub-pixel conv inside), called without an embedding."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x, None, None)  # type: ignore[arg-type]


class _Attention(Attention):
    """The U-Net's single-head self-attention, called without an embedding (LDM's ``AttnBlock``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x, None, None)  # type: ignore[arg-type]


class _PadEndDownsample(nn.Module):
    """LDM's downsampling: pad one value at the end of each axis (in its mode), then a stride-2 conv."""

    def __init__(self, dims: int, channels: int, modes: list[str]) -> None:
        super().__init__()
        self.modes = modes
        self.conv = CONV[dims](channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(pad_axes(x, [(0, 1)] * len(self.modes), self.modes))


def _head(dims: int, c_in: int, c_out: int, groups: int, modes: list[str], eps: float) -> nn.Sequential:
    return nn.Sequential(nn.GroupNorm(groups, c_in, eps=eps), nn.SiLU(), Conv(dims, c_in, c_out, modes))


class AutoencoderKL(nn.Module):
    """Encoder ``x -> (mean, logvar)`` of the latent posterior and decoder ``z -> x``.

    ``x`` is ``(B, in_channels, *spatial)`` with ``dims`` spatial axes, each a multiple of
    :attr:`factor`; the latent is ``(B, latent_channels, *spatial / factor)``. ``layout`` is
    ``"sciddpm"`` or ``"ldm"`` (see the module docstring).
    """

    def __init__(
        self,
        *,
        dims: int,
        in_channels: int,
        channels: Sequence[int] = (32, 64, 64),
        latent_channels: int = 4,
        blocks_per_level: int = 1,
        groups: int = 8,
        modes: Sequence[str] | None = None,
        layout: Layout = "sciddpm",
    ) -> None:
        super().__init__()
        ch = list(channels)
        modes = list(modes) if modes is not None else ["zeros"] * dims
        self.dims, self.in_channels, self.latent_channels = dims, in_channels, latent_channels
        self.factor = 2 ** (len(ch) - 1)
        self.layout, self.levels, self.blocks_per_level = layout, len(ch), blocks_per_level
        ldm = layout == "ldm"
        eps = 1e-6 if ldm else 1e-5

        def res(c_in: int, c_out: int) -> ResBlock:  # the U-Net's block without a noise embedding
            return ResBlock(dims, c_in, c_out, modes, groups=groups, eps=eps)

        def middle(c: int) -> list[nn.Module]:
            attention = [_Attention(c, 1, groups, eps=eps)] if ldm else []
            return [res(c, c), *attention, res(c, c)]

        down: list[nn.Module] = [Conv(dims, in_channels, ch[0], modes)]
        c = ch[0]
        for level, width in enumerate(ch):
            for _ in range(blocks_per_level):
                down.append(res(c, width))
                c = width
            if level < len(ch) - 1:
                down.append(_PadEndDownsample(dims, c, modes) if ldm else Conv(dims, c, c, modes, stride=2))
        down += [*middle(c), _head(dims, c, 2 * latent_channels, groups, modes, eps)]
        self.encoder = nn.Sequential(*down)
        # 1x1 convs on the posterior's moments and on the latent (LDM); identities otherwise.
        self.quant_conv = CONV[dims](2 * latent_channels, 2 * latent_channels, 1) if ldm else nn.Identity()
        self.post_quant_conv = CONV[dims](latent_channels, latent_channels, 1) if ldm else nn.Identity()

        up: list[nn.Module] = [Conv(dims, latent_channels, c, modes), *middle(c)]
        for level, width in reversed(list(enumerate(ch))):
            for _ in range(blocks_per_level + 1):
                up.append(res(c, width))
                c = width
            if level > 0:
                up.append(_Upsample(dims, c, modes))
        up.append(_head(dims, c, in_channels, groups, modes, eps))
        self.decoder = nn.Sequential(*up)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and clamped log-variance of q(z | x), each ``(B, latent_channels, *spatial')``."""
        mean, logvar = self.quant_conv(self.encoder(x)).chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Standardised data ``(B, C, *factor spatial)`` from latents.

        ``z`` is ``(B, latent_channels, *spatial)``.
        """
        return self.decoder(self.post_quant_conv(z))

    def forward(
        self, x: torch.Tensor, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruction of ``x`` from ``z = mean + exp(logvar / 2) * noise`` (the
        reparameterisation trick), with the posterior's mean and log-variance; ``noise=None``
        decodes the mean."""
        mean, logvar = self.encode(x)
        z = mean if noise is None else mean + (0.5 * logvar).exp() * noise
        return self.decode(z), mean, logvar
