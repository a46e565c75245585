"""The diffusion trainer: the run's data, noise and loss on a :class:`~sciddpm.training.stage.Stage`.

A run directory holds the final pipeline (``pipeline.json``, safetensors, model card),
``run.toml`` (the resolved run file), ``run_manifest.json``, ``metrics.jsonl`` and
``checkpoints/``. Every random number of a step (data order, noise level, noise, condition
dropout, network dropout) is a function of the seed and the sample's position in the run
(:mod:`sciddpm.seeding`), so a resumed run, a run with gradient accumulation and a ``torchrun``
run on N processes all see the same numbers as one uninterrupted process with the same
``batch_size``. The optimiser, learning rate, clipping, non-finite guard, EMA and progress bar
are the shared stage's; this module keeps only what is particular to diffusion.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sciddpm import persistence, seeding
from sciddpm.config import RunConfig, dump_run, load_run, saved_pipeline_config
from sciddpm.data.batching import collate
from sciddpm.diffusion.preconditioning import Preconditioned
from sciddpm.interfaces import DataSource, Sample
from sciddpm.pipeline.pipeline import Pipeline
from sciddpm.registry import get_registry
from sciddpm.training.checkpoint import find_checkpoint, list_checkpoints, write_checkpoint
from sciddpm.training.distributed import World, join_world, machine_load, resolve_device, use_threads
from sciddpm.training.metrics_log import MetricsLog
from sciddpm.training.stage import EMA, NonFiniteLossError, Stage, StepResult

__all__ = ["NonFiniteLossError", "RunOrder", "Trainer", "train"]

TRAINER_JSON = "trainer.json"
TRAINER_TENSORS = "trainer.safetensors"
MANIFEST = "run_manifest.json"


class RunOrder:
    """The dataset index at each run position: consecutive slices of per-epoch seeded permutations.

    Position ``p`` is sample ``p mod len(source)`` of epoch ``p // len(source)``'s order, which is
    the source's ``epoch_order`` (a chunk-aware shuffle) or a permutation seeded by the
    :data:`~sciddpm.seeding.EPOCH_ORDER` stream. A plain object, so worker processes can hold it.
    Raises ValueError when a source's ``epoch_order`` is not a permutation.
    """

    def __init__(self, source: DataSource, seed: int) -> None:
        self.source, self.seed = source, seed
        self._perm: tuple[int, torch.Tensor] | None = None

    def __call__(self, position: int) -> int:
        n = len(self.source)
        epoch, offset = divmod(position, n)
        if self._perm is None or self._perm[0] != epoch:
            seed = seeding.seed_for(seeding.EPOCH_ORDER, self.seed, epoch)
            # Sources are duck-typed from Python (train(source=...)); epoch_order is optional there.
            epoch_order = getattr(self.source, "epoch_order", None)
            order = epoch_order(epoch, seed) if epoch_order is not None else None
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


class _Reads(torch.utils.data.Dataset):
    """The samples at run positions, for worker processes (``train.num_workers``)."""

    def __init__(self, order: RunOrder) -> None:
        self.order = order

    def __getitem__(self, position: int) -> Sample:
        return self.order.source[self.order(position)]


def _as_list(samples: list[Sample]) -> list[Sample]:
    return samples


class _Batches:
    """The run positions of every remaining micro-batch, made as the loader asks for them."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.first = trainer.step

    def __iter__(self) -> Iterator[list[int]]:
        t = self.trainer
        for step in range(self.first, t.cfg.steps):
            for micro in range(t.cfg.grad_accum):
                yield list(t.positions(step, micro))

    def __len__(self) -> int:
        return (self.trainer.cfg.steps - self.first) * self.trainer.cfg.grad_accum


class _Objective(nn.Module):
    """Denoiser + conditioner as one module, so DDP wraps exactly what is trained."""

    def __init__(self, pipe: Pipeline) -> None:
        super().__init__()
        self.denoiser = pipe.denoiser
        self.conditioner = pipe.conditioner
        self.preconditioned = Preconditioned(self.denoiser, pipe.scheduler, pipe.denoiser.prediction_type)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, raw: Any, keep: torch.Tensor) -> torch.Tensor:
        n = x_t.shape[0]
        cond = self.conditioner.drop(raw, keep) if raw is not None else self.conditioner.null(n)
        return self.preconditioned.output(x_t, t, cond)


