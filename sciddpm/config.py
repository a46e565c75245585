"""Validated run configuration: data, pipeline (the four components) and training.

A component is written ``{"type": "<registry name>", ...its parameters}`` and
its parameters are validated by that component's own pydantic config class.
Every model forbids unknown keys, so a typo is an error that names the field's
path and, when one is close, the valid name. Nothing in a config is ever
imported as a Python path: ``type`` is looked up in the plugin registry.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sciddpm.registry import PluginError, Registry, get_registry
from sciddpm.spec import ComponentSpec, ConfigError, validate_params
from sciddpm.spec import problems as pydantic_problems

__all__ = [
    "ComponentSpec",
    "ConfigError",
    "PipelineConfig",
    "RunConfig",
    "TrainConfig",
    "check_warmup",
    "default_warmup",
    "dump_run",
    "load_run",
    "load_saved_run",
    "saved_pipeline_config",
    "saved_scheduler_spec",
    "validate_pipeline",
]

_STRICT = ConfigDict(extra="forbid", validate_assignment=True)


class PipelineConfig(BaseModel):
    """The four components of a diffusion pipeline."""

    model_config = _STRICT

    encoder: ComponentSpec = Field(default_factory=lambda: ComponentSpec(type="identity"))
    denoiser: ComponentSpec = Field(default_factory=lambda: ComponentSpec(type="unet"))
    conditioner: ComponentSpec = Field(default_factory=lambda: ComponentSpec(type="none"))
    scheduler: ComponentSpec = Field(default_factory=lambda: ComponentSpec(type="ddpm"))


def default_warmup(data: Any, cap: int, default_steps: int) -> Any:
    """A config mapping with ``warmup_steps`` filled when absent or None: a tenth of steps, at most ``cap``.

    For the ``mode="before"`` validators of every config with a warm-up + cosine learning rate, so a
    short run's rate still decays (a fixed 100-step warm-up left a 100-step run at its peak rate).
    Values pydantic will refuse anyway are left for it to refuse.
    """
    if not isinstance(data, Mapping) or data.get("warmup_steps") is not None:
        return data
    try:
        steps = int(data.get("steps", default_steps))
    except (TypeError, ValueError):
        return data
    return {**data, "warmup_steps": min(cap, max(steps, 0) // 10)}


def check_warmup(steps: int, warmup_steps: int, where: str) -> None:
    """Raise ValueError when ``warmup_steps`` is not below ``steps`` (the rate would never decay)."""
    if steps > 1 and warmup_steps >= steps:
        raise ValueError(
            f"{where}warmup_steps={warmup_steps} is not below {where}steps={steps}: the learning rate would "
            "warm up for the whole run and never decay; lower it, or leave it out for a tenth of the steps"
        )


class TrainConfig(BaseModel):
    """Optimisation, EMA, checkpointing and logging of a training run."""

    model_config = _STRICT

    steps: int = Field(2000, ge=1, description="Optimizer steps.")
    batch_size: int = Field(
        64, ge=1, description="Samples per optimizer step, over all ranks and accumulation micro-batches."
    )
    lr: float = Field(2e-4, gt=0, description="Peak AdamW learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    warmup_steps: int | None = Field(
        None,
        ge=0,
        description="Linear warm-up steps before the cosine decay; null = a tenth of steps, at most 100. "
        "Must be below steps.",
    )
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="Final LR as a fraction of lr.")
    ema_decay: float = Field(0.999, ge=0, lt=1, description="EMA decay of the sampled weights; 0 = off.")
    grad_clip: float | None = Field(1.0, gt=0, description="Clip the gradient norm; null = off.")
    cond_drop: float = Field(
        0.1, ge=0, le=1, description="Probability of the null condition (classifier-free guidance)."
    )
    grad_accum: int = Field(
        1, ge=1, description="Micro-batches per optimizer step; batch_size is split over them (and ranks)."
    )
    precision: Literal["fp32", "bf16"] = Field("fp32", description="'bf16' runs the denoiser under autocast.")
    checkpoint_every: int = Field(500, ge=0, description="Steps between checkpoints; 0 = only at the end.")
    keep_checkpoints: int = Field(3, ge=1, description="Checkpoints kept; older ones are deleted.")
    max_nonfinite: int = Field(
        5, ge=1, description="Consecutive steps with a NaN/inf loss or gradient before training stops."
    )
    log_every: int = Field(50, ge=1, description="Steps between JSONL log records.")
    sample_every: int = Field(0, ge=0, description="Steps between sample grids; 0 = off.")
    loss_bins: int = Field(10, ge=1, description="Noise-level bins of the per-timestep loss diagnostic.")
    seed: int = Field(0, description="Seed of weights, data order and noise.")
    device: str = Field("auto", description="'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'.")
    threads: int | None = Field(
        None,
        ge=1,
        description="torch CPU threads; null = SCIDDPM_NUM_THREADS or torch's default (all cores, shared "
        "between torchrun's ranks). On a machine other jobs use, 1 is often fastest. SCIDDPM_NUM_THREADS "
        "and `sciddpm train --threads` override it.",
    )
    num_workers: int = Field(
        0,
        ge=0,
        description="Processes that read samples ahead of the trainer (torch DataLoader workers); the "
        "samples, their order and the result are those of 0 (the main process reads).",
    )

    @model_validator(mode="before")
    @classmethod
    def _warmup(cls, data: Any) -> Any:
        return default_warmup(data, 100, 2000)

    @model_validator(mode="after")
    def _decays(self) -> TrainConfig:
        check_warmup(self.steps, self.warmup_steps, "train.")
        return self


class RunConfig(BaseModel):
    """One training run: where the data comes from, the pipeline, the training."""

    model_config = _STRICT

    data: ComponentSpec | None = Field(
        None, description="The data source; may be left out when a source is passed to train() in Python."
    )
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)


def _read(path: Path) -> dict[str, Any]:
    suffix = path.suffix.lower()
    if not path.is_file():
        raise ConfigError([("", f"file not found: {str(path)!r}")])
    text = path.read_text(encoding="utf-8")
    try:
        if suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib  # type: ignore[no-redef]
            return tomllib.loads(text)
        if suffix == ".json":
            return json.loads(text)
        if suffix in {".yaml", ".yml"}:
            try:
                import yaml
            except ModuleNotFoundError:
                raise ConfigError(
                    [("", f"{path.name}: YAML needs PyYAML (pip install 'sciddpm[yaml]') or use TOML")]
                ) from None
            data = yaml.safe_load(text)
            return data if data is not None else {}
    except ConfigError:
        raise
    except Exception as exc:  # parse error of any of the three formats
        raise ConfigError([("", f"cannot parse {path.name}: {exc}")], source=str(path)) from None
    raise ConfigError([("", f"unsupported run file type {suffix!r}: use .toml, .json or .yaml")])


def saved_scheduler_spec(spec: Mapping[str, Any], registry: Registry | None = None) -> dict[str, Any]:
    """A scheduler spec (``type`` and fields) written by an earlier version, as this one validates it.

    Resets the VP fields a non-VP solver scheduler ignored
    (:func:`sciddpm.diffusion.scheduler_configs.reset_ignored_vp_fields`), which this version
    refuses. A spec of an unknown or broken scheduler is returned as it is, for validation to
    report.
    """
    # Here, not at the top: this contract module must not import the diffusion code (and torch).
    from sciddpm.diffusion.scheduler_configs import reset_ignored_vp_fields

    try:
        config_class = (registry or get_registry()).get("scheduler", str(spec.get("type"))).config_class()
    except PluginError:
        return dict(spec)
    return reset_ignored_vp_fields(spec, config_class)


def saved_pipeline_config(section: Mapping[str, Any], registry: Registry | None = None) -> dict[str, Any]:
    """A ``pipeline`` section written by an earlier version (a saved pipeline, a checkpoint's run),
    with its scheduler spec through :func:`saved_scheduler_spec`; the other components as they are.
    """
    out = dict(section)
    if isinstance(out.get("scheduler"), Mapping):
        out["scheduler"] = saved_scheduler_spec(out["scheduler"], registry)
    return out


def load_saved_run(path: str | Path, registry: Registry | None = None) -> RunConfig:
    """The ``run.toml`` sciddpm wrote into a run directory, read as :func:`load_run` reads a run file.

    Its scheduler spec goes through :func:`saved_scheduler_spec` first, so a run written by an
    earlier version still opens (``sciddpm evaluate``, ``sciddpm sample`` on the run); a run
    file given to train, or to resume, is validated as written. Raises ConfigError (naming the
    file) as :func:`load_run` does.
    """
    raw = _read(Path(path))
    if isinstance(raw, dict) and isinstance(raw.get("pipeline"), Mapping):
        raw["pipeline"] = saved_pipeline_config(raw["pipeline"], registry)
    try:
        return load_run(raw, registry)
    except ConfigError as exc:
        raise ConfigError(exc.problems, str(path)) from None


def load_run(source: str | Path | Mapping[str, Any], registry: Registry | None = None) -> RunConfig:
    """Read and validate a run file (TOML, JSON or YAML) or a mapping.

    Each component's parameters are validated by its config class and
    completed with its defaults, so the result dumps to a file that loads back
    identical.
    """
    where = None if isinstance(source, Mapping) else str(source)
    raw = dict(source) if isinstance(source, Mapping) else _read(Path(source))
    if not isinstance(raw, dict):
        raise ConfigError([("", f"a run file holds a table/mapping, got {type(raw).__name__}")], where)
    try:
        run = RunConfig.model_validate(raw)
    except ValidationError as exc:
        # Report the components' own problems too, so one pass shows every typo.
        problems = pydantic_problems(exc, RunConfig, ()) + _raw_component_problems(raw, registry)
        raise ConfigError(sorted(set(problems), key=problems.index), where) from None
    problems = _resolve(run, "data", ("data",), registry) if run.data is not None else []
    for name in PipelineConfig.model_fields:
        problems += _resolve(run.pipeline, name, ("pipeline", name), registry)
    if problems:
        raise ConfigError(problems, where)
    return run


def validate_pipeline(
    data: Mapping[str, Any], registry: Registry | None = None, where: str | None = None
) -> PipelineConfig:
    """Validate a pipeline section on its own (as stored in a saved pipeline)."""
    try:
        pipeline = PipelineConfig.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(pydantic_problems(exc, PipelineConfig, ("pipeline",)), where) from None
    problems = []
    for name in PipelineConfig.model_fields:
        problems += _resolve(pipeline, name, ("pipeline", name), registry)
    if problems:
        raise ConfigError(problems, where)
    return pipeline


def _raw_component_problems(raw: Mapping[str, Any], registry: Registry | None) -> list:
    """Problems of the component specs found in an otherwise invalid run mapping."""
    found = [(raw.get("data"), ("data",))]
    pipeline = raw.get("pipeline")
    if isinstance(pipeline, Mapping):
        found += [(pipeline.get(name), ("pipeline", name)) for name in PipelineConfig.model_fields]
    problems = []
    for value, loc in found:
        if isinstance(value, Mapping) and isinstance(value.get("type"), str):
            holder = _Holder(spec=ComponentSpec(**value))
            problems += _resolve(holder, "spec", loc, registry)
    return problems


class _Holder(BaseModel):
    spec: ComponentSpec


def _resolve(parent: BaseModel, field: str, loc: tuple[str, ...], registry: Registry | None) -> list:
    """Validate the component spec ``parent.field`` by its config class, filling defaults."""
    kind = loc[-1]
    spec: ComponentSpec = getattr(parent, field)
    try:
        entry = (registry or get_registry()).get(kind, spec.type)
        params = validate_params(entry.config_class(), spec.params, loc).model_dump(mode="json")
    except ConfigError as exc:
        return exc.problems
    except PluginError as exc:
        return [(".".join((*loc, "type")), str(exc))]
    setattr(parent, field, ComponentSpec(type=spec.type, **params))
    return []


def dump_run(run: RunConfig, path: str | Path | None = None) -> dict[str, Any]:
    """The run as plain data; also written to ``path`` (.toml, .json or .yaml) if given.

    TOML has no null, so None values are left out of TOML files; they are the
    defaults they load back as.
    """
    data = run.model_dump(mode="json")
    if path is None:
        return data
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".toml":
        import tomli_w

        text = tomli_w.dumps(_drop_none(data))
    elif suffix == ".json":
        text = json.dumps(data, indent=2) + "\n"
    elif suffix in {".yaml", ".yml"}:
        import yaml

        text = yaml.safe_dump(data, sort_keys=False)
    else:
        raise ConfigError([("", f"unsupported run file type {suffix!r}: use .toml, .json or .yaml")])
    path.write_text(text, encoding="utf-8")
    return data


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value
