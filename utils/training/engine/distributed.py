"""Multi-process training with PyTorch DDP, started by `torchrun`.

    torchrun --standalone --nproc_per_node=4 -m utils train --preset small --max-steps 5000

torchrun sets RANK / LOCAL_RANK / WORLD_SIZE; `setup_distributed` then joins the process
group (NCCL on CUDA, one GPU per process; gloo on CPU). Without those variables (a notebook,
a plain `python -m utils train`) everything here is a no-op with world_size 1, so the
Trainer has one code path.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistributedContext:
    """Where this process stands: its rank among `world_size` processes, and its device."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    owns_process_group: bool = False  # we initialised it, so we destroy it

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints and draws the progress bar."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Run the block on rank 0 first, then on the other ranks, which find what rank 0
        made (a token cache, say) ready instead of making it again at the same time."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def all_reduce_mean(self, value: float) -> float:
        """Mean of `value` over all ranks (every rank gets the same result)."""
        if not self.enabled:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.item() / self.world_size

    def any_rank(self, flag: bool) -> bool:
        """True on every rank if `flag` is true on any rank (used to fail together)."""
        if not self.enabled:
            return flag
        tensor = torch.tensor([int(flag)], device=self._comm_device())
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return bool(tensor.item())

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value` on every rank (a new run's id must be the same everywhere)."""
        if not self.enabled:
            return value
        holder = [value]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def wrap(self, model: nn.Module) -> nn.Module:
        """DistributedDataParallel around `model` (which is returned as is without DDP)."""
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def _comm_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")


def launch_info() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun's environment; (0, 0, 1) without it."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    return rank, local_rank, world_size


def default_device(requested: str | None = None) -> torch.device:
    """`requested` if given, else CUDA, then Apple's MPS, then the CPU."""
    if requested:
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def setup_distributed(requested_device: str | None = None) -> DistributedContext:
    """Join torchrun's process group if launched by torchrun; pick this process's device."""
    rank, local_rank, world_size = launch_info()
    device = default_device(requested_device)
    if world_size == 1:
        return DistributedContext(device=device)
    if device.type == "cuda":
        if device.index is None:  # one GPU per process
            device = torch.device("cuda", _gpu_of_process(local_rank))
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise ValueError(f"distributed training needs CUDA or the CPU, not {device}; "
                         f"pass --device cuda or --device cpu")
    owns = not dist.is_initialized()
    context = DistributedContext(rank, local_rank, world_size, device, owns)
    if owns:
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
        # One group per process, kept for later fit() calls (joining twice under torchrun
        # hangs) and left at exit.
        atexit.register(cleanup_distributed, context)
    return context


def _gpu_of_process(local_rank: int) -> int:
    """The GPU index of this process: its local rank.

    NCCL needs its own GPU for each process on a machine; two ranks on one GPU fail deep
    inside NCCL ("Duplicate GPU detected"), so more processes than GPUs is refused here with
    what to change. A launcher that gives each process its own `CUDA_VISIBLE_DEVICES`
    (each then sees fewer GPUs than there are ranks) is trusted: rank modulo GPUs.
    """
    count = torch.cuda.device_count()
    if local_rank < count:
        return local_rank
    if os.environ.get("CUDA_VISIBLE_DEVICES"):
        return local_rank % count
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", local_rank + 1))
    raise ValueError(
        f"torchrun started {local_world} processes on this machine but it has {count} "
        f"GPU(s): NCCL needs one GPU per process. Fix: --nproc_per_node={count} "
        f"(or --device cpu to train on the CPU with gloo)")


def cleanup_distributed(context: DistributedContext) -> None:
    """Leave the process group if `setup_distributed` joined it."""
    if context.owns_process_group and dist.is_initialized():
        dist.destroy_process_group()
        context.owns_process_group = False


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under DDP (`.module`) and torch.compile (`._orig_mod`) wrappers,
    so that state-dict keys never carry `module.` or `_orig_mod.` prefixes."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model
