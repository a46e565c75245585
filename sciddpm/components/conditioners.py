"""Built-in conditioners: none, and a learned class-label embedding with a null class.

The null class is what classifier-free guidance (Ho & Salimans 2022) uses as the
unconditional input; :meth:`Conditioner.drop` swaps it in for condition dropout.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from sciddpm.interfaces import Conditioner, Conditioning

__all__ = ["ClassLabel", "ClassLabelConfig", "Unconditional", "UnconditionalConfig"]


class UnconditionalConfig(BaseModel):
    """No conditioning; no options."""

    model_config = ConfigDict(extra="forbid")


class Unconditional(nn.Module, Conditioner):
    """No conditioning: every part of the :class:`Conditioning` is absent."""

    def __init__(self, config: UnconditionalConfig | None = None) -> None:
        super().__init__()
        self.config = config or UnconditionalConfig()

    def forward(self, raw: Any = None, batch_size: int = 0) -> Conditioning:
        """An empty :class:`~sciddpm.interfaces.Conditioning`, whatever ``raw`` is."""
        return Conditioning()

    def null(self, batch_size: int) -> Conditioning:
        """An empty :class:`~sciddpm.interfaces.Conditioning`."""
        return Conditioning()

    def collate(self, raws: list[Any]) -> None:
        """None: unconditional samples carry no condition to batch."""
        return None


class ClassLabelConfig(BaseModel):
    """A learned embedding of integer class labels, added to the noise-level embedding."""

    model_config = ConfigDict(extra="forbid")

    num_classes: int | None = Field(
        default=None,
        ge=1,
        description="Number of classes K (labels 0..K-1); filled from the data source by the pipeline.",
    )
    dim: int = Field(default=128, ge=1, description="Size of the class embedding vector.")


class ClassLabel(nn.Module, Conditioner):
    """Class label → ``vector`` of size ``dim``; index ``num_classes`` is the null class.

    ``forward`` takes a list of ints, an integer tensor or array ``(B,)``, or one int for the
    whole batch; ``None`` gives the null (unconditional) embedding.
    """

    def __init__(self, config: ClassLabelConfig) -> None:
        super().__init__()
        if config.num_classes is None:
            raise ValueError(
                "ClassLabel needs num_classes: set it in the conditioner config "
                '({"type": "class_label", "num_classes": K}) or use a data source with labels, '
                "from which the pipeline fills it"
            )
        self.config = config
        self.num_classes = config.num_classes
        self.null_index = config.num_classes
        self.vector_dim = config.dim
        self.embedding = nn.Embedding(config.num_classes + 1, config.dim)

    def labels(self, raw: Any, batch_size: int) -> torch.Tensor:
        """Validated LongTensor ``(batch_size,)`` of labels on the module's device."""
        device = self.embedding.weight.device
        if isinstance(raw, (int, np.integer)) and not isinstance(raw, bool):
            y = torch.full((batch_size,), int(raw), dtype=torch.long, device=device)
        else:
            t = raw if isinstance(raw, torch.Tensor) else torch.as_tensor(np.asarray(raw))
            if t.dtype == torch.bool or t.is_complex():
                raise TypeError(f"class labels must be integers, got a {t.dtype} tensor")
            if t.is_floating_point() and not bool((t == t.round()).all()):
                raise TypeError("class labels must be integers, got non-integer values")
            y = t.to(device=device, dtype=torch.long).reshape(-1)
            if y.shape[0] != batch_size:
                raise ValueError(f"got {y.shape[0]} class labels for a batch of {batch_size}")
        bad = (y < 0) | (y >= self.num_classes)
        if bool(bad.any()):
            label = int(y[bad][0])
            raise ValueError(
                f"class label {label} is out of range; valid labels are 0..{self.num_classes - 1} "
                f"(num_classes={self.num_classes})"
            )
        return y

    def forward(self, raw: Any, batch_size: int) -> Conditioning:
        """``Conditioning(vector=(batch_size, dim))``: the embedding of each label (see :meth:`labels`).

        None gives :meth:`null`; raises as :meth:`labels` for bad labels.
        """
        if raw is None:
            return self.null(batch_size)
        return Conditioning(vector=self.embedding(self.labels(raw, batch_size)))

    def null(self, batch_size: int) -> Conditioning:
        """The null class's embedding ``(batch_size, dim)``: the unconditional input of guidance."""
        idx = torch.full(
            (batch_size,), self.null_index, dtype=torch.long, device=self.embedding.weight.device
        )
        return Conditioning(vector=self.embedding(idx))

    def collate(self, raws: list[Any]) -> torch.Tensor:
        """The samples' labels as a LongTensor ``(B,)``; raises ValueError naming a sample without one."""
        missing = [i for i, r in enumerate(raws) if r is None]
        if missing:
            raise ValueError(
                f"sample {missing[0]} of the batch has no class label; the class_label conditioner "
                "needs a data source whose samples carry labels"
            )
        return torch.as_tensor([int(r) for r in raws], dtype=torch.long)

    def extra_repr(self) -> str:
        """The class count, embedding width and null index, for ``repr``."""
        return f"num_classes={self.num_classes}, dim={self.vector_dim}, null_index={self.null_index}"
