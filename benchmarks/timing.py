"""Timing for the benchmarks: a warm-up run, then repeats; wall-clock and CPU time of each run.

On a shared machine the wall clock depends on the other processes; the process's CPU time (at one
torch thread, ``--threads 1``) much less, so both are printed and ratios are given for both.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class Timing:
    wall: list[float] = field(default_factory=list)  # seconds per timed run
    cpu: list[float] = field(default_factory=list)  # this process's CPU seconds per timed run

    @property
    def min(self) -> float:
        return min(self.wall)

    @property
    def median(self) -> float:
        return statistics.median(self.wall)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu)

    def run(self, fn: Callable[[], Any]) -> Any:
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        self.wall.append(time.perf_counter() - w)
        self.cpu.append(time.process_time() - c)
        return out


def timed(fn: Callable[[], Any], repeats: int) -> tuple[Timing, Any]:
    """``repeats`` timed runs after one warm-up run; the timing and the last result."""
    out, t = fn(), Timing()
    for _ in range(repeats):
        out = t.run(fn)
    return t, out


def timed_pair(a: Callable[[], Any], b: Callable[[], Any], repeats: int) -> tuple[Timing, Timing]:
    """Two ways of doing the same work: a warm-up run of each, then ``repeats`` runs alternating."""
    a(), b()
    ta, tb = Timing(), Timing()
    for _ in range(repeats):
        ta.run(a)
        tb.run(b)
    return ta, tb
