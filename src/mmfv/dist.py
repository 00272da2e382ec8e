"""Process-group primitives for scale-out (torchrun). A no-op in one process.

Under ``torchrun --nproc-per-node N -m mmfv run …`` every process runs the same stages;
:class:`mmfv.execution.Execution` splits the work into whole batches (rank r takes batches r, r+N,
…; CMA chunks round by round) and sums the partial results with :func:`all_sum`, so every process
ends with the full, identical tensors. Only rank 0 writes files. gloo on CPU, nccl on GPU.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as td


def init() -> None:
    """Join the process group torchrun describes (WORLD_SIZE > 1); otherwise do nothing."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not td.is_initialized():
        td.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def active() -> bool:
    return td.is_available() and td.is_initialized() and td.get_world_size() > 1


def world() -> int:
    return td.get_world_size() if active() else 1


def rank() -> int:
    return td.get_rank() if active() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        td.barrier()


def shard(n: int) -> list[int]:
    """Indices of the n units (batches) this process handles: r, r + world, …"""
    return list(range(rank(), n, world()))


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over processes (returned on every process)."""
    if not active():
        return t
    t = t.clone()
    td.all_reduce(t, op=td.ReduceOp.SUM)
    return t
