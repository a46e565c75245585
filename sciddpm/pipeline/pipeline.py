"""A diffusion pipeline: encoder, denoiser, conditioner and scheduler composed.

``Pipeline.from_config`` sizes the components from the data (channels, spatial dims, number of
classes, conditioning widths) and fits the encoder; ``sample`` returns samples in physical units,
through the one sampling loop (:func:`sciddpm.diffusion.loop.run`) and the one denoiser wrapper
(:class:`~sciddpm.diffusion.preconditioning.Preconditioned`); ``save``/``load`` write and read a
directory of JSON and safetensors (:mod:`sciddpm.persistence`), so loading never unpickles.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sciddpm import persistence, seeding
from sciddpm.config import (
    ComponentSpec,
    ConfigError,
    PipelineConfig,
    saved_pipeline_config,
    validate_pipeline,
)
from sciddpm.data.batching import spread_indices
from sciddpm.diffusion.gaussian import GaussianStart, initial_x
from sciddpm.diffusion.loop import Callback, run
from sciddpm.diffusion.preconditioning import Preconditioned, check_guidance_interval
from sciddpm.diffusion.scheduler_configs import VP_FIELDS
from sciddpm.interfaces import Conditioner, DataSource, Denoiser, Encoder, NativeWriter, Scheduler
from sciddpm.pipeline.card import model_card
from sciddpm.pipeline.diffusers_io import DiffusersIO
from sciddpm.pipeline.schedules import Schedules
from sciddpm.pipeline.sizing import check_denoiser, complete_spec
from sciddpm.progress import progress_bar
from sciddpm.registry import Registry, get_registry

__all__ = [
    "CONFIG_FILE",
    "EMA_FILE",
    "WEIGHTS_FILE",
    "Pipeline",
    "complete_spec",
    "estimate_sigma_data",
    "is_per_sample",
]

CONFIG_FILE = "pipeline.json"
WEIGHTS_FILE = "weights.safetensors"
EMA_FILE = "ema.safetensors"
CARD_FILE = "README.md"

# Denoiser config fields the pipeline fills in from the data and the conditioner.
_FROM_CONDITIONER = ("vector_dim", "token_dim", "concat_channels")


def _encoded(
    encoder: Encoder, source: DataSource, indices: Sequence[int]
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(z, weight)`` per batch of 64 of ``indices``: the encoded samples (float64) and their mask.

    The weight is the sample mask expanded to ``z`` (1 where there is none, or where a latent
    encoder changed the shape, since its latents have no mask).
    """
    for start in range(0, len(indices), 64):
        samples = [source[i] for i in indices[start : start + 64]]
        z = encoder.encode(torch.stack([sample.x for sample in samples]).float()).double()
        weight = torch.ones_like(z)
        masks = [sample.mask for sample in samples]
        if all(m is not None for m in masks):
            stacked = torch.stack(masks).to(z)
            if stacked.shape[2:] == z.shape[2:] and stacked.shape[1] in (1, z.shape[1]):
                weight = stacked.expand_as(z)
        yield z, weight


@torch.no_grad()
def estimate_sigma_data(encoder: Encoder, source: DataSource, max_samples: int = 512) -> float:
    """Std of the encoded data over ``max_samples`` samples spread over ``source``: EDM's sigma_data.

    Missing values (``mask`` 0) are left out; masks with fractions weight their elements. Raises
    ValueError when no value is valid or the std is 0.
    """
    total = total_sq = count = 0.0
    for z, weight in _encoded(encoder, source, spread_indices(len(source), max_samples)):
        total += (weight * z).sum().item()
        total_sq += (weight * z**2).sum().item()
        count += weight.sum().item()
    if count == 0:
        raise ValueError("sigma_data='auto' found no valid data values to estimate the data std from")
    mean = total / count
    std = max(total_sq / count - mean**2, 0.0) ** 0.5
    if not std > 0:
        raise ValueError("sigma_data='auto' estimated a data std of 0; give sigma_data as a number")
    return std


