"""The diffusion trainer: AdamW, warm-up + cosine LR, EMA, checkpoints, logs.

A run directory holds the final pipeline (``pipeline.json``, safetensors,
model card), ``run.toml`` (the resolved run file), ``metrics.jsonl`` and
``checkpoint/``. Checkpoints are written to a temporary directory and renamed
into place, and everything a resumed run needs (weights, EMA, optimizer
moments, step, RNG state) is in JSON + safetensors, so resuming never
unpickles and continues the same data order, noise and LR schedule.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from sciddpm.config import RunConfig, TrainConfig, dump_run, load_run
from sciddpm.data import collate
from sciddpm.interfaces import DataSource
from sciddpm.pipeline import Pipeline
from sciddpm.registry import get_registry

__all__ = ["Trainer", "lr_at", "train"]

CHECKPOINT = "checkpoint"
TRAINER_JSON = "trainer.json"
TRAINER_TENSORS = "trainer.safetensors"


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``cfg.lr``, then cosine decay to ``cfg.min_lr_ratio * cfg.lr``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(cfg.steps - cfg.warmup_steps, 1)
    progress = min((step - cfg.warmup_steps) / span, 1.0)
    floor = cfg.min_lr_ratio
    return cfg.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def resolve_device(name: str) -> torch.device:
    """'auto' means CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device is {name!r} but CUDA is not available; use 'auto' or 'cpu'")
    return device


