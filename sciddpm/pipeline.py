"""A diffusion pipeline: encoder, denoiser, conditioner and scheduler composed.

``Pipeline.from_config`` sizes the components from the data (channels,
spatial dims, number of classes, conditioning widths) and fits the encoder;
``sample`` returns samples in physical units; ``save``/``load`` write and read
a directory of JSON and safetensors only, so loading never unpickles.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sciddpm.config import ComponentSpec, ConfigError, PipelineConfig, validate_pipeline
from sciddpm.gaussian import GaussianStart, correct_first, initial_x
from sciddpm.interfaces import Conditioner, DataSource, Denoiser, Encoder, NativeWriter, Scheduler
from sciddpm.registry import Registry, get_registry

__all__ = ["FORMAT_VERSION", "Pipeline", "estimate_sigma_data", "noise_for"]

#: Version of the saved-directory layout written by :meth:`Pipeline.save`.
FORMAT_VERSION = 1
CONFIG_FILE = "pipeline.json"
WEIGHTS_FILE = "weights.safetensors"
EMA_FILE = "ema.safetensors"
CARD_FILE = "README.md"

# Denoiser config fields the pipeline fills in from the data and the conditioner.
_FROM_CONDITIONER = ("vector_dim", "token_dim", "concat_channels")


def noise_for(shape: Sequence[int], seed: int, start: int, count: int) -> torch.Tensor:
    """Gaussian noise for samples ``start .. start+count-1`` of a seeded run.

    Each sample has its own CPU generator derived from ``(seed, index)``, so a
    sample's noise does not depend on batch size or device.
    """
    out = torch.empty((count, *shape))
    for row, index in enumerate(range(start, start + count)):
        out[row] = torch.randn(
            tuple(shape), generator=torch.Generator().manual_seed(_child_seed(seed, index))
        )
    return out


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

    Missing values (``mask`` 0) are left out; masks with fractions weight their elements.
    """
    from sciddpm.data import spread_indices

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


def _child_seed(*key: int) -> int:
    """A 63-bit seed for the stream ``key`` (e.g. ``(seed, sample index)``), by numpy's SeedSequence."""
    return int(np.random.SeedSequence(list(key)).generate_state(1, dtype=np.uint64)[0] >> 1)


