"""The diffusion trainer: AdamW, warm-up + cosine LR, EMA, checkpoints, logs, DDP.

A run directory holds the final pipeline (``pipeline.json``, safetensors,
model card), ``run.toml`` (the resolved run file), ``run_manifest.json``,
``metrics.jsonl`` and ``checkpoints/``. Every random number of a step (data
order, noise level, noise, condition dropout) is a function of the seed and
the sample's position in the run, so a resumed run, a run with gradient
accumulation and a ``torchrun`` run on N processes all see the same numbers as
one uninterrupted process with the same ``batch_size``.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from sciddpm.checkpoint import find_checkpoint, list_checkpoints, write_checkpoint
from sciddpm.config import RunConfig, dump_run, load_run
from sciddpm.data import collate
from sciddpm.distributed import World, join_world
from sciddpm.interfaces import DataSource
from sciddpm.pipeline import Pipeline, _child_seed, versions
from sciddpm.registry import get_registry

__all__ = ["NonFiniteLossError", "Trainer", "lr_at", "train"]

TRAINER_JSON = "trainer.json"
TRAINER_TENSORS = "trainer.safetensors"
MANIFEST = "run_manifest.json"


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps had a NaN/inf loss or gradient."""


class LRSchedule(Protocol):
    """A config with a warm-up + cosine learning rate: the trainer's, the VAE's and CLIP's stages."""

    steps: int
    lr: float
    warmup_steps: int


def lr_at(step: int, cfg: LRSchedule) -> float:
    """Linear warm-up to ``cfg.lr``, then cosine decay to ``cfg.min_lr_ratio * cfg.lr`` (0 if absent)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(cfg.steps - cfg.warmup_steps, 1)
    progress = min((step - cfg.warmup_steps) / span, 1.0)
    floor = getattr(cfg, "min_lr_ratio", 0.0)
    return cfg.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def resolve_device(name: str) -> torch.device:
    """'auto' means CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device is {name!r} but CUDA is not available; use 'auto' or 'cpu'")
    return device


class _Objective(nn.Module):
    """Denoiser + conditioner as one module, so DDP can wrap what is trained."""

    def __init__(self, pipe: Pipeline) -> None:
        super().__init__()
        self.denoiser = pipe.denoiser
        self.conditioner = pipe.conditioner

    def forward(self, x_t: torch.Tensor, c_noise: torch.Tensor, raw: Any, keep: torch.Tensor) -> torch.Tensor:
        n = x_t.shape[0]
        cond = self.conditioner.drop(raw, keep) if raw is not None else self.conditioner.null(n)
        return self.denoiser(x_t, c_noise, cond)