class Trainer:
    """Trains the pipeline of a run config into ``out``; see :func:`train`.

    Raises ValueError when the run has no data (and no ``source`` is given), the source is empty,
    or ``batch_size`` does not split over ranks x ``grad_accum``.
    """

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
        self.threads = use_threads(self.cfg.threads)
        device = resolve_device(self.cfg.device, "train.device")
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
        objective = self._objective = _Objective(self.pipe)
        if self.world.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model: nn.Module = nn.parallel.DistributedDataParallel(objective, device_ids=ids)
        else:
            self.model = objective
        trainable = self.pipe.trainable
        self.stage = Stage(
            "training",
            [p for p in trainable.parameters() if p.requires_grad],
            self.cfg,
            weight_decay=self.cfg.weight_decay,
            grad_clip=self.cfg.grad_clip,
            max_nonfinite=self.cfg.max_nonfinite,
            ema=EMA(self.pipe.ema, trainable, self.cfg.ema_decay),
            progress=self.progress,
            hint=f"check the learning rate (train.lr={self.cfg.lr}), the data normalisation (the encoder, "
            "e.g. 'standardize') and the data for extreme values. The last good checkpoint is untouched.",
        )
        self.order = RunOrder(self.source, self.cfg.seed)
        self._batches: Iterator[tuple[list[int], list[Sample]]] | None = None

    @property
    def step(self) -> int:
        """Optimizer steps taken so far."""
        return self.stage.step

    @property
    def skipped(self) -> int:
        """Steps skipped for a NaN/inf loss or gradient so far."""
        return self.stage.skipped

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The AdamW optimizer of the trained parameters (the stage's)."""
        return self.stage.optimizer

    # ------------------------------------------------------------------ data and noise

    def positions(self, step: int, micro: int) -> range:
        """Run-wide sample positions of this rank's ``micro``-th micro-batch of ``step``."""
        shard = micro * self.world.world_size + self.world.rank
        start = step * self.cfg.batch_size + shard * self.micro_batch
        return range(start, start + self.micro_batch)

    def _draws(
        self, positions: range, shape: tuple[int, ...]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Noise level, noise and condition-dropout draw of each sample, from its own stream."""
        ts, eps, keep = [], [], []
        for position in positions:
            g = seeding.generator(seeding.TRAINING_DRAWS, self.cfg.seed, position)
            ts.append(self.pipe.scheduler.sample_t(1, generator=g))
            eps.append(torch.randn(shape, generator=g))
            keep.append(torch.rand(1, generator=g) >= self.cfg.cond_drop)
        d = self.device
        return torch.cat(ts).to(d), torch.stack(eps).to(d), torch.cat(keep)

    def _samples(self, step: int, micro: int) -> list[Sample]:
        positions = self.positions(step, micro)
        if self._batches is None:
            return [self.source[self.order(p)] for p in positions]
        read, samples = next(self._batches)
        if read != list(positions):  # the loader runs ahead in the same order; a mismatch is a bug
            raise RuntimeError(
                f"the data loader read positions {read[:3]}... for step {step}, not {positions}"
            )
        return samples

    def micro_loss(self, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(weighted loss, per-sample losses (B,), times (B,))`` of one micro-batch of ``step``."""
        x, raw, mask = collate(self._samples(step, micro), self.pipe.conditioner)
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
        t, eps, keep = self._draws(self.positions(step, micro), tuple(z.shape[1:]))
        x_t = pipe.scheduler.add_noise(z, eps, t)
        bf16 = self.cfg.precision == "bf16"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
            output = self.model(x_t, t, raw, keep)
        loss, per_sample = self._objective.preconditioned.loss(output, z, eps, t, mask)
        return loss, per_sample, t.detach()

    def _backward(self) -> tuple[float, tuple[torch.Tensor, torch.Tensor]]:
        """Forward and backward over this step's ``grad_accum`` micro-batches: the stage's closure."""
        cfg = self.cfg
        total = torch.zeros((), device=self.device)
        losses, times = [], []
        for micro in range(cfg.grad_accum):
            last = micro == cfg.grad_accum - 1
            sync = contextlib.nullcontext() if last or not self.world.distributed else self.model.no_sync()
            # Dropout masks keyed by run position, forward and backward (checkpointing recomputes).
            positions = seeding.sample_positions(cfg.seed, self.positions(self.step, micro))
            with sync, positions:
                loss, per_sample, t = self.micro_loss(self.step, micro)
                (loss / cfg.grad_accum).backward()
            total += loss.detach() / cfg.grad_accum
            losses.append(per_sample)
            times.append(t)
        if self.world.distributed:  # the logged loss is the global mean; gradients are already averaged
            torch.distributed.all_reduce(total)
            total /= self.world.world_size
        return float(total), (torch.cat(losses), torch.cat(times))

    def train_step(self) -> StepResult:
        """One optimizer step over ``grad_accum`` micro-batches (skipped if non-finite)."""
        return self.stage.update(self._backward)

    # ------------------------------------------------------------------ loop

    def fit(self, resume: bool = False) -> Pipeline:
        """Train to ``train.steps``, checkpointing and logging; return the pipeline, saved in ``out``.

        Raises FileExistsError when ``out`` holds a run and ``resume`` is False, and
        NonFiniteLossError after ``max_nonfinite`` NaN/inf steps in a row.
        """
        cfg = self.cfg
        if resume:
            self._restore()
        elif list_checkpoints(self.out):
            raise FileExistsError(
                f"{self.out} already holds a training run; pass --resume (resume=True) to continue it "
                "or choose another output directory"
            )
        main = self.world.is_main
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            self._write_run_file(self.out / "run.toml")
            self._write_manifest(resumed=resume)
        log = MetricsLog(self.out / "metrics.jsonl" if main else None, cfg.loss_bins)
        self.pipe.train()
        start = time.perf_counter()
        self._batches = self._loader()

        def on_step(result: StepResult) -> None:
            log.add(result)
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                record = log.flush(self.step, self.stage.skipped, time.perf_counter() - start)
                self.last_loss = record["loss"]
            if main and cfg.sample_every and self.step % cfg.sample_every == 0:
                self._sample_grid()
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < cfg.steps:
                self.save_checkpoint()

        try:
            self.stage.run(lambda step: self._backward(), on_step, postfix_every=1, record=False)
        finally:
            log.close()
            self._batches = None
        self.pipe.eval()
        self.seconds = time.perf_counter() - start
        self._check_ranks_agree()
        self.save_checkpoint()
        if main:
            self.pipe.save(self.out, card=self._card())
        self.world.barrier()
        return self.pipe

    def _loader(self) -> Iterator[tuple[list[int], list[Sample]]] | None:
        """Samples of every remaining micro-batch, read ahead by ``num_workers`` processes; None for 0."""
        if self.cfg.num_workers == 0:
            return None
        batches = _Batches(self)
        loader = torch.utils.data.DataLoader(
            _Reads(self.order),
            batch_sampler=batches,
            num_workers=self.cfg.num_workers,
            collate_fn=_as_list,
            # Its own generator: seeding the workers from torch's global one would shift dropout's draws.
            generator=torch.Generator().manual_seed(0),
        )
        return zip(batches, loader, strict=False)

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
                "skipped_steps": self.stage.skipped,
                "seconds": round(getattr(self, "seconds", 0.0), 1),
                "device": str(self.device),
                "world_size": self.world.world_size,
            },
        }

    def _write_run_file(self, path: Path) -> None:
        """``run.toml``: the resolved run, with the Python-given source's own config where it has one.

        A source given to ``train(source=...)`` is written as its registry name and config when it
        was built from one (an ``array`` from a ``.npy`` path), so ``sciddpm train run.toml`` reruns
        the run; otherwise a comment at the top says which Python object the data came from.
        """
        run = self.run
        spec = _registered_spec(self.source) if run.data is None else None
        if spec is not None:
            run = load_run({**dump_run(run), "data": spec})
        dump_run(run, path)
        if run.data is None and path.suffix.lower() == ".toml":
            described = json.dumps(dict(self.source.describe()), default=str)
            note = (
                f"# The data were given from Python: {type(self.source).__name__} {described}\n"
                '# Add a [data] section (e.g. type = "array", path = "fields.npy") to rerun this file with\n'
                "# `sciddpm train`.\n"
            )
            path.write_text(note + path.read_text(encoding="utf-8"), encoding="utf-8")

    def _write_manifest(self, resumed: bool) -> None:
        path = self.out / MANIFEST
        manifest = json.loads(path.read_text()) if resumed and path.is_file() else {}
        manifest.update(
            {
                "config": dump_run(self.run),
                "seed": self.cfg.seed,
                **persistence.versions(),
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
        """Rank 0 writes ``checkpoints/step_N/`` (atomic, checksummed, rotated); others wait.

        Raises NonFiniteLossError rather than checkpoint non-finite weights.
        """
        path = None
        if self.world.is_main:
            bad = [n for n, p in self.pipe.trainable.named_parameters() if not torch.isfinite(p).all()]
            if bad:
                raise NonFiniteLossError(f"refusing to checkpoint non-finite weights ({bad[0]})")
            path = write_checkpoint(self.out, self.step, self._write_state, self.cfg.keep_checkpoints)
        self.world.barrier()
        return path

    def _write_state(self, directory: Path) -> None:
        from safetensors.torch import save_file

        self.pipe.save(directory, card=self._card())
        tensors, meta = self.stage.state_tensors()
        # Layers that draw from torch's global generator (not sciddpm.seeding.keyed_rand) resume from it.
        tensors["rng.torch"] = torch.get_rng_state()
        save_file(tensors, str(directory / TRAINER_TENSORS))
        (directory / TRAINER_JSON).write_text(
            json.dumps({**meta, "run": dump_run(self.run)}, indent=2) + "\n"
        )

    def _restore(self) -> None:
        directory = self._resumed_from or find_checkpoint(self.out)
        if directory is None:
            raise FileNotFoundError(f"--resume: no intact checkpoint in {self.out / 'checkpoints'}")
        meta = json.loads((directory / TRAINER_JSON).read_text())
        current = dump_run(self.run)
        if meta["run"].get("data") is None:  # the data came from Python; run.toml may now name it
            current["data"] = None
        saved = meta["run"]
        if isinstance(saved.get("pipeline"), Mapping):  # VP fields an earlier version ignored
            saved["pipeline"] = saved_pipeline_config(saved["pipeline"])
        differing = _diff(saved, current)
        if differing:
            raise ValueError(
                "--resume: the run config differs from the checkpoint's in "
                + ", ".join(differing)
                + f"; resume with the original config ({self.out / 'run.toml'}) or start a new run"
            )
        if directory != self._resumed_from:  # else the pipeline was built from this checkpoint
            saved = Pipeline.load(directory, device=self.device)
            self.pipe.load_state_dict(saved.state_dict())
        tensors = persistence.read_tensors(directory / TRAINER_TENSORS)
        torch.set_rng_state(tensors.pop("rng.torch"))
        self.stage.load_state_tensors(tensors, meta, self.device)

    # ------------------------------------------------------------------ dry run

    def dry_run(self, steps: int = 3) -> dict[str, Any]:
        """Parameters, estimated memory per step, measured seconds per step, threads and machine load.

        Writes nothing. ``load`` is the 1-minute load average: above ``cores``, other jobs share the
        CPU and the seconds per step are slower than the run will be alone.
        """
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
        load, cores = machine_load()
        return {
            "threads": self.threads,
            "cores": cores,
            "load": load,
            "steps": self.cfg.steps,
            "lr": self.cfg.lr,
            "warmup_steps": self.cfg.warmup_steps,
            "final_lr": self.cfg.lr * self.cfg.min_lr_ratio,
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
            "samples": len(self.source),
            "sample_shape": list(self.source.sample_shape),
            "channel_names": list(getattr(self.source, "channel_names", None) or []),
        }


def _registered_spec(source: Any) -> dict[str, Any] | None:
    """``{"type": name, **config}`` of a source built from a registered component's config, or None."""
    config = getattr(source, "config", None)
    if config is None or not hasattr(config, "model_dump"):
        return None
    for entry in get_registry().entries("data"):
        try:
            if entry.config_class() is type(config) and isinstance(source, entry.factory()):
                return {"type": entry.full_name, **config.model_dump(mode="json")}
        except Exception:  # a plugin that cannot be imported here is not this source's
            continue
    return None


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
    """Train the pipeline of ``run`` (a run file, mapping or RunConfig) into ``out``; returns it.

    ``source`` overrides the run's data section with a source built in Python (e.g.
    ``ArraySource.from_array(x)``). The trained pipeline is also saved in ``out``. Under
    ``torchrun`` every process calls this; rank 0 writes. Raises the errors of :class:`Trainer`
    and :meth:`Trainer.fit`, and ConfigError for an invalid run.
    """
    trainer = Trainer(run, out, source=source, progress=progress, resume=resume)
    try:
        return trainer.fit(resume=resume)
    finally:
        trainer.world.leave()
