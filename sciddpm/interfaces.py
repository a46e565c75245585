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
from typing import TYPE_CHECKING, Any, Literal, get_args

if TYPE_CHECKING:
    import numpy as np
    import torch


__all__ = [
    "KINDS",
    "PREDICTION_TYPES",
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

#: What a denoiser predicts: the noise ``eps``, the clean data ``x0``, the velocity ``v = alpha eps -
#: sigma x0`` (Salimans & Ho 2022), the rectified-flow velocity ``flow = eps - x0`` (Liu et al.
#: 2023) or ``edm``, the preconditioned output F of Karras et al. 2022 (Eq. 7).
PredictionType = Literal["eps", "x0", "v", "flow", "edm"]
#: The same, as a tuple: the one list every component and config takes its choices from.
PREDICTION_TYPES: tuple[str, ...] = get_args(PredictionType)

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

    @staticmethod
    def cat(items: Sequence[Conditioning]) -> Conditioning:
        """The batches of ``items`` one after the other: each part concatenated on dim 0.

        Raises ValueError when the items do not have the same parts.
        """
        import torch

        columns = list(zip(*(c._parts() for c in items), strict=True))
        if any(len({p is None for p in col}) > 1 for col in columns):
            raise ValueError("cannot concatenate conditionings with different parts")
        return Conditioning(*(None if col[0] is None else torch.cat(col) for col in columns))

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

    Contract:

    - ``encode(x)`` takes a batch ``(B, C, *spatial)`` in physical units and returns the model-space
      batch ``(B, *latent_shape((C, *spatial)))``, deterministic for the same input (no sampling);
    - ``decode(z)`` inverts it, returning physical units; it may return a larger spatial extent (a
      latent encoder pads each axis at its end to what its downsampling represents), of which the
      pipeline keeps the first ``data_shape`` positions; an encoder without a training stage has
      ``decode(encode(x)) == x`` up to float rounding;
    - it takes data of the declared ``spatial_dims`` (all of 1-3 when None) and any size, odd ones
      included;
    - fitted state (means, scales, network weights) lives in the module's state dict, so it is
      saved and loaded with the pipeline; using an encoder that has a ``fit`` before calling it
      raises RuntimeError;
    - bad shapes raise ValueError naming the shape and what was expected.

    Encoders must also subclass ``torch.nn.Module``. :func:`sciddpm.testing.check_component`
    checks each point.
    """

    #: True when the encoder has its own training stage (a VAE), run by :meth:`fit`.
    trainable: bool = False
    #: The one spatial dimensionality (1, 2 or 3) the encoder was built for; None: any of them.
    spatial_dims: int | None = None

    @abstractmethod
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Model-space ``(B, *latent_shape)`` of a batch ``x (B, C, *spatial)`` in physical units."""

    @abstractmethod
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Physical units ``(B, C, *spatial')`` of a model-space batch ``z``; ``spatial' >= spatial``."""

    def latent_shape(self, data_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Model-space shape ``(C', *spatial')`` for a sample of ``data_shape`` ``(C, *spatial)``."""
        return tuple(data_shape)

    def fit(self, source: DataSource) -> None:  # noqa: B027 - optional hook
        """Estimate fitted state from ``source`` (``Pipeline.from_config`` calls it); default: none."""


class Denoiser(ABC):
    """The network: ``(x_in, c_noise, conditioning) -> F``, the prediction named by ``prediction_type``.

    Contract:

    - ``x_in`` is ``(B, in_channels, *spatial)`` with ``spatial_dims`` axes of any size (pad and
      crop inside, never ask for a size): the model-space ``x_t`` scaled by the scheduler's
      ``c_in(t)``; ``c_noise`` is ``(B,)``, the scheduler's noise input for each sample's level;
    - ``cond`` carries only the parts the denoiser was built for, declared as ``concat_channels``,
      ``vector_dim`` and ``token_dim`` (0 = absent); a missing or extra part raises ValueError
      naming it, and each declared part changes the output;
    - the output is ``(B, out_channels, *spatial)``: eps, x0, v, flow or edm (the F of Karras et
      al. 2022, Eq. 7); :class:`~sciddpm.diffusion.preconditioning.Preconditioned` maps it to x0;
    - in eval mode the output is deterministic and the output of a sample depends only on that
      sample's inputs (no batch statistics), so samples do not depend on batch size;
    - every parameter takes part in the output (gets a gradient), and the state dict saved and loaded
      into a fresh denoiser of the same config gives the same output.

    Denoisers must also subclass ``torch.nn.Module``. :func:`sciddpm.testing.check_component`
    checks each point.
    """

    prediction_type: PredictionType
    spatial_dims: int
    in_channels: int
    out_channels: int
    #: Channels of ``cond.concat`` the denoiser takes (0: none).
    concat_channels: int = 0
    #: Width of ``cond.vector`` (0: none).
    vector_dim: int = 0
    #: Width of ``cond.tokens`` (0: none).
    token_dim: int = 0

    @abstractmethod
    def forward(
        self, x_t: torch.Tensor, noise: torch.Tensor, cond: Conditioning | None = None
    ) -> torch.Tensor:
        """The prediction ``(B, out_channels, *spatial)`` for the scaled ``x_t`` at noise input ``noise``."""

    def init_conditioner(self, conditioner: Conditioner) -> None:  # noqa: B027 - optional hook
        """Give ``conditioner`` trained parameters this denoiser came with (a pretrained class embedding).

        Called by ``Pipeline.from_config`` once both are built; a saved pipeline's state then
        overrides it. Default: nothing. Raises ValueError when the conditioner cannot take them.
        """


class Conditioner(ABC):
    """Turns raw conditions into one :class:`Conditioning` structure.

    Contract:

    - declares what it produces, ``vector_dim``, ``token_dim`` and ``concat_channels`` (0 =
      absent), so the pipeline can size the denoiser; ``forward`` and ``null`` produce exactly
      those parts, with ``batch_size`` rows;
    - ``null(batch_size)`` is the unconditional input of classifier-free guidance (Ho & Salimans
      2022); ``drop(raw, keep)`` swaps it in row by row (condition dropout);
    - ``collate`` batches the raw conditions of samples as ``forward`` takes them; a sample whose
      condition the conditioner cannot take raises ValueError naming the sample;
    - ``fit(source)`` prepares it before diffusion training (CLIP's contrastive stage);
    - a fitted or learned state survives save and load of its state dict.

    Conditioners must also subclass ``torch.nn.Module``. :func:`sciddpm.testing.check_component`
    checks each point, given example raw conditions.
    """

    vector_dim: int = 0
    token_dim: int = 0
    concat_channels: int = 0

    @abstractmethod
    def forward(self, raw: Any, batch_size: int) -> Conditioning:
        """Condition a batch of ``batch_size`` on ``raw``: one condition for every row, or one per row."""

    @abstractmethod
    def null(self, batch_size: int) -> Conditioning:
        """The unconditional input for a batch of ``batch_size``."""

    def collate(self, raws: list[Any]) -> Any:
        """Batch the raw conditions of several samples as :meth:`forward` takes them (default: the list)."""
        return raws

    def fit(self, source: DataSource) -> None:  # noqa: B027 - optional hook
        """Prepare on ``source`` before diffusion training (CLIP trains contrastively); default none.

        ``Pipeline.from_config`` calls it once the conditioner is built, when given a source.
        """

    def drop(self, raw: Any, keep: torch.Tensor) -> Conditioning:
        """Conditioning where rows with ``keep (B,) == False`` get the null condition (condition dropout)."""
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
    """A noise process and its discretisation: the training side and the sampling steps.

    Training: ``sample_t`` draws continuous times ``t`` in [0, 1]; ``add_noise`` gives
    ``x_t = alpha(t) x0 + sigma(t) eps``; ``target`` is what a denoiser of a given
    ``prediction_type`` should output; ``loss_weight`` weights the per-sample loss; ``c_noise`` is
    what the denoiser receives as its noise input and ``c_in`` scales its ``x_t`` input.

    Sampling follows the diffusers vocabulary: ``set_timesteps(steps)`` fills ``timesteps``
    (continuous t in (0, 1], one entry per model evaluation, decreasing: a time repeats only when a
    step evaluates the model twice at one level, as Heun's corrector does) and ``step`` maps
    a model output at ``timesteps[i]`` and the state ``x_t`` there to the state at ``timesteps[i +
    1]`` (t = 0 after the last), returning the x0 estimate too. ``step`` continues from the ``x_t``
    it is given, so a caller may edit the state between steps; multistep history (past x0
    estimates) is kept between calls and restarted by step 0. Stochastic steps take their Gaussian
    ``noise`` (shape of ``x_t``) from the caller when given, else draw it from ``generator``.
    Nothing is clipped: data are in physical units.

    ``process`` (a :class:`~sciddpm.diffusion.processes.NoiseProcess`) is the noise process the
    scheduler runs, which the one sampling loop, the Gaussian start and guidance intervals read;
    ``sigma_data`` is the data std of EDM preconditioning (Karras et al. 2022).

    Run by the sampling loop with the exact denoiser of Gaussian data, a scheduler's samples
    converge to the data distribution as ``steps`` grows, for every prediction type it accepts, and
    the same run twice gives the same samples. :func:`sciddpm.testing.check_component` checks each
    point.
    """

    timesteps: torch.Tensor
    #: The noise process ``x_t = alpha(t) x0 + sigma(t) eps`` this scheduler runs: a
    #: :class:`sciddpm.diffusion.processes.NoiseProcess` (named, not imported: the contract imports
    #: nothing of the maths, which imports the contract).
    process: NoiseProcess  # noqa: F821
    #: Std of the (encoded) data, EDM's sigma_data; 1 after the ``standardize`` encoder.
    sigma_data: float = 1.0
    #: Whether ``step`` uses fresh noise (False lets callers skip drawing it).
    stochastic: bool = True
    #: Std of the initial ``x_t`` at ``timesteps[0]`` (diffusers' name): callers scale N(0, I) noise by it.
    init_noise_sigma: float = 1.0

    @abstractmethod
    def sample_t(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training times ``(batch_size,)`` in [0, 1], drawn with ``generator`` (on its device)."""

    @abstractmethod
    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x_t = alpha(t) x0 + sigma(t) eps`` for ``x0, eps (B, ...)`` and ``t (B,)``."""

    @abstractmethod
    def target(
        self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, prediction_type: PredictionType
    ) -> torch.Tensor:
        """What a ``prediction_type`` denoiser should output at ``add_noise(x0, eps, t)``, like ``x0``."""

    def loss_weight(self, t: torch.Tensor, prediction_type: PredictionType | None = None) -> torch.Tensor:
        """Per-sample loss weight ``(B,)`` at ``t`` for a ``prediction_type`` denoiser; default uniform."""
        import torch

        return torch.ones_like(t)

    @abstractmethod
    def c_noise(self, t: torch.Tensor) -> torch.Tensor:
        """The denoiser's noise input ``(B,)`` at times ``t (B,)`` (e.g. ``1000 t`` or ``log(sigma) / 4``)."""

    def c_in(self, t: torch.Tensor) -> torch.Tensor:
        """Per-sample scale ``(B,)`` of the denoiser's input ``x_t`` at ``t`` (EDM's c_in); default 1.

        Only the network input is scaled: ``step`` and ``target`` see the unscaled ``x_t``.
        """
        import torch

        return torch.ones_like(t)

    @abstractmethod
    def set_timesteps(self, steps: int) -> None:
        """Fill ``timesteps`` for a run of ``steps`` steps; raises ValueError for an unusable count."""

    @abstractmethod
    def step(
        self,
        model_output: torch.Tensor,
        index: int,
        x_t: torch.Tensor,
        prediction_type: PredictionType,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> StepOutput:
        """The state at ``timesteps[index + 1]`` (or t = 0) from ``x_t`` at ``timesteps[index]``.

        ``model_output`` is the denoiser's output of ``prediction_type`` at ``(x_t,
        timesteps[index])``, shaped like ``x_t (B, ...)``; every scheduler takes ``"x0"`` (the one
        sampling loop passes x0 estimates). Returns ``StepOutput(prev_sample, x0)`` shaped like
        ``x_t``. Raises IndexError for an index outside ``timesteps``.
        """

    def check_prediction_type(self, prediction_type: PredictionType) -> None:  # noqa: B027
        """Raise ValueError if this scheduler cannot drive a denoiser predicting ``prediction_type``."""


class DataSource(ABC):
    """Turns native data into samples, and generated tensors back.

    Contract:

    - map-style: ``len(source)`` samples, ``source[i]`` a :class:`Sample` whose ``x`` is a float
      tensor of shape ``sample_shape = (C, *spatial)`` (1-3 spatial dims) in physical units, the
      same sample for the same ``i``; an index outside ``range(len(source))`` raises IndexError;
    - missing values travel as ``Sample.mask`` (shaped like ``x`` or ``(1, *spatial)``), finite
      per-value loss weights >= 0: 0 = missing, 1 = valid; a source may weight valid values
      (fractions, or area weights around 1); missing values are 0 in ``x``; NaN/inf without a
      mask is an error naming the source and the sample, raised at the boundary (construction or
      read), never passed on;
    - ``describe()`` is JSON-serialisable provenance for the model card (with a content hash);
    - ``epoch_order`` is None or a permutation of ``range(len(source))``;
    - ``to_native`` turns generated ``(N, *sample_shape)`` back into the source's native form
      (numpy by default), and ``native_writer`` (optional) writes it resumably;
    - with ``num_classes > 0`` each sample's condition is its class label, an int in
      ``range(num_classes)``.

    :func:`sciddpm.testing.check_component` checks each point.
    """

    sample_shape: tuple[int, ...]
    #: Number of classes when samples carry a class label, else 0.
    num_classes: int = 0
    #: A name per channel ("tas", "DAPI"), for figures and native output; None when unnamed.
    channel_names: Sequence[str] | None = None
    #: The physical unit of each channel ("K", "photons"); None (or a None entry) when unknown.
    channel_units: Sequence[str | None] | None = None
    #: True when the channels are red, green and blue of a colour image (drawn as a composite).
    rgb: bool = False

    @abstractmethod
    def __len__(self) -> int:
        """The number of samples."""

    @abstractmethod
    def __getitem__(self, index: int) -> Sample:
        """Sample ``index``; raises IndexError outside ``range(len(self))``."""

    def __iter__(self) -> Iterator[Sample]:
        """Every sample in index order."""
        return (self[i] for i in range(len(self)))

    def describe(self) -> Mapping[str, Any]:
        """Provenance for the model card: what was read, from where."""
        return {"type": type(self).__name__, "samples": len(self), "sample_shape": list(self.sample_shape)}

    def epoch_order(self, epoch: int, seed: int) -> Sequence[int] | None:
        """The order a trainer visits the indices in ``epoch`` (each once); None: a random permutation.

        Sources whose reads are cheap in groups (chunked zarr) return a seeded chunk-aware shuffle,
        so that neighbouring training positions share a chunk read. Must depend only on the arguments.
        """
        return None

    def to_native(self, x: torch.Tensor) -> np.ndarray | Any:
        """Generated ``(N, *sample_shape)`` in physical units → native form."""
        return x.detach().cpu().numpy()

    def domain_metrics(self) -> Sequence[str | Mapping[str, Any]]:
        """Metrics of the source's domain (names or specs) ``sciddpm evaluate`` scores ensembles with.

        For a conditional model, :func:`~sciddpm.evaluation.ensembles.ensemble_scores` draws an
        ensemble for each of some data samples' conditions and scores it against that sample with
        each of these (climate: CRPS, spread-skill; microscopy: PSNR, SSIM, FRC, coverage), in the
        form :meth:`metric_inputs` gives. Default: none.
        """
        return ()

    def metric_inputs(self, members: torch.Tensor, truth: torch.Tensor, index: int) -> tuple[Any, Any]:
        """Members ``(M, *sample_shape)`` drawn for sample ``index``'s condition and its truth, for metrics.

        ``M`` is 1 for the ensemble mean that non-ensemble metrics score. Both in physical units,
        missing truth values NaN. Default: numpy arrays, one member without its leading axis (so it
        pairs with the truth); a climate source returns xarray Datasets on the sample's grid with
        a ``realization`` dim.
        """
        x = members.detach().cpu().numpy()
        return (x[0] if len(x) == 1 else x), truth.detach().cpu().numpy()

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
    """Compares generated samples with reference data; lower or higher is better as declared.

    ``metric(generated, reference)`` returns a finite float or a mapping of named finite floats,
    the same for the same inputs; a float metric gives generated data that equal the reference (for
    an ensemble metric: members that all equal it) a value at least as good as any other: higher or
    lower as ``higher_is_better`` declares, or, for a metric whose ideal is a value rather than an
    extreme (a bias: 0, a spread-skill ratio: 1), as close to its declared ``target``. Inputs of
    the wrong shape raise ValueError naming both shapes. :func:`sciddpm.testing.check_component`
    checks each point, given example inputs.
    """

    higher_is_better: bool = False
    #: True: ``metric(members, truth)`` scores an ensemble ``(M, *sample)`` drawn for one condition
    #: against that condition's truth (CRPS, interval coverage); ``sciddpm evaluate`` gives the
    #: other domain metrics the ensemble mean instead, both through ``DataSource.metric_inputs``.
    ensemble: bool = False
    #: The ideal value when it is not an extreme (bias 0, spread-skill ratio 1): closer is better,
    #: and ``higher_is_better`` is ignored. None: the declared direction holds.
    target: float | None = None

    @abstractmethod
    def __call__(self, generated: Any, reference: Any) -> float | Mapping[str, float]:
        """The score of ``generated`` against ``reference`` (their meaning is the metric's own)."""
