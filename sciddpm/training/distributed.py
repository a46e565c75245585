"""Where a run executes: the device, and the torch.distributed set-up for runs launched by ``torchrun``.

``torchrun`` sets RANK, WORLD_SIZE and LOCAL_RANK; sciddpm then joins the
process group (NCCL on GPUs, gloo on CPUs). Without them a run is a single
process and nothing here touches torch.distributed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["World", "broadcast_from_rank0", "join_world", "resolve_device"]


def resolve_device(name: str, field: str = "device") -> torch.device:
    """The device ``name`` ('auto' means CUDA when available, else CPU); ``field`` names it in errors.

    Raises ValueError for a CUDA device on a machine without CUDA, naming the field and the fix.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{field} is {name!r} but CUDA is not available; use 'auto' or 'cpu'")
    return device


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
        """More than one process takes part."""
        return self.world_size > 1

    def barrier(self) -> None:
        """Wait for every rank (nothing to wait for in a single process)."""
        if self.distributed:
            torch.distributed.barrier()

    def leave(self) -> None:
        """Leave the process group, if this process joined one."""
        if self.distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def join_world(device: torch.device) -> World:
    """Join the process group described by torchrun's environment, if any (gloo on CPU, NCCL on CUDA)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return World()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend)
    return World(rank, world_size, local_rank)


def broadcast_from_rank0(module: nn.Module) -> None:
    """Give every rank rank 0's parameters and buffers; a no-op outside a multi-process run.

    For stages each rank runs before training (the VAE, CLIP): GPU kernels are not bitwise
    deterministic, so without it ranks could encode or condition with slightly different models.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            moved = tensor.data.to(device) if device is not None else tensor.data
            dist.broadcast(moved, src=0)
            tensor.data.copy_(moved)