class Pipeline(nn.Module):
    """Encoder + denoiser + conditioner + scheduler, with EMA weights for sampling."""

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

    @property
    def trainable(self) -> nn.ModuleDict:
        """The modules the diffusion trainer optimises: denoiser and conditioner."""
        return nn.ModuleDict({"denoiser": self.denoiser, "conditioner": self.conditioner})

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
        specs["encoder"] = _fill(
            registry, "encoder", specs["encoder"], {"dims": len(data_shape) - 1, "in_channels": data_shape[0]}
        )
        encoder = registry.build("encoder", specs["encoder"])
        if fit and source is not None:
            encoder.fit(source)
        latent = tuple(encoder.latent_shape(tuple(data_shape)))

        specs["conditioner"] = _fill(
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
        specs["denoiser"] = _fill(registry, "denoiser", specs["denoiser"], wanted)
        denoiser = registry.build("denoiser", specs["denoiser"])
        _check_denoiser(denoiser, latent)

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

        A name or spec inherits the training scheduler's process parameters
        (schedule, zero_terminal_snr, train_steps, ...) unless it sets them.
        """
        if scheduler is None:
            return self.scheduler
        if isinstance(scheduler, Scheduler):
            return scheduler
        spec = self.scheduler_spec(scheduler)
        return get_registry().build("scheduler", spec.pop("type"), **spec)

    def scheduler_spec(self, scheduler: str | Mapping[str, Any]) -> dict[str, Any]:
        """``scheduler`` (a name or spec) as a full spec with the trained process parameters filled in."""
        spec = ComponentSpec.coerce(scheduler)
        fields = get_registry().get("scheduler", spec.type).config_class().model_fields
        trained = self.config.scheduler.params
        process = trained.get("process", "vp")
        if process != "vp" and "process" not in fields:
            raise ValueError(
                f"scheduler {spec.type!r} only runs the VP process, but this model was trained with "
                f"process={process!r}; use a solver scheduler such as 'dpmpp_2m', 'unipc' or 'heun'"
            )
        inherited = {k: v for k, v in trained.items() if k in fields and k != "eta"}
        return {"type": spec.type, **inherited, **spec.params}

    def model_fn(
        self, condition: Any = None, *, guidance_scale: float = 1.0, use_ema: bool = True
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The network as ``model(x_t, t) -> prediction`` on the trained process, as ``sample`` calls it.

        For :func:`~sciddpm.sampling.sample_callable` and :func:`~sciddpm.steps.optimize_timesteps`.
        ``condition`` is one raw condition for every row (None = unconditional); ``guidance_scale``
        != 1 returns the guided prediction. ``x_t`` is in model (latent) space.
        """
        modules = self.ema if use_ema else self.trainable
        denoiser, conditioner = modules["denoiser"], modules["conditioner"]
        sched = self.scheduler

        @torch.no_grad()
        def model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            n = len(x_t)
            if condition is None:
                return _predict(denoiser, sched, x_t, t, conditioner.null(n))
            cond = conditioner(condition, n)
            if guidance_scale == 1.0:
                return _predict(denoiser, sched, x_t, t, cond)
            pair = _cat_conditioning(conditioner.null(n), cond)
            return _predict(denoiser, sched, x_t, t, pair, guidance_scale)

        return model

    @torch.no_grad()
    def gaussian_start(self, source: DataSource, n: int = 2000, rank: int | None = None) -> GaussianStart:
        """The :class:`~sciddpm.gaussian.GaussianStart` of ``source`` in this pipeline's model space.

        Encodes ``n`` samples spread over the source, 64 at a time, with missing values (mask 0)
        as 0 as in training, and fits their mean and covariance (``rank``: see
        :meth:`GaussianStart.fit`). Give it as ``start=`` to :meth:`optimize_timesteps` and
        :meth:`sample`. The fit's sampling error stays in the start (the correction cannot tell a
        mean error from the model's own residual), so give as many samples as memory allows: the
        fit holds ``n`` encoded samples in float64 two to three times over (data, centred copy, SVD).
        """
        from sciddpm.data import spread_indices

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
        """Sampling times of ``scheduler`` optimised for this model at ``steps`` (see :mod:`sciddpm.steps`).

        Returns an :class:`~sciddpm.steps.OptimizedSteps`; sample with
        ``pipe.sample(k, steps=steps, scheduler=result.scheduler, start=result.start)``
        (``start`` is None unless a :class:`~sciddpm.gaussian.GaussianStart` was given). ``options`` go to
        :func:`~sciddpm.steps.optimize_timesteps` (``seed``, ``reference_steps``, ``max_evaluations``).
        """
        from sciddpm.steps import optimize_timesteps

        model = self.model_fn(condition, guidance_scale=guidance_scale)
        spec = self.scheduler_spec(scheduler)
        return optimize_timesteps(
            model, self.latent_shape, spec, steps, self.denoiser.prediction_type, n=n, **options
        )

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
        callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
        start: GaussianStart | None = None,
    ) -> torch.Tensor:
        """Draw ``n`` samples ``(n, *data_shape)`` in physical units, on the CPU.

        ``condition`` is one raw condition for all samples or a sequence of
        ``n``; ``guidance_scale`` > 1 applies classifier-free guidance (Ho &
        Salimans 2022) against the conditioner's null condition. ``guidance_interval``
        ``(lo, hi)`` applies it only at steps whose noise level ``sigma / alpha``
        lies in ``[lo, hi]`` and evaluates the conditional model alone elsewhere,
        saving one evaluation per step (Kynkäänniemi et al. 2024). Sample ``i``
        depends only on ``seed`` and ``i``, not on ``batch_size`` or device; ``first``
        draws samples ``first .. first + n - 1`` of the seeded run (to continue one).
        ``callback(step, x_t, x0)`` sees the x0 estimate at every step. ``start`` (a
        :class:`~sciddpm.gaussian.GaussianStart` fitted on model-space data) carries the noise
        analytically from t = 1 to the first time, as an optimised schedule with ``start`` expects,
        and the first evaluation corrects it (:meth:`~sciddpm.gaussian.GaussianStart.correct`).
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if first < 0:
            raise ValueError(f"first must be >= 0, got {first}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}")
        per_sample = _is_per_sample(condition, n)
        sched = self.scheduler_for(scheduler)
        sched.set_timesteps(steps)
        guided_at = _guided_steps(sched, guidance_interval, guidance_scale != 1.0 and condition is not None)
        modules = self.ema if use_ema else self.trainable
        denoiser, conditioner = modules["denoiser"], modules["conditioner"]
        device = next(self.denoiser.parameters()).device
        outputs = []
        chunks = range(0, n, batch_size)
        bar = _progress(len(chunks) * len(sched.timesteps), progress)
        for offset in chunks:
            count = min(batch_size, n - offset)
            raw = condition[offset : offset + count] if per_sample else condition
            noise = noise_for(self.latent_shape, seed, first + offset, count).to(device)
            x = initial_x(start, sched, noise)
            cond = conditioner(raw, count) if condition is not None else conditioner.null(count)
            pair = _cat_conditioning(conditioner.null(count), cond) if any(guided_at) else None
            generators = [
                torch.Generator().manual_seed(_child_seed(seed, i, 1))
                for i in range(first + offset, first + offset + count)
            ]
            for i, t in enumerate(sched.timesteps):
                t_batch = torch.full((count,), float(t), device=device)
                if guided_at[i]:
                    out = _predict(denoiser, sched, x, t_batch, pair, guidance_scale)
                else:
                    out = _predict(denoiser, sched, x, t_batch, cond)
                if i == 0 and start is not None:
                    x, out = correct_first(start, sched, x, out, self.denoiser.prediction_type)
                noise = None
                if sched.stochastic:
                    noise = torch.stack([torch.randn(x.shape[1:], generator=g) for g in generators]).to(x)
                result = sched.step(out, i, x, self.denoiser.prediction_type, noise=noise)
                x = result.prev_sample
                if callback is not None:
                    callback(i, x, result.x0)
                bar.update(1)
            # A latent encoder pads sizes its downsampling cannot represent; keep the data's extent.
            decoded = self.encoder.decode(x)[(..., *(slice(0, n) for n in self.data_shape[1:]))]
            outputs.append(decoded.float().cpu())
        bar.close()
        return torch.cat(outputs)

    def sample_into(
        self, writer: NativeWriter, n: int, condition: Any = None, *, chunk: int = 8, **options: Any
    ) -> list[int]:
        """Draw samples ``0 .. n-1`` into ``writer``, skipping those it has already written completely.

        Samples are drawn and written ``chunk`` at a time, so an interrupted run loses at most one
        chunk; rerun with the same arguments to continue. Because sample ``i`` depends only on
        ``(seed, i)``, the result equals an uninterrupted run. ``condition`` is one condition for
        all samples or ``n`` of them; ``options`` go to :meth:`sample` (``steps``, ``seed``, ...).
        Returns the indices drawn by this call.
        """
        if n < 1 or chunk < 1:
            raise ValueError(f"n and chunk must be >= 1, got n={n}, chunk={chunk}")
        per_sample = _is_per_sample(condition, n)
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

    # ------------------------------------------------------------------ persistence

    def save(self, directory: str | Path, card: Mapping[str, Any] | None = None) -> Path:
        """Write config JSON, weights and EMA weights (safetensors) and a model card.

        Each file is written to a temporary name and renamed, so an
        interrupted save never leaves a half-written file under the real name.
        """
        from safetensors.torch import save_file

        from sciddpm.card import model_card

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": FORMAT_VERSION,
            **versions(),
            "data_shape": list(self.data_shape),
            "prediction_type": self.denoiser.prediction_type,
            "pipeline": self.config.model_dump(mode="json"),
        }
        _atomic(directory / WEIGHTS_FILE, lambda p: save_file(_contiguous(self.state_dict_no_ema()), p))
        _atomic(directory / EMA_FILE, lambda p: save_file(_contiguous(self.ema.state_dict()), p))
        _atomic(directory / CARD_FILE, lambda p: Path(p).write_text(model_card(meta, card or {})))
        _atomic(directory / CONFIG_FILE, lambda p: Path(p).write_text(json.dumps(meta, indent=2) + "\n"))
        return directory

    def state_dict_no_ema(self) -> dict[str, torch.Tensor]:
        """Encoder, denoiser and conditioner state, without the EMA copy."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("ema.")}

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> Pipeline:
        """Rebuild a saved pipeline from its JSON config and safetensors weights."""
        from safetensors.torch import load_file

        directory = Path(directory)
        config_path = directory / CONFIG_FILE
        if not config_path.is_file():
            raise FileNotFoundError(
                f"{str(directory)!r} is not a saved sciddpm pipeline: {CONFIG_FILE} is missing"
            )
        try:
            meta = json.loads(config_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ConfigError([("", f"{config_path}: not valid JSON ({exc})")]) from None
        if meta.get("format") != FORMAT_VERSION:
            raise ConfigError(
                [
                    (
                        "format",
                        f"{config_path} has format {meta.get('format')!r}; "
                        f"this sciddpm reads {FORMAT_VERSION}",
                    )
                ]
            )
        if not isinstance(meta.get("pipeline"), Mapping):
            raise ConfigError([("pipeline", f"{config_path} has no 'pipeline' section")])
        config = validate_pipeline(meta["pipeline"], where=str(config_path))
        pipe = cls.from_config(config, data_shape=meta["data_shape"], fit=False)
        weights = _read_weights(directory / WEIGHTS_FILE, pipe.state_dict_no_ema(), load_file)
        ema = _read_weights(directory / EMA_FILE, pipe.ema.state_dict(), load_file)
        pipe.load_state_dict({**weights, **{f"ema.{k}": v for k, v in ema.items()}})
        return pipe.to(device).eval()


def versions() -> dict[str, Any]:
    """sciddpm, torch and plugin versions, stamped into saved files."""
    from sciddpm import __version__

    registry = get_registry()
    plugins = {e.plugin: e.version or __version__ for e in registry.entries()}
    return {"sciddpm_version": __version__, "torch_version": torch.__version__, "plugins": plugins}


def _fill(registry: Registry, kind: str, spec: ComponentSpec, wanted: Mapping[str, Any]) -> ComponentSpec:
    """Set config fields the data determines, when the component has them and they are unset.

    A field the user set to a value that contradicts the data is an error.
    """
    entry = registry.get(kind, spec.type)
    fields = entry.config_class().model_fields
    params = spec.params
    for name, value in wanted.items():
        if name not in fields or value is None:
            continue
        current = params.get(name, fields[name].default)
        if current in (None, 0) or current == value:
            params[name] = value
        elif value not in (None, 0):
            raise ConfigError(
                [
                    (
                        f"pipeline.{kind}.{name}",
                        f"is {current!r} but the data/conditioner gives {value!r}; "
                        "remove the field to let the pipeline fill it in",
                    )
                ]
            )
    return ComponentSpec(type=spec.type, **params)


def _check_denoiser(denoiser: Denoiser, latent: tuple[int, ...]) -> None:
    dims = getattr(denoiser, "spatial_dims", len(latent) - 1)
    channels = getattr(denoiser, "in_channels", latent[0])
    if dims != len(latent) - 1 or channels != latent[0]:
        raise ValueError(
            f"denoiser expects {channels} channels and {dims} spatial dims, but the encoder produces "
            f"samples of shape {latent} ({latent[0]} channels, {len(latent) - 1} spatial dims)"
        )


def _guided_steps(sched: Scheduler, interval: tuple[float, float] | None, guided: bool) -> list[bool]:
    """Whether each model evaluation of ``sched.timesteps`` applies guidance."""
    steps = len(sched.timesteps)
    if interval is None:
        return [guided] * steps
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ValueError(
            f"guidance_interval must be a pair (lo, hi) of noise levels, got {interval!r}"
        ) from None
    if not 0 <= lo < hi:
        raise ValueError(
            f"guidance_interval must be (lo, hi) with 0 <= lo < hi in sigma / alpha, got ({lo}, {hi})"
        )
    process = getattr(sched, "process", None)
    if process is None:
        raise ValueError(
            f"guidance_interval needs a scheduler with a noise process (a 'process' attribute); "
            f"{type(sched).__name__} has none"
        )
    if not guided:
        return [False] * steps
    sigmas = process.sigma_ve(sched.timesteps.to(torch.float64))
    return [bool(lo <= s <= hi) for s in sigmas.tolist()]


def _predict(
    denoiser: Denoiser,
    sched: Scheduler,
    x: torch.Tensor,
    t: torch.Tensor,
    cond: Any,
    guidance_scale: float | None = None,
) -> torch.Tensor:
    """The denoiser's prediction at ``x_t = x``, times ``t``; guided when ``guidance_scale`` is given.

    A guided call gets ``cond`` as the (null, conditional) pair stacked on the batch dimension and
    returns ``uncond + scale * (cond - uncond)`` (Ho & Salimans 2022).
    """
    c_noise = sched.c_noise(t)
    # c_in scales the network input only; the scheduler steps on x itself.
    x_in = x * sched.c_in(t).to(x).view(-1, *([1] * (x.ndim - 1)))
    if guidance_scale is None:
        return denoiser(x_in, c_noise, cond)
    out = denoiser(torch.cat([x_in, x_in]), torch.cat([c_noise, c_noise]), cond)
    uncond, cond_out = out.chunk(2)
    return uncond + guidance_scale * (cond_out - uncond)


def _is_per_sample(condition: Any, n: int) -> bool:
    # A mapping (e.g. {"static": field, "time": features}) is one structured condition, not n.
    if condition is None or isinstance(condition, (str, bytes, int, float, Mapping)):
        return False
    try:
        length = len(condition)
    except TypeError:
        return False
    if length != n:
        raise ValueError(f"got {length} conditions for n={n} samples; give one condition or n of them")
    return True


def _cat_conditioning(a: Any, b: Any) -> Any:
    from sciddpm.interfaces import Conditioning

    parts = [None if x is None else torch.cat([x, y]) for x, y in zip(a._parts(), b._parts(), strict=True)]
    return Conditioning(*parts)


def _progress(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc="sampling", unit="step", leave=False)


def _contiguous(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def _atomic(path: Path, write: Callable[[str], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(str(tmp))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _read_weights(
    path: Path, expected: Mapping[str, torch.Tensor], load_file: Any, what: str = "pipeline"
) -> dict[str, torch.Tensor]:
    """The tensors of a saved ``what`` (a pipeline, a VAE), checked name by name and shape by shape."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the saved {what} is incomplete; save it again")
    try:
        found = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise ValueError(f"{path} is not a readable safetensors file: {exc}") from None
    missing = sorted(set(expected) - set(found))
    if missing:
        raise ValueError(
            f"{path} lacks tensor {missing[0]!r} ({len(missing)} missing); save the {what} again"
        )
    unexpected = sorted(set(found) - set(expected))
    if unexpected:
        raise ValueError(
            f"{path} has unexpected tensor {unexpected[0]!r}; it was saved by a different {what}"
        )
    for key, tensor in expected.items():
        # An empty buffer is a placeholder sized by fitting (e.g. standardize's mean and std).
        if tensor.numel() > 0 and tuple(found[key].shape) != tuple(tensor.shape):
            raise ValueError(
                f"{path}: tensor {key!r} has shape {tuple(found[key].shape)}, the {what} config expects "
                f"{tuple(tensor.shape)}"
            )
    return found
