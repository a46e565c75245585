"""The six abstract interfaces every sciddpm component implements.

This module is the contract between the core and plugins. It imports nothing
heavy: torch appears only in type hints, so plugin discovery and
``import sciddpm`` stay fast. Concrete components usually also subclass
``torch.nn.Module`` (``class UNet(nn.Module, Denoiser)``) so that their
parameters and fitted buffers travel in the pipeline's state dict.

Shapes follow the data contract in docs/architecture.md: a *sample* is a
float tensor ``(C, *spatial)`` with 1, 2 or 3 spatial dims in physical units;
a *batch* is ``(B, C, *spatial)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import numpy as np
    import torch

__all__ = [
    "KINDS",
    "Conditioner",
    "Conditioning",
    "DataSource",
    "Denoiser",
    "Encoder",
    "Metric",
    "NativeWriter",
    "PredictionType",
    "Sample",
    "Scheduler",
    "StepOutput",
]

PredictionType = Literal["eps", "x0", "v", "flow", "edm"]

#: Registry kinds, in the order ``sciddpm plugins`` lists them.
KINDS: tuple[str, ...] = ("encoder", "denoiser", "conditioner", "scheduler", "data", "metric")


@dataclass
class Conditioning:
    """What a Conditioner hands the Denoiser; every part is optional.

    - ``concat``: ``(B, C_c, *spatial)`` fields concatenated to ``x_t`` on channels.
    - ``vector``: ``(B, D_v)`` added to the noise-level embedding (FiLM).
    - ``tokens``: ``(B, L, D_t)`` attended to by cross-attention.
    """

    concat: torch.Tensor | None = None
    vector: torch.Tensor | None = None
    tokens: torch.Tensor | None = None

    def select(self, index: torch.Tensor | slice) -> Conditioning:
        """The rows ``index`` of every present part."""
        return Conditioning(*(None if t is None else t[index] for t in self._parts()))

    def _parts(self) -> tuple[torch.Tensor | None, ...]:
        return (self.concat, self.vector, self.tokens)


@dataclass
class Sample:
    """One item from a DataSource.

    ``x`` is ``(C, *spatial)`` in physical units; ``mask`` (same shape, 1 =
    valid) marks missing values, which enter the loss as zero weight;
    ``condition`` is the raw condition (a class label, scalars, a field) that
    the pipeline's Conditioner turns into a :class:`Conditioning`.
    """

    x: torch.Tensor
    condition: Any = None
    mask: torch.Tensor | None = None


@dataclass
class StepOutput:
    """Result of one sampler step: the next state and the current x0 estimate."""

    prev_sample: torch.Tensor
    x0: torch.Tensor


class Encoder(ABC):
    """Maps data space (physical units) to model space and back.

    ``encode`` takes a batch ``(B, C, *spatial)`` and returns the model-space
    batch of shape ``(B, *latent_shape(data_shape))``; ``decode`` inverts it,
    returning physical units. ``decode`` may return a larger spatial extent (a latent
    encoder pads each axis at its end to what its downsampling represents); the
    pipeline keeps the first ``data_shape`` positions. Encoders with fitted state (means, scales,
    network weights) keep it in their state dict so it is saved with the model.
    """

    #: True when the encoder has its own training stage (a VAE).
    trainable: bool = False

    @abstractmethod
    def encode(self, x: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def decode(self, z: torch.Tensor) -> torch.Tensor: ...

    def latent_shape(self, data_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Model-space shape ``(C', *spatial')`` for a sample of ``data_shape``."""
        return tuple(data_shape)

    def fit(self, source: DataSource) -> None:  # noqa: B027 - optional hook
        """Estimate fitted state from ``source``; the default needs none."""


