"""Scale-out over processes (torchrun): shard prompts, reduce results. A no-op in one process.

Under ``torchrun --nproc-per-node N -m mmfv run …`` every process runs the same stages; means, CMA
and evaluation split their prompts by index (rank r takes prompts r, r+N, …) and combine the
partial results so every process ends with the full, identical tensors. Only rank 0 writes files.
gloo on CPU, nccl on GPU.
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
    """Indices of the n items this process handles."""
    return list(range(rank(), n, world()))


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over processes (returned on every process)."""
    if not active():
        return t
    t = t.clone()
    td.all_reduce(t, op=td.ReduceOp.SUM)
    return t


def gather_rows(part: torch.Tensor, n: int) -> torch.Tensor:
    """Reassemble a (n, ...) tensor whose rows i were computed by rank i % world, from each
    rank's ``part`` (its rows in :func:`shard` order)."""
    if not active():
        return part
    full = torch.zeros((n, *part.shape[1:]), dtype=part.dtype)
    full[shard(n)] = part
    return all_sum(full)