class Trainer:
    """Trains a pipeline described by a run config; see :func:`train`."""

    def __init__(
        self,
        run: RunConfig | str | Path | Mapping[str, Any],
        out: str | Path,
        *,
        source: DataSource | None = None,
        progress: bool = True,
    ) -> None:
        self.run = run if isinstance(run, RunConfig) else load_run(run)
        self.cfg = self.run.train
        self.out = Path(out)
        self.progress = progress
        if source is None and self.run.data is None:
            raise ValueError(
                "the run has no data section: add [data] with a type (e.g. type = 'array', "
                "path = 'fields.npy') or pass source=... to train()"
            )
        self.source = source if source is not None else get_registry().build("data", self.run.data)
        if len(self.source) == 0:
            raise ValueError("the data source is empty: nothing to train on")
        self.device = resolve_device(self.cfg.device)
        torch.manual_seed(self.cfg.seed)
        self.pipe = Pipeline.from_config(self.run.pipeline, self.source)
        self.pipe.to(self.device)
        params = [p for p in self.pipe.trainable.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        self.generator = torch.Generator().manual_seed(self.cfg.seed)
        self.step = 0
        self._perm: tuple[int, torch.Tensor] | None = None

    # ------------------------------------------------------------------ data

    def _indices(self, step: int) -> list[int]:
        """Sample indices of ``step``: consecutive slices of per-epoch seeded permutations."""
        n, b = len(self.source), self.cfg.batch_size
        out = []
        for position in range(step * b, (step + 1) * b):
            epoch, offset = divmod(position, n)
            if self._perm is None or self._perm[0] != epoch:
                g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
                self._perm = (epoch, torch.randperm(n, generator=g))
            out.append(int(self._perm[1][offset]))
        return out

    # ------------------------------------------------------------------ loop

    def loss(
        self, x: torch.Tensor, raw: Any, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean weighted loss of a batch, with the per-sample losses and times."""
        pipe, g = self.pipe, self.generator
        with torch.no_grad():
            z = pipe.encoder.encode(x)
        b = z.shape[0]
        t = pipe.scheduler.sample_t(b, generator=g).to(self.device)
        eps = torch.randn(z.shape, generator=g).to(self.device)
        x_t = pipe.scheduler.add_noise(z, eps, t)
        keep = torch.rand(b, generator=g) >= self.cfg.cond_drop
        cond = pipe.conditioner.drop(raw, keep) if raw is not None else pipe.conditioner.null(b)
        pred = pipe.denoiser(x_t, pipe.scheduler.c_noise(t), cond)
        target = pipe.scheduler.target(z, eps, t, pipe.denoiser.prediction_type)
        err = F.mse_loss(pred.float(), target.float(), reduction="none")
        if mask is not None and mask.shape == err.shape:
            # Missing values carry zero weight; each sample is normalised by its valid count.
            per_sample = (err * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1)
        else:
            per_sample = err.flatten(1).mean(1)
        weighted = per_sample * pipe.scheduler.loss_weight(t)
        return weighted.mean(), per_sample.detach(), t.detach()

    def fit(self, resume: bool = False) -> Pipeline:
        """Train to ``train.steps``, checkpointing and logging; return the pipeline."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        if resume:
            self._restore()
        elif (self.out / CHECKPOINT).exists():
            raise FileExistsError(
                f"{self.out} already holds a training run; pass --resume (resume=True) to continue it "
                "or choose another output directory"
            )
        self.out.mkdir(parents=True, exist_ok=True)
        dump_run(self.run, self.out / "run.toml")
        log = (self.out / "metrics.jsonl").open("a", encoding="utf-8")
        bins = torch.zeros(cfg.loss_bins, dtype=torch.float64)
        counts = torch.zeros(cfg.loss_bins, dtype=torch.float64)
        window: list[float] = []
        self.pipe.train()
        start = time.perf_counter()
        bar = tqdm(
            total=cfg.steps, initial=self.step, disable=not self.progress, desc="training", unit="step"
        )
        try:
            while self.step < cfg.steps:
                lr = lr_at(self.step, cfg)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                samples = [self.source[i] for i in self._indices(self.step)]
                x, raw, mask = collate(samples, self.pipe.conditioner)
                x = x.to(self.device)
                raw = raw.to(self.device) if isinstance(raw, torch.Tensor) else raw
                mask = mask.to(self.device) if mask is not None else None
                loss, per_sample, t = self.loss(x, raw, mask)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                params = [p for group in self.optimizer.param_groups for p in group["params"]]
                clip = cfg.grad_clip if cfg.grad_clip is not None else float("inf")
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
                self.optimizer.step()
                self._update_ema()
                self.step += 1

                index = (t.cpu() * cfg.loss_bins).long().clamp(0, cfg.loss_bins - 1)
                bins.index_add_(0, index, per_sample.cpu().double())
                counts.index_add_(0, index, torch.ones_like(index, dtype=torch.float64))
                window.append(float(loss.detach()))
                bar.update(1)
                bar.set_postfix(loss=f"{sum(window[-50:]) / len(window[-50:]):.4f}", lr=f"{lr:.2e}")
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    record = {
                        "step": self.step,
                        "loss": sum(window) / len(window),
                        "lr": lr,
                        "grad_norm": grad_norm,
                        "seconds": time.perf_counter() - start,
                        "loss_by_t": [
                            None if c == 0 else float(s / c) for s, c in zip(bins, counts, strict=True)
                        ],
                    }
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                    self.last_loss = record["loss"]
                    window.clear()
                    bins.zero_()
                    counts.zero_()
                if cfg.sample_every and self.step % cfg.sample_every == 0:
                    self._sample_grid()
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < cfg.steps:
                    self.save_checkpoint()
        finally:
            bar.close()
            log.close()
        self.pipe.eval()
        self.seconds = time.perf_counter() - start
        self.save_checkpoint()
        self.pipe.save(self.out, card=self._card())
        return self.pipe

    @torch.no_grad()
    def _update_ema(self) -> None:
        # Warm-up of the decay as in Tarvainen & Valpola 2017 / diffusers' EMAModel.
        decay = min(self.cfg.ema_decay, (1 + self.step) / (10 + self.step))
        for ema, live in zip(self.pipe.ema.parameters(), self.pipe.trainable.parameters(), strict=True):
            ema.lerp_(live.detach(), 1 - decay)
        for ema, live in zip(self.pipe.ema.buffers(), self.pipe.trainable.buffers(), strict=True):
            ema.copy_(live)

    def _sample_grid(self) -> None:
        from sciddpm.plot import save_grid

        k = getattr(self.pipe.conditioner, "num_classes", 0)
        condition = [i % k for i in range(4 * k)] if k else None
        samples = self.pipe.sample(4 * k if k else 16, condition, steps=25, scheduler="ddim", seed=0)
        save_grid(samples, self.out / "samples" / f"step_{self.step:07d}.png", nrow=k or None)
        self.pipe.train()

    def _card(self) -> dict[str, Any]:
        return {
            "data": dict(self.source.describe()),
            "seed": self.cfg.seed,
            "train": {
                "steps": self.step,
                "batch_size": self.cfg.batch_size,
                "final_loss": getattr(self, "last_loss", None),
                "seconds": round(getattr(self, "seconds", 0.0), 1),
                "device": str(self.device),
            },
        }

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self) -> Path:
        """Write ``checkpoint/`` atomically: build it beside, then rename over the old one."""
        from safetensors.torch import save_file

        final = self.out / CHECKPOINT
        tmp = self.out / f".{CHECKPOINT}.tmp"
        previous = self.out / f"{CHECKPOINT}.prev"
        shutil.rmtree(tmp, ignore_errors=True)
        self.pipe.save(tmp, card=self._card())
        tensors, state = _flatten_optimizer(self.optimizer.state_dict())
        tensors["rng.generator"] = self.generator.get_state()
        save_file(tensors, str(tmp / TRAINER_TENSORS))
        meta = {"step": self.step, "optimizer": state, "run": dump_run(self.run)}
        (tmp / TRAINER_JSON).write_text(json.dumps(meta, indent=2) + "\n")
        if final.exists():
            shutil.rmtree(previous, ignore_errors=True)
            final.rename(previous)
        tmp.rename(final)
        shutil.rmtree(previous, ignore_errors=True)
        return final

    def _restore(self) -> None:
        from safetensors.torch import load_file

        directory = self.out / CHECKPOINT
        if not directory.exists() and (self.out / f"{CHECKPOINT}.prev").exists():
            directory = self.out / f"{CHECKPOINT}.prev"  # killed between the two renames
        if not (directory / TRAINER_JSON).is_file():
            raise FileNotFoundError(
                f"--resume: no checkpoint in {self.out} (expected {directory / TRAINER_JSON})"
            )
        meta = json.loads((directory / TRAINER_JSON).read_text())
        differing = _diff(meta["run"], dump_run(self.run))
        if differing:
            raise ValueError(
                "--resume: the run config differs from the checkpoint's in "
                + ", ".join(differing)
                + f"; resume with the original config ({self.out / 'run.toml'}) or start a new run"
            )
        saved = Pipeline.load(directory, device=self.device)
        self.pipe.load_state_dict(saved.state_dict())
        tensors = load_file(str(directory / TRAINER_TENSORS))
        self.generator.set_state(tensors.pop("rng.generator"))
        self.optimizer.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"], self.device))
        self.step = int(meta["step"])


def _flatten_optimizer(state: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(
    tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any], device: torch.device
) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        # AdamW keeps its step counter on the CPU; moments live with the parameters.
        state.setdefault(int(index), {})[name] = value if name == "step" else value.to(device)
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two JSON-like values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            out += _diff(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else key)
        return out
    return [] if a == b else [f"{prefix} ({a!r} -> {b!r})"]


def train(
    run: RunConfig | str | Path | Mapping[str, Any],
    out: str | Path,
    *,
    resume: bool = False,
    source: DataSource | None = None,
    progress: bool = True,
) -> Pipeline:
    """Train the pipeline of ``run`` (a run file, mapping or RunConfig) into ``out``.

    ``source`` overrides the run's data section with a source built in
    Python (e.g. ``ArraySource.from_array(x)``). Returns the trained pipeline,
    also saved in ``out``.
    """
    return Trainer(run, out, source=source, progress=progress).fit(resume=resume)
