"""The whole default ``mmfv run`` of two commits, side by side on this machine: wall-clock and CPU
seconds per run and each stage's seconds (timings.json), the two alternating, ``--repeats`` runs each.

Each run is a fresh process (``python -m mmfv run --out <tmp> --quiet``) whose sources are the
commit's ``src/`` (``git archive``; the commit's own shipped weights included), so dependencies are
this environment's. Stages one commit lacks are shown as "-"; the last line gives the ratio of the
median totals, and of the stages both commits run.

    python benchmarks/whole_run.py [--before 40cb467] [--after HEAD] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sources(rev: str, into: Path) -> Path:
    """``src/`` of commit ``rev`` extracted under ``into``."""
    into.mkdir(parents=True)
    tar = into / "src.tar"
    with tar.open("wb") as f:
        subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev, "src"], stdout=f, check=True)
    with tarfile.open(tar) as t:
        t.extractall(into, filter="data")
    tar.unlink()
    return into / "src"


def one_run(src: Path, out: Path) -> tuple[float, float, dict[str, float]]:
    """Wall and CPU seconds of one default run with sources ``src``, and its stage timings."""
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(src)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mmfv", "run", "--out", str(out), "--quiet"], env=env, check=True, cwd=out.parent,
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, json.loads((out / "timings.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default="40cb467", help="the commit before the speed work (default: main before issue 19)")
    ap.add_argument("--after", default="HEAD")
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mmfv-whole-run-"))
    try:
        revs = {"before": a.before, "after": a.after}
        srcs = {k: sources(r, tmp / k) for k, r in revs.items()}
        runs: dict[str, list] = {k: [] for k in revs}
        for i in range(a.repeats):
            for k in revs:
                runs[k].append(one_run(srcs[k], tmp / f"{k}-out"))
                w, c, _ = runs[k][-1]
                print(f"run {i + 1} {k:<6} ({revs[k]}): wall {w:7.1f} s  cpu {c:7.1f} s", flush=True)
        stages = list(dict.fromkeys(s for k in revs for _, _, t in runs[k] for s in t))
        med = {k: {s: statistics.median(t.get(s, float("nan")) for _, _, t in runs[k]) for s in stages} for k in revs}
        print(f"\nmedian of {a.repeats} runs each   before ({a.before})   after ({a.after})")
        for s in stages:
            cells = ["       -" if all(s not in t for _, _, t in runs[k]) else f"{med[k][s]:8.1f}" for k in revs]
            print(f"  stage {s:<12} {cells[0]:>18} {cells[1]:>18}")
        wall = {k: statistics.median(w for w, _, _ in runs[k]) for k in revs}
        cpu = {k: statistics.median(c for _, c, _ in runs[k]) for k in revs}
        both = [s for s in stages if all(any(s in t for _, _, t in runs[k]) for k in revs)]
        common = {k: sum(med[k][s] for s in both) for k in revs}
        print(f"  wall {wall['before']:26.1f} {wall['after']:18.1f}\n  cpu  {cpu['before']:26.1f} {cpu['after']:18.1f}")
        print(f"whole run before/after: wall {wall['before'] / wall['after']:.2f}x, cpu {cpu['before'] / cpu['after']:.2f}x; "
              f"stages both run ({len(both)}): {common['before'] / common['after']:.2f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
