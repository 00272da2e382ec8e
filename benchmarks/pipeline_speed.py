"""Pipeline speed: the stages that inject vectors (eval, finetune, compose), each run by the reference
path (a hook on a full forward for every accuracy and training step) and by cached injection (each
prompt batch's prefix and last-token residuals computed once, only the layers after the injection
layer run), side by side in one process on one small config.

Each timing is a warm-up run and then ``--repeats`` runs (at least 3), the two paths alternating;
min and median wall-clock seconds and the median CPU seconds are printed, and the ratios reference /
cached of the medians (wall and CPU: on a shared machine the CPU ratio is the steadier one). Also timed: the layer
choices alone (composed vectors' layer sweeps and the analogies' layer choice, on val) and one
fine-tuning call. ``same results`` compares the two paths' results.json (eval, compose: equal
bytes expected; finetune: cached training rounds differently, ~1e-6 in the vector).

    python benchmarks/pipeline_speed.py [--model tiny] [--repeats 3] [--n 60] [--epochs 8] [--threads 1]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from mmfv import compose as C
from mmfv import config, evaluate, runner
from mmfv import prompts as P
from mmfv import relations as R
from mmfv.execution import Execution
from mmfv.finetune import FinetuneSettings, finetune
from mmfv.injection import Stems
from mmfv.io import read_json
from mmfv.stages import get
from mmfv.stages.base import Context
from mmfv.stages.compose import analogy_layers
from mmfv.stages.vectors import load as load_vectors

try:  # run as a script: benchmarks/ is on sys.path
    from timing import Timing, timed_pair
except ImportError:  # imported as benchmarks.pipeline_speed
    from benchmarks.timing import Timing, timed_pair

STAGES = ("eval", "finetune", "compose")


def small_config(model: str, n: int, epochs: int, cached: bool) -> Any:
    """The default pipeline, scaled down; ``cached`` switches every stage's cached injection."""
    return config.from_dict({
        "model": {"name": model},
        "data": {"eval_scenes": 300, "train_scenes": 400, "val_scenes": 300, "test_scenes": 300},
        "icl": {"shots": [0, 1], "n": 40},
        "cma": {"n_mean": 20, "n_cma": 4},
        "eval": {"n": n, "head_counts": list(range(1, 11)), "cached": cached},
        "finetune": {"sizes": [25, 50], "headline_size": 50, "epochs": epochs, "shots": [1, 2, 4], "n": n, "cached": cached},
        "compose": {"n": n, "shots": [1], "cached": cached},
    })


