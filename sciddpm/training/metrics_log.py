"""``metrics.jsonl`` of a training run: the mean loss, LR and per-noise-level loss between log lines.

Only rank 0 writes it; the trainer hands every step's result to :class:`MetricsLog`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from sciddpm.training.stage import StepResult

__all__ = ["MetricsLog"]


class MetricsLog:
    """Accumulates step results and writes one JSON line per log interval to ``path`` (None: keep none).

    ``bins`` splits diffusion time [0, 1] into equal bins for the per-noise-level loss. Each line
    holds ``step``, the mean finite ``loss`` since the last line, the last ``lr`` and
    ``grad_norm``, ``skipped_steps``, ``seconds`` and ``loss_by_t`` (None for an empty bin).
    """

    def __init__(self, path: Path | None, bins: int) -> None:
        self.file = path.open("a", encoding="utf-8") if path is not None else None
        self.bins = bins
        self.sums = torch.zeros(bins, dtype=torch.float64)
        self.counts = torch.zeros(bins, dtype=torch.float64)
        self.window: list[float] = []
        self.last: StepResult | None = None

    def add(self, result: StepResult) -> None:
        """Count one step's result; a step skipped for a non-finite loss adds only its LR and norm."""
        self.last = result
        if not math.isfinite(result.loss):
            return
        per_sample, t = result.info
        index = (t.cpu() * self.bins).long().clamp(0, self.bins - 1)
        self.sums.index_add_(0, index, per_sample.cpu().double())
        self.counts.index_add_(0, index, torch.ones_like(index, dtype=torch.float64))
        self.window.append(result.loss)

    def flush(self, step: int, skipped: int, seconds: float) -> dict[str, Any]:
        """Write (when there is a file) and return the line for the steps since the last one."""
        assert self.last is not None
        record = {
            "step": step,
            "loss": sum(self.window) / len(self.window) if self.window else None,
            "lr": self.last.lr,
            "grad_norm": self.last.grad_norm,
            "skipped_steps": skipped,
            "seconds": seconds,
            "loss_by_t": [
                None if c == 0 else float(s / c) for s, c in zip(self.sums, self.counts, strict=True)
            ],
        }
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        self.window.clear()
        self.sums.zero_()
        self.counts.zero_()
        return record

    def close(self) -> None:
        """Close the file."""
        if self.file is not None:
            self.file.close()
