"""The ``microscopy/restoration`` conditioner: the low-quality input image, normalised, as concat channels.

Conditional diffusion restoration of microscopy (Osuna-Vargas et al. 2024, "Denoising diffusion
models for high-resolution microscopy image restoration") feeds the low-SNR image to the denoiser
beside ``x_t``. The input has its own intensity scale (a camera offset, fewer photons), so it gets
its own percentile normalisation, fitted on the training inputs and kept in the state dict, as the
target gets :class:`~sciddpm_microscopy.normalization.PercentileNormalize` (fitted on the whole
training set, not per image as CARE normalises at prediction: inputs taken at another laser power
or exposure arrive at another scale). The null condition (for condition dropout and guidance) is
zero in normalised units: a flat image at the middle of the input's range, which stands for "no
input" only because the model learns it as such.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sciddpm.interfaces import Conditioner, Conditioning, DataSource
from torch import nn

from sciddpm_microscopy.normalization import fit_percentiles

__all__ = ["RestorationConditioner", "RestorationConditionerConfig"]


class RestorationConditionerConfig(BaseModel):
    """The input image of restoration, percentile-normalised, concatenated to ``x_t``."""

    model_config = ConfigDict(extra="forbid")

    input_channels: int | None = Field(
        None, ge=1, description="Channels of the input image; None = the target's channel count."
    )
    low: float = Field(3.0, ge=0, lt=100, description="Input percentile mapped to -1.")
    high: float = Field(99.8, gt=0, le=100, description="Input percentile mapped to 1.")
    max_values: int = Field(2_000_000, ge=1000, description="Values per channel the percentiles use.")
    data_shape: list[int] | None = Field(
        None, description="(C, *spatial) of a sample; filled in by the pipeline (sizes the null image)."
    )

    @model_validator(mode="after")
    def _ordered(self) -> RestorationConditionerConfig:
        if self.low >= self.high:
            raise ValueError(f"low = {self.low} must be below high = {self.high} (percentiles)")
        return self


class RestorationConditioner(nn.Module, Conditioner):
    """``Conditioning(concat=normalised input (B, C_in, *spatial))`` of input images.

    A condition is ``{"input": image}`` (what ``microscopy/image`` samples carry), a list of them
    (one per sample), or, called directly, the image itself: ``(C_in, *spatial)`` broadcast to the
    batch or a batch ``(B, C_in, *spatial)``; all in the input's intensity units. Give
    ``Pipeline.sample`` the mapping form: it reads a bare tensor as one condition per sample.
    The input percentiles are fitted once on the training inputs, so inputs taken at another laser
    power or exposure than the training inputs arrive at another scale; ``restore(...,
    input_percentiles="per_image")`` normalises each image by its own, as CARE does at prediction.
    Raises ValueError naming the shape
    for any other, RuntimeError before :meth:`fit` (or loading a fitted state).
    """

    input_low: torch.Tensor
    input_high: torch.Tensor
    fitted: torch.Tensor

    def __init__(self, config: RestorationConditionerConfig) -> None:
        super().__init__()
        if config.data_shape is None:
            raise ValueError("microscopy/restoration needs data_shape (the pipeline fills it in)")
        self.config = config
        self.spatial = tuple(config.data_shape[1:])
        self.concat_channels = config.input_channels or config.data_shape[0]
        self.register_buffer("input_low", torch.zeros(self.concat_channels))
        self.register_buffer("input_high", torch.ones(self.concat_channels))
        self.register_buffer("fitted", torch.tensor(False))

    @torch.no_grad()
    def fit(self, source: DataSource) -> None:
        """Fit the input percentiles on the conditions of ``source``.

        Raises ValueError when a sample has no input image or one of another shape, or for a
        constant input channel (:func:`~sciddpm_microscopy.normalization.fit_percentiles`).
        """

        def inputs() -> Iterable[np.ndarray]:
            for i in range(len(source)):
                yield self._check(self._image(source[i].condition), f"sample {i}").numpy()

        lo, hi = fit_percentiles(
            inputs(), len(source), self.config.low, self.config.high, self.config.max_values, 0, "the inputs"
        )
        self.input_low.copy_(torch.from_numpy(lo))
        self.input_high.copy_(torch.from_numpy(hi))
        self.fitted.fill_(True)

    @staticmethod
    def _image(raw: Any) -> Any:
        """The image of one condition: ``{"input": image}`` (what the source gives) or the image itself."""
        return raw.get("input") if isinstance(raw, Mapping) else raw

    def _check(self, image: Any, what: str) -> torch.Tensor:
        if image is None:
            raise ValueError(
                f"microscopy/restoration needs an input image, but {what} has none; give the source "
                "`input` (paired files) or `degrade` (a simulated camera)"
            )
        x = torch.as_tensor(image, dtype=torch.float32)
        if tuple(x.shape[-len(self.spatial) - 1 :]) != (self.concat_channels, *self.spatial):
            raise ValueError(
                f"the input image of {what} has shape {tuple(x.shape)}; microscopy/restoration expects "
                f"({self.concat_channels}, {', '.join(map(str, self.spatial))}) or a batch of them (the "
                f"model was trained on {self.concat_channels}-channel inputs and patches of "
                f"{list(self.spatial)}; restore() tiles whole images)"
            )
        return x

    def collate(self, raws: list[Any]) -> dict[str, torch.Tensor]:
        """The samples' images stacked to ``{"input": (B, C_in, *spatial)}``; ValueError for a missing one."""
        images = [self._check(self._image(r), f"sample {i} of the batch") for i, r in enumerate(raws)]
        return {"input": torch.stack(images)}

    def forward(self, raw: Any, batch_size: int) -> Conditioning:
        """The normalised input ``2 (x - p_low) / (p_high - p_low) - 1`` as ``concat``; None: :meth:`null`."""
        if raw is None:
            return self.null(batch_size)
        if isinstance(raw, (list, tuple)):
            raw = self.collate(list(raw))
        x = self._check(self._image(raw), "the condition")
        z = self.normalize(x.reshape(-1, *x.shape[-len(self.spatial) - 1 :]))
        if z.shape[0] == 1 and batch_size != 1:
            z = z.expand(batch_size, *z.shape[1:])
        if z.shape[0] != batch_size:
            raise ValueError(f"{z.shape[0]} input images for a batch of {batch_size}")
        return Conditioning(concat=z)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``2 (x - p_low) / (p_high - p_low) - 1`` per channel of ``x (B, C_in, *spatial)``, any size.

        The map :meth:`forward` applies (it also checks the patch's size); a whole image goes
        through it too. Raises RuntimeError before :meth:`fit` and ValueError for another channel count.
        """
        if not bool(self.fitted):
            raise RuntimeError(
                "microscopy/restoration is not fitted: build the pipeline with its data source, or load "
                "a saved pipeline (its input percentiles are in the state dict)"
            )
        if x.ndim < 2 or x.shape[1] != self.concat_channels:
            raise ValueError(
                f"an input batch of shape {tuple(x.shape)}; microscopy/restoration expects "
                f"(B, {self.concat_channels}, *spatial)"
            )
        shape = (1, self.concat_channels) + (1,) * (x.ndim - 2)
        low = self.input_low.view(shape)
        return 2 * (x.to(low.device) - low) / (self.input_high.view(shape) - low) - 1

    def null(self, batch_size: int) -> Conditioning:
        """A zero input image (the middle of the input's normalised range) for ``batch_size`` rows."""
        return Conditioning(
            concat=torch.zeros(batch_size, self.concat_channels, *self.spatial, device=self.input_low.device)
        )