class Denoiser(ABC):
    """The network: ``(x_t, noise, conditioning) -> prediction``.

    ``x_t`` is ``(B, in_channels, *spatial)`` with ``spatial_dims`` axes of any
    size; ``noise`` is ``(B,)``, the scheduler's ``c_noise`` for the sample's
    noise level; the output has the shape of ``x_t`` with ``out_channels`` and
    is the quantity named by ``prediction_type`` (eps, x0, v, flow or edm, the F of Karras et al. 2022).
    The pipeline scales ``x_t`` by the scheduler's ``c_in`` before calling it.
    """

    prediction_type: PredictionType
    spatial_dims: int
    in_channels: int
    out_channels: int

    @abstractmethod
    def forward(
        self, x_t: torch.Tensor, noise: torch.Tensor, cond: Conditioning | None = None
    ) -> torch.Tensor: ...


class Conditioner(ABC):
    """Turns raw conditions into one :class:`Conditioning` structure.

    Declares what it produces (``vector_dim``, ``token_dim``,
    ``concat_channels``; 0 = absent) so the pipeline can size the denoiser,
    and provides the *null* condition used for classifier-free guidance
    (Ho & Salimans 2022).
    """

    vector_dim: int = 0
    token_dim: int = 0
    concat_channels: int = 0

    @abstractmethod
    def forward(self, raw: Any, batch_size: int) -> Conditioning:
        """Condition a batch of ``batch_size`` on ``raw`` (already batched)."""

    @abstractmethod
    def null(self, batch_size: int) -> Conditioning:
        """The unconditional input for a batch of ``batch_size``."""

    def collate(self, raws: list[Any]) -> Any:
        """Batch the raw conditions of several samples (default: keep the list)."""
        return raws

    def fit(self, source: DataSource) -> None:  # noqa: B027 - optional hook
        """Prepare on ``source`` before diffusion training (CLIP trains contrastively); default none.

        ``Pipeline.from_config`` calls it once the conditioner is built, when given a source.
        """

    def drop(self, raw: Any, keep: torch.Tensor) -> Conditioning:
        """Conditioning where rows with ``keep == False`` get the null condition.

        Used for condition dropout during training.
        """
        import torch

        cond = self.forward(raw, len(keep))
        null = self.null(len(keep))
        parts = []
        for c, n in zip(cond._parts(), null._parts(), strict=True):
            if c is None:
                parts.append(None)
                continue
            k = keep.to(c.device).view(-1, *([1] * (c.ndim - 1)))
            parts.append(torch.where(k, c, n.to(c.device)))
        return Conditioning(*parts)