class Pipeline(nn.Module, DiffusersIO):
    """Encoder + denoiser + conditioner + scheduler, with EMA weights for sampling.

    The components must be ``torch.nn.Module`` s (except the scheduler), so their state travels in
    the pipeline's state dict; raises TypeError otherwise. ``data_shape`` is one sample's shape
    ``(C, *spatial)`` in data space; ``latent_shape`` is the encoder's model-space shape for it.
    Build one with :meth:`from_config` (sized from the data) or :meth:`load`.
    """

    def __init__(
        self,
        encoder: Encoder,
        denoiser: Denoiser,
        conditioner: Conditioner,
        scheduler: Scheduler,
        *,
        config: PipelineConfig,
        data_shape: Sequence[int],
    ) -> None:
        super().__init__()
        for role, part in (("encoder", encoder), ("denoiser", denoiser), ("conditioner", conditioner)):
            if not isinstance(part, nn.Module):
                raise TypeError(
                    f"the {role} must subclass torch.nn.Module (its state is saved with the pipeline), "
                    f"got {type(part).__name__}"
                )
        self.encoder = encoder
        self.denoiser = denoiser
        self.conditioner = conditioner
        self.scheduler = scheduler
        self.config = config
        self.data_shape = tuple(int(s) for s in data_shape)
        self.latent_shape = tuple(encoder.latent_shape(self.data_shape))
        # EMA copy of what training updates (Polyak averaging; sampled by default).
        self.ema = copy.deepcopy(self.trainable).requires_grad_(False)
        #: Sampling schedules fitted to this model (optimize_timesteps), saved with it.
        self.schedules = Schedules()

    @property
    def trainable(self) -> nn.ModuleDict:
        """The modules the diffusion trainer optimises: denoiser and conditioner."""
        return nn.ModuleDict({"denoiser": self.denoiser, "conditioner": self.conditioner})

    def preconditioned(self, use_ema: bool = True, scheduler: Scheduler | None = None) -> Preconditioned:
        """The network (EMA or live weights) as the denoiser of the trained scheduler's process.

        With a sampling ``scheduler``, it is called with that scheduler's times (mapped to the trained
        process through their noise level; see :class:`~sciddpm.diffusion.preconditioning.Preconditioned`).
        """
        modules = self.ema if use_ema else self.trainable
        times = None if scheduler is None else scheduler.process
        return Preconditioned(modules["denoiser"], self.scheduler, self.denoiser.prediction_type, times=times)

    # ------------------------------------------------------------------ building

    @classmethod
    def from_config(
        cls,
        config: PipelineConfig | Mapping[str, Any],
        source: DataSource | None = None,
        *,
        data_shape: Sequence[int] | None = None,
        num_classes: int | None = None,
        fit: bool = True,
        registry: Registry | None = None,
    ) -> Pipeline:
        """Build the components, sized from ``source`` (or ``data_shape``/``num_classes``).

        The encoder is fitted on ``source`` when ``fit`` is true. The stored
        config holds the filled-in values, so a saved pipeline rebuilds alone.
        """
        registry = registry or get_registry()
        config = config if isinstance(config, PipelineConfig) else PipelineConfig.model_validate(config)
        if source is not None:
            data_shape = tuple(source.sample_shape)
            num_classes = num_classes or getattr(source, "num_classes", 0) or None
        if data_shape is None:
            raise ValueError("Pipeline.from_config needs a data source or data_shape=(C, *spatial)")
        if not 2 <= len(data_shape) <= 4:
            raise ValueError(
                f"data_shape {tuple(data_shape)} must be (C, *spatial) with 1, 2 or 3 spatial dims"
            )

        specs = {name: ComponentSpec.coerce(getattr(config, name)) for name in PipelineConfig.model_fields}
        # A network encoder (the VAE) is sized from the data, as the denoiser is from the latents.
        specs["encoder"] = complete_spec(
            registry, "encoder", specs["encoder"], {"dims": len(data_shape) - 1, "in_channels": data_shape[0]}
        )
        encoder = registry.build("encoder", specs["encoder"])
        if fit and source is not None:
            encoder.fit(source)
        latent = tuple(encoder.latent_shape(tuple(data_shape)))

        specs["conditioner"] = complete_spec(
            registry,
            "conditioner",
            specs["conditioner"],
            {"num_classes": num_classes, "data_shape": [int(s) for s in data_shape]},
        )
        conditioner = registry.build("conditioner", specs["conditioner"])
        if fit and source is not None:
            conditioner.fit(source)  # e.g. CLIP's contrastive stage, before the EMA copy is taken

        wanted: dict[str, Any] = {"dims": len(latent) - 1, "in_channels": latent[0]}
        wanted.update({name: getattr(conditioner, name, 0) for name in _FROM_CONDITIONER})
        specs["denoiser"] = complete_spec(registry, "denoiser", specs["denoiser"], wanted)
        denoiser = registry.build("denoiser", specs["denoiser"])
        check_denoiser(denoiser, latent)
        try:
            denoiser.init_conditioner(conditioner)  # e.g. a pretrained class embedding
        except ValueError as exc:
            raise ConfigError([("pipeline.conditioner", str(exc))]) from None

        if specs["scheduler"].params.get("sigma_data") == "auto":
            if source is None:
                raise ConfigError(
                    [("pipeline.scheduler.sigma_data", "'auto' needs the data source; give a number instead")]
                )
            params = {**specs["scheduler"].params, "sigma_data": estimate_sigma_data(encoder, source)}
            specs["scheduler"] = ComponentSpec(type=specs["scheduler"].type, **params)
        scheduler = registry.build("scheduler", specs["scheduler"])
        try:
            scheduler.check_prediction_type(denoiser.prediction_type)
        except ValueError as exc:
            raise ConfigError([("pipeline.scheduler", str(exc))]) from None
        # Validated again so the stored config has every default filled in, as a loaded one has.
        resolved = validate_pipeline(PipelineConfig(**specs).model_dump(mode="json"), registry)
        return cls(encoder, denoiser, conditioner, scheduler, config=resolved, data_shape=data_shape)

    # ------------------------------------------------------------------ sampling

    def scheduler_for(self, scheduler: str | Mapping[str, Any] | Scheduler | None) -> Scheduler:
        """A sampling scheduler on the noise process the model was trained with.

        A name or spec inherits the training scheduler's process parameters (schedule,
        zero_terminal_snr, train_steps, ...) unless it sets them; None is the training scheduler. A
        scheduler may change the process' parameters (EDM's ``rho``, a VP schedule): the network
        then sees each time's noise level as it was trained to. Raises ValueError for a scheduler
        on another process family (VP, VE, EDM, flow) than the trained one.
        """
        if scheduler is None:
            return self.scheduler
        if not isinstance(scheduler, Scheduler):
            spec = self.scheduler_spec(scheduler)
            scheduler = get_registry().build("scheduler", spec.pop("type"), **spec)
        trained = self.scheduler.process
        if scheduler.process.kind != trained.kind:
            raise ValueError(
                f"the scheduler runs the {scheduler.process.kind!r} process, but this model was trained on "
                f"{trained.kind!r}; sample on {trained.kind!r} (give the scheduler by name to inherit it)"
            )
        return scheduler

    def scheduler_spec(self, scheduler: str | Mapping[str, Any]) -> dict[str, Any]:
        """``scheduler`` (a name or spec) as a full spec with the trained process parameters filled in.

        Raises ValueError when the scheduler cannot run the trained process (ddpm/ddim are VP only).
        """
        spec = ComponentSpec.coerce(scheduler)
        fields = get_registry().get("scheduler", spec.type).config_class().model_fields
        trained = self.config.scheduler.params
        process = trained.get("process", "vp")
        if process != "vp" and "process" not in fields:
            raise ValueError(
                f"scheduler {spec.type!r} only runs the VP process, but this model was trained with "
                f"process={process!r}; use a solver scheduler such as 'dpmpp_2m', 'unipc' or 'heun'"
            )
        # The VP schedule is not inherited onto another process than the trained one: it would be
        # refused there, and scheduler_for then refuses the scheduler naming both processes.
        other = spec.params.get("process", process) not in (process, "vp")
        inherited = {
            k: v for k, v in trained.items() if k in fields and k != "eta" and not (other and k in VP_FIELDS)
        }
        return {"type": spec.type, **inherited, **spec.params}

    def denoiser_fn(
        self,
        condition: Any = None,
        *,
        guidance_scale: float = 1.0,
        guidance_interval: tuple[float, float] | None = None,
        use_ema: bool = True,
        scheduler: Scheduler | None = None,
        grad: bool = False,
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The model as ``D(x_t, t) -> x0`` with conditioning and guidance, as :meth:`sample` evaluates it.

        ``condition`` is one raw condition for every row (None: unconditional), ``guidance_scale``
        and ``guidance_interval`` as in :meth:`sample`. ``x_t`` is ``(B, *latent_shape)`` in model
        space and ``t`` a ``(B,)`` tensor of times of ``scheduler``'s process (default: the trained
        one). Give it to :func:`~sciddpm.diffusion.loop.sample_callable` or
        :func:`~sciddpm.diffusion.timesteps.optimize_timesteps` with ``prediction_type="x0"`` and a
        scheduler on that process: ``pipe.scheduler_spec("heun")`` gives one. It runs under
        ``torch.no_grad`` unless ``grad``: then it is differentiable in ``x_t`` and ``t`` (gradient
        schedule fitting; the condition is embedded without gradients). Raises ValueError
        for a bad guidance interval or a scheduler on another process family.
        """
        interval = check_guidance_interval(guidance_interval)
        modules = self.ema if use_ema else self.trainable
        conditioner = modules["conditioner"]
        denoise = self.preconditioned(use_ema, self.scheduler_for(scheduler))
        guided = condition is not None and guidance_scale != 1.0
        cache: dict[int, tuple[Any, Any]] = {}

        def model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            n = len(x_t)
            if n not in cache:
                with torch.no_grad():
                    cond = conditioner(condition, n) if condition is not None else conditioner.null(n)
                    cache[n] = (cond, conditioner.null(n) if guided else None)
            cond, null = cache[n]
            with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
                return denoise(
                    x_t, t, cond, null=null, guidance_scale=guidance_scale, guidance_interval=interval
                )

        return model

    @torch.no_grad()
    def gaussian_start(self, source: DataSource, n: int = 2000, rank: int | None = None) -> GaussianStart:
        """The :class:`~sciddpm.diffusion.gaussian.GaussianStart` of ``source`` in the model space.

        Encodes ``n`` samples spread over the source, 64 at a time, with missing values (mask 0)
        as 0 as in training, and fits their mean and covariance (``rank``: see
        :meth:`GaussianStart.fit`). Give it as ``start=`` to :meth:`optimize_timesteps` and
        :meth:`sample`. The fit's sampling error stays in the start (the correction cannot tell a
        mean error from the model's own residual), so give as many samples as memory allows: the
        fit holds ``n`` encoded samples in float64 two to three times over (data, centred copy, SVD).
        Raises ValueError for ``n < 2``.
        """
        if n < 2:
            raise ValueError(f"n must be >= 2 samples to fit a mean and covariance, got {n}")
        batches = _encoded(self.encoder, source, spread_indices(len(source), n))
        encoded = [torch.where(weight > 0, z, torch.zeros_like(z)) for z, weight in batches]
        return GaussianStart.fit(torch.cat(encoded), rank=rank)

    def optimize_timesteps(
        self,
        steps: int = 10,
        scheduler: str | Mapping[str, Any] = "unipc",
        *,
        condition: Any = None,
        guidance_scale: float = 1.0,
        n: int = 64,
        **options: Any,
    ) -> Any:
        """Sampling times of ``scheduler`` optimised for this model at ``steps``, kept in ``schedules``.

        See :mod:`sciddpm.diffusion.timesteps`.

        Returns an :class:`~sciddpm.diffusion.timesteps.OptimizedSteps`, also kept in
        :attr:`schedules` (saved with the pipeline); sample with ``pipe.sample(k, steps=steps,
        scheduler="fitted")``, or ``scheduler=result.scheduler, start=result.start`` (``start`` is
        None unless a :class:`~sciddpm.diffusion.gaussian.GaussianStart` was given).
        ``options`` go to :func:`~sciddpm.diffusion.timesteps.optimize_timesteps` (``seed``,
        ``reference_steps``, ``iterations``, ``start``, ``max_seconds``, ...), whose errors it
        raises. The network is differentiated in its input and time, not its weights.
        """
        from sciddpm.diffusion.timesteps import optimize_timesteps

        spec = self.scheduler_spec(scheduler)
        if "lower_order_uneven" not in ComponentSpec.coerce(scheduler).params:
            spec.pop("lower_order_uneven", None)  # the training config's default: the fit decides
        model = self.denoiser_fn(
            condition, guidance_scale=guidance_scale, scheduler=self.scheduler_for(spec), grad=True
        )
        # A backward pass keeps every evaluation's activations: 16 samples at a time bound that.
        options.setdefault("batch_size", 16)
        result = optimize_timesteps(model, self.latent_shape, spec, steps, "x0", n=n, **options)
        self.schedules.add(result, condition=condition, guidance_scale=guidance_scale)
        return result

    @torch.no_grad()
    def sample(
        self,
        n: int,
        condition: Any = None,
        *,
        steps: int = 50,
        scheduler: str | Mapping[str, Any] | Scheduler | None = None,
        guidance_scale: float = 1.0,
        guidance_interval: tuple[float, float] | None = None,
        seed: int = 0,
        first: int = 0,
        batch_size: int = 64,
        use_ema: bool = True,
        progress: bool = False,
        callback: Callback | None = None,
        start: GaussianStart | None = None,
    ) -> torch.Tensor:
        """Draw ``n`` samples ``(n, *data_shape)`` in physical units, float32 on the CPU.

        ``condition`` is one raw condition for all samples or a sequence of ``n`` of them (None:
        unconditional). ``guidance_scale`` != 1 applies classifier-free guidance (Ho & Salimans
        2022) with the conditioner's null condition. ``guidance_interval``
        ``(lo, hi)`` applies it only at steps whose noise level ``sigma / alpha``
        lies in ``[lo, hi]`` and evaluates the conditional model alone elsewhere,
        saving one evaluation per step (Kynkäänniemi et al. 2024). Sample ``i``
        depends only on ``seed`` and ``i``, not on ``batch_size`` or device; ``first``
        draws samples ``first .. first + n - 1`` of the seeded run (to continue one).
        ``callback(step, x_t, x0)`` sees the x0 estimate at every step. ``start`` (a
        :class:`~sciddpm.diffusion.gaussian.GaussianStart` fitted on model-space data) carries the noise
        analytically from t = 1 to the first time, as an optimised schedule with ``start`` expects,
        and the first evaluation corrects it. ``scheduler="fitted"`` samples with the best of
        :attr:`schedules` for ``steps`` (and its start). Raises ValueError for ``n``, ``first``,
        ``steps`` or ``guidance_scale`` out of range, a bad guidance interval, a wrong number of
        conditions, or no fitted schedule for ``steps``.
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if first < 0:
            raise ValueError(f"first must be >= 0, got {first}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}")
        check_guidance_interval(guidance_interval)
        per_sample = is_per_sample(condition, n)
        scheduler, start = self.schedules.resolve(
            scheduler, steps, start, None if per_sample else condition, guidance_scale
        )
        sched = self.scheduler_for(scheduler)
        sched.set_timesteps(steps)
        device = next(self.denoiser.parameters()).device
        outputs = []
        chunks = range(0, n, batch_size)
        with progress_bar(
            len(chunks) * len(sched.timesteps), "sampling", progress, unit="evaluation", leave=False
        ) as bar:  # closed on an error too: a bar left open garbles the notebook's next output
            for offset in chunks:
                count = min(batch_size, n - offset)
                raw = condition[offset : offset + count] if per_sample else condition
                indices = range(first + offset, first + offset + count)
                noise = seeding.noise_for(self.latent_shape, seed, indices.start, count).to(device)
                denoise = self.denoiser_fn(
                    raw,
                    guidance_scale=guidance_scale,
                    guidance_interval=guidance_interval,
                    use_ema=use_ema,
                    scheduler=sched,
                )
                x = initial_x(start, sched, noise)
                x = run(
                    denoise,
                    sched,
                    x,
                    seed=seed,
                    indices=indices,
                    start=start,
                    callback=callback,
                    progress=bar,
                )
                # A latent encoder pads sizes its downsampling cannot represent; keep the data's extent.
                decoded = self.encoder.decode(x)[(..., *(slice(0, n) for n in self.data_shape[1:]))]
                outputs.append(decoded.float().cpu())
        return torch.cat(outputs)

    def sample_into(
        self, writer: NativeWriter, n: int, condition: Any = None, *, chunk: int = 8, **options: Any
    ) -> list[int]:
        """Draw samples ``0 .. n-1`` into ``writer``, skipping those it has already written completely.

        Samples are drawn and written ``chunk`` at a time, so an interrupted run loses at most one
        chunk; rerun with the same arguments to continue. Because sample ``i`` depends only on
        ``(seed, i)``, the result equals an uninterrupted run. ``condition`` is one condition for
        all samples or ``n`` of them; ``options`` go to :meth:`sample` (``steps``, ``seed``, ...).
        Returns the indices drawn by this call. Raises ValueError for ``n`` or ``chunk`` below 1.
        """
        if n < 1 or chunk < 1:
            raise ValueError(f"n and chunk must be >= 1, got n={n}, chunk={chunk}")
        per_sample = is_per_sample(condition, n)
        done = writer.completed()
        todo = [i for i in range(n) if i not in done]
        drawn: list[int] = []
        while todo:
            # A run of consecutive missing indices, at most `chunk` long.
            run = [todo.pop(0)]
            while todo and len(run) < chunk and todo[0] == run[-1] + 1:
                run.append(todo.pop(0))
            raw = condition[run[0] : run[-1] + 1] if per_sample else condition
            writer.write(run[0], self.sample(len(run), raw, first=run[0], **options))
            drawn += run
        return drawn

    def evaluate(
        self,
        reference: Any,
        n: int = 256,
        condition: Any = None,
        *,
        training: Any = None,
        metrics: Sequence[str | Mapping[str, Any]] | None = None,
        bootstrap: int = 50,
        progress: bool = False,
        **sample_options: Any,
    ) -> dict[str, Any]:
        """Draw ``n`` samples and score them against ``reference`` ``(N, C, *spatial)``; the report.

        ``condition`` and ``sample_options`` (``steps``, ``scheduler``, ``guidance_scale``, ``seed``)
        go to :meth:`sample`; ``metrics``, ``training`` (the memorisation check) and ``bootstrap``
        to :func:`sciddpm.evaluation.report.evaluate`, which documents the report and its errors.
        The report's ``provenance`` marks the samples synthetic with the sampling settings.
        """
        from sciddpm.evaluation.report import DEFAULT_METRICS
        from sciddpm.evaluation.report import evaluate as score
        from sciddpm.provenance import record

        samples = self.sample(n, condition, progress=progress, **sample_options)
        report = score(
            samples, reference, metrics=metrics or DEFAULT_METRICS, training=training, bootstrap=bootstrap,
            progress=progress,
        )  # fmt: skip
        settings = {k: v for k, v in sample_options.items() if isinstance(v, (int, float, str))}
        report["provenance"] = record(None, n=n, **settings)
        return report

    # ------------------------------------------------------------------ persistence

    def save(self, directory: str | Path, card: Mapping[str, Any] | None = None) -> Path:
        """Write the model card, the weights and EMA weights and ``pipeline.json``; returns ``directory``.

        ``card`` holds the model card's information (data provenance, seed, licence, training
        figures; see :func:`~sciddpm.pipeline.card.model_card`). Every file is written atomically,
        ``pipeline.json`` last (:func:`sciddpm.persistence.save`), so a directory holding it is complete.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {
            "data_shape": list(self.data_shape),
            "prediction_type": self.denoiser.prediction_type,
            "pipeline": self.config.model_dump(mode="json"),
            "schedules": self._save_schedules(directory),
        }
        stamped = {"format": persistence.FORMAT_VERSION, **persistence.versions(), **meta}
        text = model_card(stamped, card or {})
        persistence.write_atomic(directory / CARD_FILE, lambda p: Path(p).write_text(text, encoding="utf-8"))
        tensors = {WEIGHTS_FILE: self.state_dict_no_ema(), EMA_FILE: self.ema.state_dict()}
        return persistence.save(directory, CONFIG_FILE, meta, tensors)

    def _save_schedules(self, directory: Path) -> list[dict[str, Any]]:
        # pipeline.json goes first, so a save cut short never pairs an old one with a new start.
        (directory / CONFIG_FILE).unlink(missing_ok=True)
        return self.schedules.save(directory)

    def state_dict_no_ema(self) -> dict[str, torch.Tensor]:
        """Encoder, denoiser and conditioner state, without the EMA copy."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("ema.")}

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> Pipeline:
        """Rebuild a pipeline written by :meth:`save` (JSON + safetensors, nothing unpickled), in eval mode.

        Raises FileNotFoundError when a file is missing, ConfigError for an unreadable or invalid
        config, and ValueError naming the file and tensor when a tensor is missing or misshapen.
        """
        directory = Path(directory)
        try:
            meta = persistence.read_meta(directory, CONFIG_FILE, "pipeline")
        except ValueError as exc:
            raise ConfigError([("format" if "has format" in str(exc) else "", str(exc))]) from None
        config_path = directory / CONFIG_FILE
        if not isinstance(meta.get("pipeline"), Mapping):
            raise ConfigError([("pipeline", f"{config_path} has no 'pipeline' section")])
        config = validate_pipeline(saved_pipeline_config(meta["pipeline"]), where=str(config_path))
        with persistence.saved_weights_follow():  # pretrained folders named in the config are not read
            pipe = cls.from_config(config, data_shape=meta["data_shape"], fit=False)
        weights = persistence.read_tensors(directory / WEIGHTS_FILE, pipe.state_dict_no_ema(), "pipeline")
        ema = persistence.read_tensors(directory / EMA_FILE, pipe.ema.state_dict(), "pipeline")
        pipe.load_state_dict({**weights, **{f"ema.{k}": v for k, v in ema.items()}})
        pipe.schedules = Schedules.load(directory, meta.get("schedules", []))
        return pipe.to(device).eval()


def is_per_sample(condition: Any, n: int) -> bool:
    """Whether ``condition`` is ``n`` conditions, one per sample, rather than one for all of them.

    Strings, numbers and mappings (e.g. ``{"static": field, "time": features}``) are one structured
    condition; a sequence or tensor of length ``n`` is one per sample. Raises ValueError for a
    sequence of another length.
    """
    if condition is None or isinstance(condition, (str, bytes, int, float, Mapping)):
        return False
    try:
        length = len(condition)
    except TypeError:
        return False
    if length != n:
        raise ValueError(f"got {length} conditions for n={n} samples; give one condition or n of them")
    return True
