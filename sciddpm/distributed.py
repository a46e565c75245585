"""torch.distributed set-up for runs launched by ``torchrun``.

``torchrun`` sets RANK, WORLD_SIZE and LOCAL_RANK; sciddpm then joins the
process group (NCCL on GPUs, gloo on CPUs). Without them a run is a single
process and nothing here touches torch.distributed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

__all__ = ["World", "join_world"]


@dataclass(frozen=True)
class World:
    """Where this process stands in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 logs and writes; the others only compute."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def leave(self) -> None:
        if self.distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def join_world(device: torch.device) -> World:
    """Join the process group described by torchrun's environment, if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return World()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend)
    return World(rank, world_size, local_rank)
