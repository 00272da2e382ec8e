"""How far a run is and how long the rest will take, from measured times only.

A stage's time is known only when this results folder has timed that very work before: its
``timings.json`` holds the stage and either the stage's ``.done`` marker carries the stage's current
hash (same model, data and settings) or ``run.json`` records the same config and weights (a rerun
with ``--from``, or a resume after a failure). Nothing is extrapolated from one stage to another: the
cost of one prompt pass differs up to an order of magnitude between stages (on the tiny model: 14 ms
in eval, 23 ms in icl, 110 ms in means; training steps and patched CMA passes differ again), so a fresh run says that it has no estimate yet, and the
progress bars show each step's own rate and remaining time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from mmfv.io import read_json


def earlier_timings(out: Path, names: Sequence[str], hashes: Mapping[str, str], config_hash: str, weights: str) -> dict[str, float]:
    """Seconds each of ``names`` took when this folder last ran the same work (see the module
    docstring); stages without such a timing are absent. Read before the run changes the folder."""
    try:
        t = read_json(out / "timings.json") if (out / "timings.json").exists() else {}
        meta = read_json(out / "run.json") if (out / "run.json").exists() else {}
    except ValueError:  # damaged files: no estimate, the runner reports the damage itself
        return {}
    if not isinstance(t, dict) or not isinstance(meta, dict):
        return {}
    same_config = meta.get("config_hash") == config_hash and meta.get("weights") == weights
    known = {}
    for name in names:
        v = t.get(name)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
            continue
        marker = out / name / ".done"
        same_stage = marker.exists() and marker.read_bytes().decode(errors="replace").strip() == hashes.get(name)
        if same_stage or same_config:
            known[name] = float(v)
    return known


def duration(seconds: float) -> str:
    """A short human duration: ``41 s``, ``2.5 min``, ``1.3 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    """The run's stages (``todo``, in order; ``done``: those finished already, to be skipped) and the
    earlier timings ``known``; gives the lines the runner logs: the header's ETA, each stage's own
    estimate, and where the run stands after each stage."""

    def __init__(self, todo: Sequence[str], known: Mapping[str, float], done: Sequence[str] = ()) -> None:
        self.todo = list(todo)
        self.known = dict(known)
        self.finished: list[str] = [n for n in todo if n in done]  # finished before this run: skipped, no time left

    def left(self, names: Sequence[str]) -> float | None:
        """Seconds ``names`` should take, or None when one of them has no earlier timing."""
        if any(n not in self.known for n in names):
            return None
        return sum(self.known[n] for n in names)

    def _remaining(self) -> list[str]:
        return [n for n in self.todo if n not in self.finished]

    def eta(self) -> str:
        """For the run's header line: the ETA of the stages still to run, or why there is none."""
        rest = self._remaining()
        if not rest:
            return "nothing to run"
        s = self.left(rest)
        if s is not None:
            return f"ETA ~{duration(s)} (from this folder's earlier timings of the same work)"
        return f"ETA: none yet, {self._unknown(rest)} (the progress bars show each step's rate)"

    def stage(self, name: str) -> str:
        """For a stage's start line: its earlier time, when known ('' otherwise)."""
        return f" (took {duration(self.known[name])} last time)" if name in self.known else ""

    def done(self, name: str, elapsed: float) -> str:
        """Record ``name`` as finished (or skipped); where the run stands: stages done, time since the
        run started (``elapsed`` seconds), and the time left when every remaining stage has a timing."""
        if name not in self.finished:
            self.finished.append(name)
        rest = self._remaining()
        line = f"{len(self.finished)}/{len(self.todo)} stages, {duration(elapsed)} so far"
        if not rest:
            return line
        s = self.left(rest)
        return line + (f", ~{duration(s)} left" if s is not None else f", time left unknown ({self._unknown(rest)})")

    def _unknown(self, rest: list[str]) -> str:
        missing = [n for n in rest if n not in self.known]
        return "first run of this work here" if len(missing) == len(rest) else f"no earlier timing of {', '.join(missing)} here"