class Scheduler(ABC):
    """The noise process and its discretisation.

    Training: ``sample_t`` draws continuous times ``t`` in [0, 1];
    ``add_noise`` gives ``x_t = alpha(t) x0 + sigma(t) eps``; ``target`` is
    what a denoiser of a given ``prediction_type`` should output;
    ``loss_weight`` weights the per-sample loss; ``c_noise`` is what the
    denoiser receives as its noise input and ``c_in`` scales its ``x_t`` input.

    Sampling follows the diffusers vocabulary: ``set_timesteps(steps)`` fills
    ``timesteps`` (continuous t, decreasing) and ``step`` maps a model output
    at ``timesteps[i]`` to the state at ``timesteps[i + 1]``, returning the x0
    estimate too. Stochastic steps take their Gaussian ``noise`` (shape of
    ``x_t``) from the caller when given, else draw it from ``generator``; the
    pipeline passes per-sample noise so samples do not depend on batching.
    Nothing is clipped: data are in physical units.
    """

    timesteps: torch.Tensor
    #: Whether ``step`` uses fresh noise (False lets callers skip drawing it).
    stochastic: bool = True
    #: Std of the initial ``x_t`` at ``timesteps[0]`` (diffusers' name): callers scale N(0, I) noise by it.
    init_noise_sigma: float = 1.0

    @abstractmethod
    def sample_t(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor: ...

    @abstractmethod
    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def target(
        self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, prediction_type: PredictionType
    ) -> torch.Tensor: ...

    def loss_weight(self, t: torch.Tensor, prediction_type: PredictionType | None = None) -> torch.Tensor:
        """Per-sample loss weight at ``t`` for a ``prediction_type`` denoiser; the default is uniform."""
        import torch

        return torch.ones_like(t)

    @abstractmethod
    def c_noise(self, t: torch.Tensor) -> torch.Tensor: ...

    def c_in(self, t: torch.Tensor) -> torch.Tensor:
        """Per-sample scale of the denoiser's input ``x_t`` at ``t`` (EDM's c_in); the default is 1.

        Only the network input is scaled: ``step`` and ``target`` see the unscaled ``x_t``.
        """
        import torch

        return torch.ones_like(t)

    @abstractmethod
    def set_timesteps(self, steps: int) -> None: ...

    @abstractmethod
    def step(
        self,
        model_output: torch.Tensor,
        index: int,
        x_t: torch.Tensor,
        prediction_type: PredictionType,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> StepOutput: ...

    def check_prediction_type(self, prediction_type: PredictionType) -> None:  # noqa: B027
        """Raise ValueError if this scheduler cannot drive a denoiser predicting ``prediction_type``."""


class DataSource(ABC):
    """Turns native data into samples, and generated tensors back.

    Map-style: ``len(source)`` samples, ``source[i]`` a :class:`Sample` whose
    ``x`` has shape ``sample_shape = (C, *spatial)`` in physical units.
    A source validates its data at the boundary: NaN/inf without a mask is an
    error naming the source and the sample index. ``to_native`` turns a batch
    of generated samples back into the source's native form (numpy by default).
    """

    sample_shape: tuple[int, ...]
    #: Number of classes when samples carry a class label, else 0.
    num_classes: int = 0

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __getitem__(self, index: int) -> Sample: ...

    def __iter__(self) -> Iterator[Sample]:
        return (self[i] for i in range(len(self)))

    def describe(self) -> Mapping[str, Any]:
        """Provenance for the model card: what was read, from where."""
        return {"type": type(self).__name__, "samples": len(self), "sample_shape": list(self.sample_shape)}

    def epoch_order(self, epoch: int, seed: int) -> Sequence[int] | None:
        """The order a trainer visits the indices in ``epoch`` (each once), or None for a random permutation.

        Sources whose reads are cheap in groups (chunked zarr) return a seeded chunk-aware shuffle,
        so that neighbouring training positions share a chunk read. Must depend only on the arguments.
        """
        return None

    def to_native(self, x: torch.Tensor) -> np.ndarray | Any:
        """Generated ``(N, *sample_shape)`` in physical units → native form."""
        return x.detach().cpu().numpy()

    def native_writer(
        self, path: str, n: int, *, index: int | None = None, info: Mapping[str, Any] | None = None
    ) -> NativeWriter | None:
        """A resumable writer of ``n`` generated samples to ``path`` in the source's native format.

        ``index`` is the data sample whose condition (and place: time, region) the samples share,
        if any; ``info`` describes the run (``model``, ``seed``) for the file's provenance. None
        (the default) when the source has no native format for ``path``.
        """
        return None


class NativeWriter(ABC):
    """Writes generated samples, in order of index, so that an interrupted write can continue.

    ``completed()`` names the samples already fully written (found on disk, not remembered), so a
    rerun skips them and redoes a partially written one; see ``Pipeline.sample_into``.
    """

    @abstractmethod
    def completed(self) -> set[int]:
        """Indices of the samples already written completely."""

    @abstractmethod
    def write(self, start: int, samples: torch.Tensor) -> None:
        """Write samples ``start .. start + len(samples) - 1`` (physical units), each marked complete."""


class Metric(ABC):
    """Compares generated samples with reference data; lower or higher is better as declared."""

    higher_is_better: bool = False

    @abstractmethod
    def __call__(self, generated: Any, reference: Any) -> float | Mapping[str, float]: ...
