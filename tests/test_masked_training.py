"""Missing values (mask 0) do not reach the network: their fill value cannot change the loss."""

from __future__ import annotations

import torch
from tiny import TINY_UNET

from sciddpm.interfaces import DataSource, Sample
from sciddpm.training.trainer import Trainer


class FilledSource(DataSource):
    """Fixed random fields with a missing block filled with ``fill``."""

    sample_shape = (2, 8, 8)

    def __init__(self, fill: float) -> None:
        self.x = torch.randn(16, 2, 8, 8, generator=torch.Generator().manual_seed(0)) * 3 + 10
        self.mask = torch.ones_like(self.x)
        self.mask[:, 1, :3, :3] = 0  # e.g. land in an ocean field
        self.x[self.mask == 0] = fill

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> Sample:
        return Sample(x=self.x[i], mask=self.mask[i])


def test_fill_value_of_missing_points_does_not_change_the_loss(tmp_path) -> None:
    run = {"pipeline": {"encoder": {"type": "standardize"}, "denoiser": TINY_UNET},
           "train": {"steps": 1, "batch_size": 4}}  # fmt: skip
    losses = []
    for fill in (0.0, -1e4):
        torch.manual_seed(0)
        trainer = Trainer(run, tmp_path / str(fill), source=FilledSource(fill), progress=False)
        losses.append(trainer.micro_loss(0, 0)[1])
    torch.testing.assert_close(losses[0], losses[1])