class Trainer:
    """Trains the pipeline of a run config; see :func:`train`."""

    def __init__(
        self,
        run: RunConfig | str | Path | Mapping[str, Any],
        out: str | Path,
        *,
        source: DataSource | None = None,
        progress: bool = True,
        resume: bool = False,
    ) -> None:
        self.run = run if isinstance(run, RunConfig) else load_run(run)
        self.cfg = self.run.train
        self.out = Path(out)
        if source is None and self.run.data is None:
            raise ValueError(
                "the run has no data section: add [data] with a type (e.g. type = 'array', "
                "path = 'fields.npy') or pass source=... to train()"
            )
        self.source = source if source is not None else get_registry().build("data", self.run.data)
        if len(self.source) == 0:
            raise ValueError("the data source is empty: nothing to train on")
        device = resolve_device(self.cfg.device)
        self.world: World = join_world(device)
        if device.type == "cuda" and self.world.distributed:
            device = torch.device("cuda", self.world.local_rank)
        self.device = device
        self.progress = progress and self.world.is_main
        shards = self.world.world_size * self.cfg.grad_accum
        if self.cfg.batch_size % shards:
            raise ValueError(
                f"train.batch_size={self.cfg.batch_size} must be divisible by ranks x grad_accum = "
                f"{self.world.world_size} x {self.cfg.grad_accum} = {shards}; change one of them"
            )
        self.micro_batch = self.cfg.batch_size // shards
        torch.manual_seed(self.cfg.seed)
        latest = self._resumed_from = find_checkpoint(self.out) if resume else None
        if latest is not None:
            # The checkpoint holds every fitted state (encoder statistics, a trained VAE or CLIP):
            # rebuilding from it skips those stages instead of paying for them again.
            self.pipe = Pipeline.load(latest, device=self.device)
        else:
            self.pipe = Pipeline.from_config(self.run.pipeline, self.source).to(self.device)
        objective = _Objective(self.pipe)
        if self.world.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model: nn.Module = nn.parallel.DistributedDataParallel(objective, device_ids=ids)
        else:
            self.model = objective
        trainable = self.pipe.trainable
        self.params = [p for p in trainable.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        # Pairs for the EMA update, collected once: walking the module tree every step costs
        # more than the update itself on small models. Loading a checkpoint copies in place,
        # so these references stay valid.
        self._ema_params = list(zip(self.pipe.ema.parameters(), trainable.parameters(), strict=True))
        self._ema_buffers = list(zip(self.pipe.ema.buffers(), trainable.buffers(), strict=True))
        self.step = 0
        self.skipped = 0
        self._perm: tuple[int, torch.Tensor] | None = None

    # ------------------------------------------------------------------ data and noise

    def positions(self, step: int, micro: int) -> range:
        """Run-wide sample positions of this rank's ``micro``-th micro-batch of ``step``."""
        shard = micro * self.world.world_size + self.world.rank
        start = step * self.cfg.batch_size + shard * self.micro_batch
        return range(start, start + self.micro_batch)

    def _index(self, position: int) -> int:
        """Dataset index at a run position: consecutive slices of per-epoch seeded permutations.

        The permutation is the source's ``epoch_order`` when it has one (a chunk-aware shuffle).
        """
        n = len(self.source)
        epoch, offset = divmod(position, n)
        if self._perm is None or self._perm[0] != epoch:
            seed = _child_seed(self.cfg.seed, epoch, 2)
            order = self.source.epoch_order(epoch, seed) if hasattr(self.source, "epoch_order") else None
            if order is None:
                perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
            else:
                perm = torch.as_tensor(order, dtype=torch.long)
                if perm.shape != (n,) or not torch.equal(perm.sort().values, torch.arange(n)):
                    raise ValueError(
                        f"{type(self.source).__name__}.epoch_order({epoch}, seed) must return every index "
                        f"0..{n - 1} exactly once; got {perm.numel()} indices"
                    )
            self._perm = (epoch, perm)
        return int(self._perm[1][offset])

    def _noise(
        self, positions: range, shape: tuple[int, ...]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Noise level, noise and condition-dropout draw of each sample, from its own generator."""
        ts, eps, keep = [], [], []
        for position in positions:
            g = torch.Generator().manual_seed(_child_seed(self.cfg.seed, position, 3))
            ts.append(self.pipe.scheduler.sample_t(1, generator=g))
            eps.append(torch.randn(shape, generator=g))
            keep.append(torch.rand(1, generator=g) >= self.cfg.cond_drop)
        d = self.device
        return torch.cat(ts).to(d), torch.stack(eps).to(d), torch.cat(keep)

    def micro_loss(self, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Weighted loss of one micro-batch, with its per-sample losses and times."""
        positions = self.positions(step, micro)
        samples = [self.source[self._index(p)] for p in positions]
        x, raw, mask = collate(samples, self.pipe.conditioner)
        x = x.to(self.device)
        raw = raw.to(self.device) if isinstance(raw, torch.Tensor) else raw
        pipe = self.pipe
        with torch.no_grad():
            z = pipe.encoder.encode(x)
        # A latent encoder changes the shape; its latents have no mask.
        mask = mask.to(self.device) if mask is not None and mask.shape == z.shape else None
        if mask is not None:
            # Missing values enter x_t as 0 in model space (the channel mean after standardize),
            # not as the source's fill value: a 0 K sea temperature over land would be -36 std
            # and dominate the network's input although the loss ignores it.
            z = torch.where(mask > 0, z, torch.zeros_like(z))
        t, eps, keep = self._noise(positions, tuple(z.shape[1:]))
        x_t = pipe.scheduler.add_noise(z, eps, t)
        bf16 = self.cfg.precision == "bf16"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
            c_in = pipe.scheduler.c_in(t).to(x_t).view(-1, *([1] * (x_t.ndim - 1)))
            pred = self.model(x_t * c_in, pipe.scheduler.c_noise(t), raw, keep)
        target = pipe.scheduler.target(z, eps, t, pipe.denoiser.prediction_type)
        err = F.mse_loss(pred.float(), target.float(), reduction="none")
        if mask is not None:
            # Missing values carry zero weight; each sample is normalised by its valid count.
            per_sample = (err * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1)
        else:
            per_sample = err.flatten(1).mean(1)
        weighted = per_sample * pipe.scheduler.loss_weight(t, pipe.denoiser.prediction_type)
        return weighted.mean(), per_sample.detach(), t.detach()

    def train_step(self) -> tuple[float, float, torch.Tensor, torch.Tensor]:
        """One optimizer step over ``grad_accum`` micro-batches; skipped if non-finite."""
        cfg = self.cfg
        lr = lr_at(self.step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        losses, times = [], []
        for micro in range(cfg.grad_accum):
            last = micro == cfg.grad_accum - 1
            sync = contextlib.nullcontext() if last or not self.world.distributed else self.model.no_sync()
            with sync:
                loss, per_sample, t = self.micro_loss(self.step, micro)
                (loss / cfg.grad_accum).backward()
            total += loss.detach() / cfg.grad_accum
            losses.append(per_sample)
            times.append(t)
        if self.world.distributed:  # the logged loss is the global mean; gradients are already averaged
            torch.distributed.all_reduce(total)
            total /= self.world.world_size
        clip = cfg.grad_clip if cfg.grad_clip is not None else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, clip))
        loss_value = float(total)
        if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
            self.skipped += 1
            self._consecutive_bad += 1
            self.optimizer.zero_grad(set_to_none=True)
            if self._consecutive_bad >= cfg.max_nonfinite:
                raise NonFiniteLossError(
                    f"{self._consecutive_bad} steps in a row (up to step {self.step}) had a NaN/inf loss or "
                    f"gradient; check the learning rate (train.lr={cfg.lr}), the data normalisation "
                    "(the encoder, e.g. 'standardize') and the data for extreme values. The last good "
                    "checkpoint is untouched."
                )
        else:
            self._consecutive_bad = 0
            self.optimizer.step()
            self._update_ema()
        self.step += 1
        return loss_value, grad_norm, torch.cat(losses), torch.cat(times)

    # ------------------------------------------------------------------ loop

    def fit(self, resume: bool = False) -> Pipeline:
        """Train to ``train.steps``, checkpointing and logging; return the pipeline."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        if resume:
            self._restore()
        elif list_checkpoints(self.out):
            raise FileExistsError(
                f"{self.out} already holds a training run; pass --resume (resume=True) to continue it "
                "or choose another output directory"
            )
        main = self.world.is_main
        log = None
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            dump_run(self.run, self.out / "run.toml")
            self._write_manifest(resumed=resume)
            log = (self.out / "metrics.jsonl").open("a", encoding="utf-8")
        bins = torch.zeros(cfg.loss_bins, dtype=torch.float64)
        counts = torch.zeros(cfg.loss_bins, dtype=torch.float64)
        window: list[float] = []
        self._consecutive_bad = 0
        self.pipe.train()
        start = time.perf_counter()
        bar = tqdm(
            total=cfg.steps, initial=self.step, disable=not self.progress, desc="training", unit="step"
        )
        try:
            while self.step < cfg.steps:
                loss, grad_norm, per_sample, t = self.train_step()
                if math.isfinite(loss):
                    index = (t.cpu() * cfg.loss_bins).long().clamp(0, cfg.loss_bins - 1)
                    bins.index_add_(0, index, per_sample.cpu().double())
                    counts.index_add_(0, index, torch.ones_like(index, dtype=torch.float64))
                    window.append(loss)
                bar.update(1)
                if window:
                    recent = window[-50:]
                    bar.set_postfix(
                        loss=f"{sum(recent) / len(recent):.4f}", lr=f"{lr_at(self.step - 1, cfg):.2e}"
                    )
                if log is not None and (self.step % cfg.log_every == 0 or self.step == cfg.steps):
                    record = {
                        "step": self.step,
                        "loss": sum(window) / len(window) if window else None,
                        "lr": lr_at(self.step - 1, cfg),
                        "grad_norm": grad_norm,
                        "skipped_steps": self.skipped,
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
                if main and cfg.sample_every and self.step % cfg.sample_every == 0:
                    self._sample_grid()
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < cfg.steps:
                    self.save_checkpoint()
        finally:
            bar.close()
            if log is not None:
                log.close()
        self.pipe.eval()
        self.seconds = time.perf_counter() - start
        self._check_ranks_agree()
        self.save_checkpoint()
        if main:
            self.pipe.save(self.out, card=self._card())
        self.world.barrier()
        return self.pipe

    @torch.no_grad()
    def _check_ranks_agree(self) -> None:
        """Under DDP every rank must end with rank 0's weights; a mismatch is a bug worth stopping for."""
        if not self.world.distributed:
            return
        local = torch.stack([p.double().sum() for p in self.pipe.trainable.parameters()])
        reference = local.clone()
        torch.distributed.broadcast(reference, src=0)
        if not torch.equal(local, reference):
            raise RuntimeError(f"rank {self.world.rank} holds different weights from rank 0 after training")

    @torch.no_grad()
    def _update_ema(self) -> None:
        # Warm-up of the decay as in Tarvainen & Valpola 2017 / diffusers' EMAModel.
        decay = min(self.cfg.ema_decay, (1 + self.step) / (10 + self.step))
        for ema, live in self._ema_params:
            ema.lerp_(live.detach(), 1 - decay)
        for ema, live in self._ema_buffers:
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
                "skipped_steps": self.skipped,
                "seconds": round(getattr(self, "seconds", 0.0), 1),
                "device": str(self.device),
                "world_size": self.world.world_size,
            },
        }

    def _write_manifest(self, resumed: bool) -> None:
        path = self.out / MANIFEST
        manifest = json.loads(path.read_text()) if resumed and path.is_file() else {}
        manifest.update(
            {
                "config": dump_run(self.run),
                "seed": self.cfg.seed,
                **versions(),
                "device": str(self.device),
                "world_size": self.world.world_size,
                "grad_accum": self.cfg.grad_accum,
                "micro_batch": self.micro_batch,
                "effective_batch": self.cfg.batch_size,
                "data": dict(self.source.describe()),
            }
        )
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        manifest.setdefault("started", now)
        if resumed:
            manifest.setdefault("resumed", []).append({"at": now, "step": self.step})
        path.write_text(json.dumps(manifest, indent=2, default=str) + "\n")

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self) -> Path | None:
        """Rank 0 writes ``checkpoints/step_N/`` (atomic, checksummed, rotated); others wait."""
        if self.world.is_main:
            bad = [n for n, p in self.pipe.trainable.named_parameters() if not torch.isfinite(p).all()]
            if bad:
                raise NonFiniteLossError(f"refusing to checkpoint non-finite weights ({bad[0]})")
            path = write_checkpoint(self.out, self.step, self._write_state, self.cfg.keep_checkpoints)
        self.world.barrier()
        return path if self.world.is_main else None

    def _write_state(self, directory: Path) -> None:
        from safetensors.torch import save_file

        self.pipe.save(directory, card=self._card())
        tensors, state = _flatten_optimizer(self.optimizer.state_dict())
        # Dropout draws from torch's global generator; everything else is keyed by position.
        tensors["rng.torch"] = torch.get_rng_state()
        save_file(tensors, str(directory / TRAINER_TENSORS))
        meta = {
            "step": self.step,
            "skipped_steps": self.skipped,
            "optimizer": state,
            "run": dump_run(self.run),
        }
        (directory / TRAINER_JSON).write_text(json.dumps(meta, indent=2) + "\n")

    def _restore(self) -> None:
        from safetensors.torch import load_file

        directory = self._resumed_from or find_checkpoint(self.out)
        if directory is None:
            raise FileNotFoundError(f"--resume: no intact checkpoint in {self.out / 'checkpoints'}")
        meta = json.loads((directory / TRAINER_JSON).read_text())
        differing = _diff(meta["run"], dump_run(self.run))
        if differing:
            raise ValueError(
                "--resume: the run config differs from the checkpoint's in "
                + ", ".join(differing)
                + f"; resume with the original config ({self.out / 'run.toml'}) or start a new run"
            )
        if directory != self._resumed_from:  # else the pipeline was built from this checkpoint
            saved = Pipeline.load(directory, device=self.device)
            self.pipe.load_state_dict(saved.state_dict())
        tensors = load_file(str(directory / TRAINER_TENSORS))
        torch.set_rng_state(tensors.pop("rng.torch"))
        self.optimizer.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"], self.device))
        self.step = int(meta["step"])
        self.skipped = int(meta.get("skipped_steps", 0))

    # ------------------------------------------------------------------ dry run

    def dry_run(self, steps: int = 3) -> dict[str, Any]:
        """Parameters, estimated memory per step and measured seconds per step; writes nothing."""
        params = sum(p.numel() for p in self.pipe.trainable.parameters())
        saved_bytes = 0

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            nonlocal saved_bytes
            saved_bytes += tensor.numel() * tensor.element_size()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss, _, _ = self.micro_loss(0, 0)
        loss.backward()
        timings = []
        for _ in range(steps):
            begin = time.perf_counter()
            self.train_step()
            timings.append(time.perf_counter() - begin)
        # weights + gradients + two AdamW moments + the EMA copy, in float32
        state_bytes = 5 * 4 * params
        return {
            "parameters": params,
            "micro_batch": self.micro_batch,
            "grad_accum": self.cfg.grad_accum,
            "world_size": self.world.world_size,
            "activation_mb": saved_bytes / 2**20,
            "state_mb": state_bytes / 2**20,
            "estimated_mb": (saved_bytes + state_bytes) / 2**20,
            "seconds_per_step": min(timings),
            "estimated_minutes": min(timings) * self.cfg.steps / 60,
            "device": str(self.device),
        }


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
    also saved in ``out``. Under ``torchrun`` every process calls this; rank 0 writes.
    """
    trainer = Trainer(run, out, source=source, progress=progress, resume=resume)
    try:
        return trainer.fit(resume=resume)
    finally:
        trainer.world.leave()
