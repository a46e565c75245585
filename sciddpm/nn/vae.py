"""A convolutional KL autoencoder for 1-, 2- and 3-D fields: the network of the ``vae`` encoder.

The variational autoencoder of Kingma & Welling 2014 (https://arxiv.org/abs/1312.6114) in
the layout of the latent-diffusion autoencoder (Rombach et al. 2022,
https://arxiv.org/abs/2112.10752, ``ldm.modules.diffusionmodules.model``): GroupNorm
residual blocks, stride-2 convolutions down, nearest + conv up, one more residual block
per level in the decoder than in the encoder, and an encoder head giving the mean and
log-variance of a diagonal Gaussian posterior. The convolutions are the U-Net's, so every
spatial axis has its own boundary mode (zeros, reflect, circular).

The network sees sizes that are multiples of ``factor = 2 ** (len(channels) - 1)``; the
``vae`` encoder (``sciddpm/vae.py``) pads other sizes and normalises the data.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sciddpm.nn.unet import Conv, ResBlock, Upsample

__all__ = ["LOGVAR_RANGE", "AutoencoderKL", "kl_standard_normal"]

#: Clamp of the posterior log-variance, as LDM's DiagonalGaussianDistribution: keeps exp() finite.
LOGVAR_RANGE = (-30.0, 20.0)


def kl_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(N(mean, exp(logvar)) || N(0, 1)) in nats (Kingma & Welling 2014, App. B)."""
    return 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar)


class _Upsample(Upsample):
    """The U-Net's nearest + conv upsampling (a sub-pixel conv inside), called without an embedding."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x, None, None)  # type: ignore[arg-type]


def _head(dims: int, c_in: int, c_out: int, groups: int, modes: list[str]) -> nn.Sequential:
    return nn.Sequential(nn.GroupNorm(groups, c_in), nn.SiLU(), Conv(dims, c_in, c_out, modes))


class AutoencoderKL(nn.Module):
    """Encoder ``x -> (mean, logvar)`` of the latent posterior and decoder ``z -> x``.

    ``x`` is ``(B, in_channels, *spatial)`` with ``dims`` spatial axes, each a multiple of
    :attr:`factor`; the latent is ``(B, latent_channels, *spatial / factor)``.
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
    ) -> None:
        super().__init__()
        ch = list(channels)
        modes = list(modes) if modes is not None else ["zeros"] * dims
        self.dims, self.in_channels, self.latent_channels = dims, in_channels, latent_channels
        self.factor = 2 ** (len(ch) - 1)

        def res(c_in: int, c_out: int) -> ResBlock:  # the U-Net's block without a noise embedding
            return ResBlock(dims, c_in, c_out, modes, groups=groups)

        down: list[nn.Module] = [Conv(dims, in_channels, ch[0], modes)]
        c = ch[0]
        for level, width in enumerate(ch):
            for _ in range(blocks_per_level):
                down.append(res(c, width))
                c = width
            if level < len(ch) - 1:
                down.append(Conv(dims, c, c, modes, stride=2))
        down += [res(c, c), res(c, c), _head(dims, c, 2 * latent_channels, groups, modes)]
        self.encoder = nn.Sequential(*down)

        up: list[nn.Module] = [Conv(dims, latent_channels, c, modes), res(c, c), res(c, c)]
        for level, width in reversed(list(enumerate(ch))):
            for _ in range(blocks_per_level + 1):
                up.append(res(c, width))
                c = width
            if level > 0:
                up.append(_Upsample(dims, c, modes))
        up.append(_head(dims, c, in_channels, groups, modes))
        self.decoder = nn.Sequential(*up)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and clamped log-variance of q(z | x), each ``(B, latent_channels, *spatial')``."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Standardised data ``(B, C, *factor spatial)`` from latents.

        ``z`` is ``(B, latent_channels, *spatial)``.
        """
        return self.decoder(z)

    def forward(
        self, x: torch.Tensor, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruction of ``x`` from ``z = mean + exp(logvar / 2) * noise`` (the
        reparameterisation trick), with the posterior's mean and log-variance; ``noise=None``
        decodes the mean."""
        mean, logvar = self.encode(x)
        z = mean if noise is None else mean + (0.5 * logvar).exp() * noise
        return self.decode(z), mean, logvar
