"""How method code runs, apart from what it computes: sharding over torchrun processes, progress
bars, logging, and checkpoint/resume — one helper that every stage hands to the method functions.

The method functions (means, indirect effects, evaluation, fine-tuning) describe work per batch of
prompts; an :class:`Execution` decides which process runs which batch, shows one labelled progress
bar, reduces the results so that every process ends with the full, identical tensors, and saves a
:class:`Checkpoint` after each unit of work. The default (:data:`LOCAL`) runs everything here,
silently, without checkpoints: the method functions are then plain functions of model + prompts.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from mmfv import dist

log = logging.getLogger("mmfv.run")


class CheckpointError(ValueError):
    """A checkpoint cannot be used: unreadable, or written by other work."""


# --- checkpoint format: safetensors for tensors, JSON for the rest; nothing is unpickled ------------
def _pack(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().cpu().clone().contiguous()  # own storage: tied weights save apart
        return {"__tensor__": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _pack(v, tensors) for k, v in obj.items()}
        return {"__items__": [[_pack(k, tensors), _pack(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_pack(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_pack(v, tensors) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint a {type(obj).__name__}: use tensors, numbers, strings, lists and dicts")


def _unpack(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__tuple__" in obj:
            return tuple(_unpack(v, tensors) for v in obj["__tuple__"])
        if "__items__" in obj:
            return {_unpack(k, tensors): _unpack(v, tensors) for k, v in obj["__items__"]}
        return {k: _unpack(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unpack(v, tensors) for v in obj]
    return obj


class Checkpoint:
    """A resumable state in one ``.safetensors`` file: tensors as tensors, everything else (and the
    fingerprint of the work it belongs to) as JSON metadata. Loading never runs code."""

    def __init__(self, path: str | Path, fingerprint: dict[str, Any]) -> None:
        self.path = Path(path)
        self.fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True))  # as it reads back

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None when there is none; refuses another work's or a damaged file."""
        if not self.path.exists():
            return None
        from safetensors import safe_open
        from safetensors.torch import load_file

        try:
            with safe_open(str(self.path), "pt") as f:
                meta = f.metadata() or {}
            tensors = load_file(str(self.path))
            fp, state = json.loads(meta["fingerprint"]), json.loads(meta["state"])
        except Exception as e:  # noqa: BLE001 - any damage reads the same to the user
            raise CheckpointError(f"checkpoint {self.path} is unreadable ({type(e).__name__}): delete it to start that work over") from None
        if fp != self.fingerprint:
            raise CheckpointError(f"checkpoint {self.path} belongs to other work (prompts, settings or model differ): delete it or use another folder")
        return _unpack(state, tensors)

    def save(self, state: dict[str, Any]) -> None:
        """Write ``state`` atomically (rank 0 only under torchrun)."""
        from mmfv.io import write_safetensors

        tensors: dict[str, torch.Tensor] = {}
        packed = _pack(state, tensors)
        write_safetensors(self.path, tensors, {"fingerprint": json.dumps(self.fingerprint, sort_keys=True), "state": json.dumps(packed, sort_keys=True)})


