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

__all__ = [
    "THREADS_ENV",
    "World",
    "broadcast_from_rank0",
    "join_world",
    "machine_load",
    "resolve_device",
    "use_threads",
]

#: Environment variable with the torch thread count of every sciddpm run on this machine.
THREADS_ENV = "SCIDDPM_NUM_THREADS"


def use_threads(configured: int | None = None) -> int:
    """Set and return torch's CPU thread count: ``SCIDDPM_NUM_THREADS``, else ``configured``, else torch's.

    Under ``torchrun`` on the CPU with neither set, the cores are shared out between the local
    ranks, so two ranks on two cores do not run two threads each: thread oversubscription made a
    run 10-50x slower on a shared 2-core machine. Raises ValueError for a bad environment value.
    """
    text = os.environ.get(THREADS_ENV, "").strip()
    if text:
        if not text.isdigit() or int(text) < 1:
            raise ValueError(f"{THREADS_ENV}={text!r} must be a whole number of threads >= 1")
        threads: int | None = int(text)
    elif configured is not None:
        threads = configured
    else:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        threads = max(1, (os.cpu_count() or 1) // local) if local > 1 else None
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def machine_load() -> tuple[float, int]:
    """``(1-minute load average, CPU count)``; the load is 0 where the platform has none (Windows)."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    return load, os.cpu_count() or 1


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