def line(name: str, tr: Timing, tc: Timing, same: str = "") -> None:
    print(f"{name:<40} {tr.min:8.2f} {tr.median:8.2f} {tr.cpu_median:8.2f}   {tc.min:8.2f} {tc.median:8.2f} {tc.cpu_median:8.2f}   "
          f"{tr.median / tc.median:6.1f}x {tr.cpu_median / tc.cpu_median:6.1f}x   {same}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per path after one warm-up (at least 3)")
    ap.add_argument("--n", type=int, default=60, help="val / test prompts per relation in eval, finetune and compose")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    if a.repeats < 3:
        ap.error("--repeats must be at least 3")
    torch.set_num_threads(a.threads)
    root = Path(tempfile.mkdtemp(prefix="mmfv-pipeline-speed-"))
    cfgs = {c: small_config(a.model, a.n, a.epochs, c) for c in (False, True)}
    outs = {False: root / "reference", True: root / "cached"}
    try:
        runner.run(cfgs[False], outs[False], until="eval", quiet=True)  # data, icl, means, cma, vectors (and eval): shared
        shutil.copytree(outs[False], outs[True])
        lmm = None
        ctxs = {}
        for c in (False, True):
            ctxs[c] = Context(cfgs[c], outs[c], Execution())
            ctxs[c]._lmm = lmm = lmm or ctxs[c].lmm  # one model for both paths
        print(f"model {lmm.model_id}; n = {a.n} prompts per relation and split, fine-tuning sizes 25/50 x {a.epochs} epochs; "
              f"warm-up + {a.repeats} runs per path, torch threads {a.threads}")
        print(f"{'':<40} {'reference path (s)':>26}   {'cached injection (s)':>26}   {'reference / cached':>14}")
        print(f"{'':<40} {'min':>8} {'median':>8} {'cpu':>8}   {'min':>8} {'median':>8} {'cpu':>8}   {'median':>7} {'cpu':>6}   same results")

        def stage_fn(name: str, c: bool) -> Callable[[], Any]:
            def run() -> Any:
                shutil.rmtree(outs[c] / name / "checkpoints", ignore_errors=True)  # no resuming: the whole work each time
                return get(name).run(ctxs[c])

            return run

        for name in STAGES:
            tr, tc = timed_pair(stage_fn(name, False), stage_fn(name, True), a.repeats)
            a_ref, a_c = (outs[c] / name / "results.json" for c in (False, True))
            same = "equal bytes" if a_ref.read_bytes() == a_c.read_bytes() else f"differ: {diff_summary(read_json(a_ref), read_json(a_c))}"
            line(f"stage {name}", tr, tc, same)

        ctx = ctxs[False]
        val = ctx.items("val", R.SPATIAL)
        fvs = load_vectors(ctx.input("vectors"), ctx.relations, lmm)
        tr, tc = timed_pair(lambda: layer_choice(lmm, fvs, val, a.n, ctx.seed, None), lambda: layer_choice(lmm, fvs, val, a.n, ctx.seed, Stems(lmm)),
                            a.repeats)
        line("layer choice (compose + analogies, val)", tr, tc, "equal" if layer_choice(lmm, fvs, val, a.n, ctx.seed, None) ==
             layer_choice(lmm, fvs, val, a.n, ctx.seed, Stems(lmm)) else "differ")

        rel = ctx.relations[0]
        train = P.build("zero-shot", ctx.items("train")[rel], ctx.items("train"), 0, 50, ctx.seed)
        zs_val = P.build("zero-shot", ctx.items("val")[rel], ctx.items("val"), 0, a.n, ctx.seed)
        layer = read_json(outs[False] / "eval" / "results.json")["relations"][rel]["best_layer"]
        s = FinetuneSettings(epochs=a.epochs)
        ft = {c: (lambda c=c: finetune(lmm, fvs[rel].vector, layer, train, zs_val, FinetuneSettings(epochs=a.epochs, cached=c))) for c in (False, True)}
        tr, tc = timed_pair(ft[False], ft[True], a.repeats)
        dv = float((ft[False]().vector - ft[True]().vector).abs().max())
        line(f"one fine-tune ({rel}, n=50, {s.epochs} epochs)", tr, tc, f"max |Δ vector| {dv:.1e}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def layer_choice(lmm: Any, fvs: dict, val: dict, n: int, seed: int, stems: Stems | None) -> list:
    """What the compose stage chooses layers with, on val: each composed vector's layer sweep, and per
    analogy family the mean accuracy of every item's vector at every layer."""
    out = []
    for rel in R.NOVEL:
        zv = P.build("zero-shot", val[rel], val, 0, n, seed)
        out.append(evaluate.layer_sweep(lmm, zv, C.composed(fvs, rel).vector, stems=stems))
    for ops, answers in ((R.CARDINAL, R.CARDINAL), (R.SPATIAL, R.NOVEL)):
        items = C.analogy_items(ops, answers)
        zs = {d: P.build("zero-shot", val[d], val, 0, min(n, 50), seed) for d in {d for *_, d in items}}
        out.append(analogy_layers(lmm, items, {(a, b, c): C.analogy_vector(fvs, a, b, c).vector for a, b, c, _ in items}, zs, 64, stems=stems))
    return out


def diff_summary(a: Any, b: Any, path: str = "") -> str:
    """The first differing key and the largest numeric difference between two results."""
    diffs: list[tuple[str, float]] = []

    def walk(x: Any, y: Any, p: str) -> None:
        if isinstance(x, dict) and isinstance(y, dict):
            for k in sorted(set(x) | set(y)):
                walk(x.get(k), y.get(k), f"{p}.{k}")
        elif isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
            for i, (u, v) in enumerate(zip(x, y)):
                walk(u, v, f"{p}[{i}]")
        elif isinstance(x, (int, float)) and isinstance(y, (int, float)) and not isinstance(x, bool):
            if x != y:
                diffs.append((p, abs(x - y)))
        elif x != y:
            diffs.append((p, float("nan")))

    walk(a, b, path)
    if not diffs:
        return "none"
    worst = max(diffs, key=lambda d: d[1] if d[1] == d[1] else float("inf"))
    return f"{len(diffs)} values, largest |Δ| {worst[1]:.4g} at {worst[0]}"


if __name__ == "__main__":
    main()