# --- execution -----------------------------------------------------------------------------------
class Execution:
    """Sharding, progress and logging for method functions (see the module docstring)."""

    def __init__(self, progress: bool = False, logger: logging.Logger | None = None) -> None:
        self.progress = progress and dist.is_main()
        self.logger = logger
        self._labels: list[str] = []

    @contextlib.contextmanager
    def scope(self, label: str) -> Iterator[None]:
        """Label the progress bars of the work inside (e.g. the stage, then the relation)."""
        self._labels.append(label)
        try:
            yield
        finally:
            self._labels.pop()

    def info(self, msg: str, *args: Any) -> None:
        """A line for the run's log (log.txt and, unless quiet, the terminal)."""
        if self.logger is not None:
            self.logger.info(msg, *args)

    def bar(self, total: int, desc: str, initial: int = 0) -> tqdm:
        label = " ".join([*self._labels, desc])
        return tqdm(total=total, initial=initial, disable=not self.progress, desc=label, leave=False, dynamic_ncols=True)

    @staticmethod
    def _batches(n: int, batch_size: int) -> list[tuple[int, int]]:
        """This process's whole batches: batch j of the n items goes to rank j % world."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        starts = list(range(0, n, batch_size))
        return [(starts[j], min(starts[j] + batch_size, n)) for j in dist.shard(len(starts))]

    def sum_batches(self, fn: Callable[[int, int], tuple], n: int, batch_size: int, desc: str, zero: tuple) -> tuple:
        """``zero`` + Σ over batches of ``fn(lo, hi)`` (tuples of tensors / ints like ``zero``), in batch
        order, then summed over processes (every process takes part, with or without batches)."""
        total = list(zero)
        mine = self._batches(n, batch_size)
        with self.bar(len(mine), desc) as bar:
            for lo, hi in mine:
                total = [a + b for a, b in zip(total, fn(lo, hi))]
                bar.update(1)
        out = []
        for x in total:
            if isinstance(x, torch.Tensor):
                out.append(dist.all_sum(x))
            else:
                out.append(type(x)(dist.all_sum(torch.tensor(x)).item()))
        return tuple(out)

    def map_batches(self, fn: Callable[[int, int], tuple[torch.Tensor, ...]], n: int, batch_size: int, desc: str,
                    outputs: Sequence[tuple[torch.dtype, tuple[int, ...]]]) -> tuple[torch.Tensor, ...]:
        """Rows ``lo:hi`` of each output (dtype, trailing shape) come from ``fn(lo, hi)``; returns the
        full (n, ...) outputs on every process."""
        full = [torch.zeros((n, *tail), dtype=dt) for dt, tail in outputs]
        mine = self._batches(n, batch_size)
        with self.bar(len(mine), desc) as bar:
            for lo, hi in mine:
                for f, p in zip(full, fn(lo, hi)):
                    f[lo:hi] = p.cpu()
                bar.update(1)
        return tuple(dist.all_sum(f) for f in full)

    def rows(self, fn: Callable[[int, int], torch.Tensor], n: int, step: int, tail: Sequence[int], desc: str,
             checkpoint: Checkpoint | None = None, check: Callable[[torch.Tensor, int, int], None] | None = None) -> torch.Tensor:
        """(n, *tail) float rows, ``fn(s, e)`` giving rows s:e for chunks of ``step``; each round gives one
        chunk to each process, gathers the rows, runs ``check`` on them and saves ``checkpoint``. Chunks
        start at multiples of ``step`` from where a checkpoint left off, so a resumed run computes
        exactly the chunks an uninterrupted one would."""
        out = torch.zeros(n, *tail)
        done = 0
        state = checkpoint.load() if checkpoint else None
        if state is not None:
            done = int(state["done"])
            out[:done] = state["rows"][:done]
        chunks = [(s, min(s + step, n)) for s in range(done, n, step)]
        W = dist.world()
        with self.bar(n, desc, initial=done) as bar:
            for i in range(0, len(chunks), W):
                rnd = chunks[i : i + W]
                part = torch.zeros(n, *tail)
                if dist.rank() < len(rnd):
                    s, e = rnd[dist.rank()]
                    part[s:e] = fn(s, e)
                part = dist.all_sum(part) if W > 1 else part
                s0, e1 = rnd[0][0], rnd[-1][1]
                out[s0:e1] = part[s0:e1]
                if check is not None:
                    check(out[s0:e1], s0, e1)
                bar.update(e1 - done)
                done = e1
                if checkpoint is not None and dist.is_main():
                    checkpoint.save({"done": done, "rows": out})
        return out


LOCAL = Execution()
"""Everything in this process, no progress bars, no log: what the method functions use by default."""
