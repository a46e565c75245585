"""One optimisation stage, shared by every trainer: the diffusion model, the VAE, CLIP, plugins' models.

A :class:`Stage` owns what every training loop needs around its loss: AdamW under linear warm-up
and cosine decay (:func:`lr_at`), gradient clipping, a guard that skips steps with a NaN/inf loss
or gradient and stops after too many in a row, an optional EMA copy (:class:`EMA`), a progress
bar, and the optimizer state a checkpoint needs to resume (:meth:`Stage.state_tensors`). A stage
keeps only its loss: it hands :meth:`Stage.run` a closure that computes the loss of one step and
calls ``backward`` on it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from sciddpm.progress import progress_bar

__all__ = ["EMA", "LRSchedule", "NonFiniteLossError", "Stage", "StepResult", "decay_groups", "lr_at"]


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps had a NaN/inf loss or gradient."""


class LRSchedule(Protocol):
    """A config with a warm-up + cosine learning rate (``min_lr_ratio`` optional, default 0)."""

    steps: int
    lr: float
    warmup_steps: int


def lr_at(step: int, cfg: LRSchedule) -> float:
    """Linear warm-up to ``cfg.lr`` over ``warmup_steps``, then cosine decay to ``min_lr_ratio * lr``.

    The cosine schedule of Loshchilov & Hutter 2017 (SGDR) without restarts, after the linear
    warm-up of Goyal et al. 2017. ``step`` counts from 0.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(cfg.steps - cfg.warmup_steps, 1)
    progress = min((step - cfg.warmup_steps) / span, 1.0)
    floor = getattr(cfg, "min_lr_ratio", 0.0)
    return cfg.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


class EMA:
    """An exponential moving average of ``live``'s parameters in ``ema`` (Polyak averaging).

    Buffers are copied. The decay is warmed up as ``min(decay, (1 + step) / (10 + step))``
    (Tarvainen & Valpola 2017; diffusers' EMAModel), so early averages are not dominated by the
    initial weights. ``ema`` and ``live`` must have the same structure; raises ValueError otherwise.
    """

    def __init__(self, ema: nn.Module, live: nn.Module, decay: float) -> None:
        # Pairs collected once: walking the module tree every step costs more than the update on
        # small models. Loading a checkpoint copies in place, so these references stay valid.
        try:
            self.params = list(zip(ema.parameters(), live.parameters(), strict=True))
            self.buffers = list(zip(ema.buffers(), live.buffers(), strict=True))
        except ValueError:
            raise ValueError("the EMA copy and the live module have different parameters") from None
        self.decay = decay

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Move the average towards the live weights after optimizer step ``step`` (from 0)."""
        decay = min(self.decay, (1 + step) / (10 + step))
        for ema, live in self.params:
            ema.lerp_(live.detach(), 1 - decay)
        for ema, live in self.buffers:
            ema.copy_(live)


@dataclass
class StepResult:
    """What one optimizer step gave: the loss, the gradient norm before clipping, whether it was skipped,
    and whatever the stage's closure returned besides the loss (``info``)."""

    step: int
    loss: float
    grad_norm: float
    skipped: bool
    lr: float
    info: Any = None


@dataclass
class Stage:
    """AdamW with warm-up + cosine LR, clipping, a non-finite guard, optional EMA and a progress bar.

    ``params`` are parameters or AdamW parameter groups (dicts, e.g. with their own weight decay);
    ``schedule`` gives ``steps``, ``lr``, ``warmup_steps`` (and ``min_lr_ratio``) for :func:`lr_at`.
    ``grad_clip`` None does not clip (the norm is still measured); ``max_nonfinite`` consecutive
    NaN/inf steps raise :class:`NonFiniteLossError` (None: never, the step is still skipped).
    ``after_step`` runs after each optimizer update (e.g. clamping CLIP's logit scale); ``ema``
    averages the weights after each update. ``progress`` True shows a bar on a terminal and plain
    lines in a log (:func:`sciddpm.progress.progress_bar`), False nothing, None the bar on a
    terminal only. ``name`` labels the bar and the errors; ``hint`` ends the non-finite error
    with what to check.
    """

    name: str
    params: Iterable[nn.Parameter] | Iterable[dict[str, Any]]
    schedule: LRSchedule
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float | None = 1.0
    max_nonfinite: int | None = 5
    ema: EMA | None = None
    after_step: Callable[[], None] | None = None
    progress: bool | None = None
    hint: str = "check the learning rate and the data for extreme values"
    step: int = field(default=0, init=False)
    skipped: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        groups = list(self.params)
        self.optimizer = torch.optim.AdamW(
            groups, lr=self.schedule.lr, betas=self.betas, eps=self.eps, weight_decay=self.weight_decay
        )
        self.parameters = [p for g in self.optimizer.param_groups for p in g["params"]]
        self._bad = 0

    def lr(self, step: int | None = None) -> float:
        """The learning rate at ``step`` (default: the next step)."""
        return lr_at(self.step if step is None else step, self.schedule)

    def update(self, closure: Callable[[], tuple[float, Any]]) -> StepResult:
        """One optimizer step: set the LR, zero the gradients, ``closure()``, clip, guard, update, EMA.

        ``closure`` computes the step's loss, calls ``backward`` on it and returns ``(loss value,
        info)``. A NaN/inf loss or gradient norm skips the update (the gradients are dropped);
        raises NonFiniteLossError after ``max_nonfinite`` such steps in a row.
        """
        lr = self.lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss, info = closure()
        clip = self.grad_clip if self.grad_clip is not None else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.parameters, clip))
        skipped = not (math.isfinite(loss) and math.isfinite(grad_norm))
        if skipped:
            self.skipped += 1
            self._bad += 1
            self.optimizer.zero_grad(set_to_none=True)
            if self.max_nonfinite is not None and self._bad >= self.max_nonfinite:
                raise NonFiniteLossError(
                    f"{self.name}: {self._bad} steps in a row (up to step {self.step}) had a NaN/inf loss "
                    f"or gradient; {self.hint}"
                )
        else:
            self._bad = 0
            self.optimizer.step()
            if self.after_step is not None:
                self.after_step()
            if self.ema is not None:
                self.ema.update(self.step)
        result = StepResult(self.step, loss, grad_norm, skipped, lr, info)
        self.step += 1
        return result

    def run(
        self,
        closure: Callable[[int], tuple[float, Any]],
        on_step: Callable[[StepResult], None] | None = None,
        *,
        postfix_every: int = 10,
        record: bool = True,
    ) -> list[float]:
        """Step from ``self.step`` to ``schedule.steps``; returns the loss of every step run (if ``record``).

        ``closure(step)`` computes and back-propagates step ``step``'s loss (see :meth:`update`);
        ``on_step(result)`` sees every step (logs, checkpoints). The bar shows the mean loss of the
        last 50 finite steps and the LR every ``postfix_every`` steps.
        """
        total = self.schedule.steps
        bar = progress_bar(total, self.name, self.progress, initial=self.step)
        losses: list[float] = []
        recent: list[float] = []
        try:
            while self.step < total:
                result = self.update(lambda: closure(self.step))
                if record:
                    losses.append(result.loss)
                if math.isfinite(result.loss):
                    recent = [*recent[-49:], result.loss]
                if (result.step % postfix_every == 0 or self.step == total) and recent:
                    bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}", lr=f"{result.lr:.2e}")
                bar.update(1)
                if on_step is not None:
                    on_step(result)
        finally:
            bar.close()
        return losses

    def state_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The optimizer state as ``(tensors, json_meta)`` for a checkpoint: moments as tensors, rest JSON."""
        state = self.optimizer.state_dict()
        tensors: dict[str, torch.Tensor] = {}
        scalars: dict[str, dict[str, Any]] = {}
        for index, values in state["state"].items():
            for name, value in values.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optimizer.{index}.{name}"] = value.detach().contiguous().cpu()
                else:
                    scalars.setdefault(str(index), {})[name] = value
        meta = {
            "step": self.step,
            "skipped_steps": self.skipped,
            "optimizer": {"param_groups": state["param_groups"], "scalars": scalars},
        }
        return tensors, meta

    def load_state_tensors(
        self, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any], device: torch.device
    ) -> None:
        """Restore what :meth:`state_tensors` wrote (other keys of ``tensors`` are ignored)."""
        state: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            if not key.startswith("optimizer."):
                continue
            _, index, name = key.split(".", 2)
            # AdamW keeps its step counter on the CPU; moments live with the parameters.
            state.setdefault(int(index), {})[name] = value if name == "step" else value.to(device)
        optimizer = meta["optimizer"]
        for index, values in optimizer["scalars"].items():
            state.setdefault(int(index), {}).update(values)
        self.optimizer.load_state_dict({"state": state, "param_groups": optimizer["param_groups"]})
        self.step = int(meta["step"])
        self.skipped = int(meta.get("skipped_steps", 0))


def decay_groups(module: nn.Module, weight_decay: float) -> Sequence[dict[str, Any]]:
    """AdamW groups that decay weight matrices only (biases, norms and embeddings' scales do not decay)."""
    params = [p for p in module.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
