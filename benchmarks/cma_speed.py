"""CMA speed: the reference (published) engine, the fast KV-cached engine and the layer-skipping
engine, side by side in one process, against the floor (the prompts' prefix pass alone).

Each timing is a warm-up run and then ``--repeats`` runs (at least 3); min and median are printed.
Also printed: each engine's largest IE difference from the reference, and (unless ``--no-screen``)
the attribution-patching screening estimate with its rank correlation to the exact AIE (an
estimate, not exact). Last line:
``cma skip/fast <x>x (cpu ...), skip/floor <y>x (cpu ...), reference/skip <z>x, max abs AIE diff <e>``
(medians of wall-clock and of CPU time).

    python benchmarks/cma_speed.py [--model tiny] [--relation left] [--n-cma 8] [--shots 5] [--repeats 3]
    python benchmarks/cma_speed.py --model smolvlm-256m-random --n-mean 4 --n-cma 2 --shots 4 --no-screen --no-reference

``--model`` takes anything ``load_model`` does, or a real-sized random-weight model from
benchmarks/real_size.py (SmolVLM-256M dimensions). Every engine starts from the same warm per-image
feature cache; the line ``vision tower`` shows each image is encoded once however many heads are patched.
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import torch

from mmfv import cma, rsa
from mmfv import prompts as P
from mmfv import relations as R
from mmfv.settings import DataSettings

try:  # run as a script: benchmarks/ is on sys.path
    from real_size import load
    from timing import timed
except ImportError:  # imported as benchmarks.cma_speed
    from benchmarks.real_size import load
    from benchmarks.timing import timed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--relation", default="left")
    ap.add_argument("--n-mean", type=int, default=100)
    ap.add_argument("--n-cma", type=int, default=8)
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=8, help="prompts per fast/skip-engine batch")
    ap.add_argument("--heads-per-batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per engine after one warm-up (at least 3)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-screen", action="store_true", help="skip attribution patching (its backward is slow on big models)")
    ap.add_argument("--no-reference", action="store_true", help="skip the reference engine (one full pass per head: hours on big models); "
                    "IE differences are then taken from the fast engine")
    a = ap.parse_args()
    if a.repeats < 3:
        ap.error("--repeats must be at least 3")
    torch.set_num_threads(a.threads)
    lmm = load(a.model)
    data = DataSettings()
    items = data.items(lmm, "eval", R.CARDINAL)
    clean = P.build("clean", items[a.relation], items, a.shots, a.n_mean, data.seed)
    corrupt = P.build("corrupted", items[a.relation], items, a.shots, a.n_cma, data.seed + 1)
    means, _ = cma.mean_activations(lmm, clean)
    L, H = lmm.n_layers, lmm.n_heads
    print(f"model {lmm.model_id}: {L} layers x {H} heads; {a.n_cma} corrupted {a.shots}-shot prompts of {lmm.encode(corrupt[:1]).length} tokens; "
          f"relation {a.relation}; warm-up + {a.repeats} runs each, torch threads {a.threads}")

    calls: list[int] = []
    counting = hasattr(lmm, "_features")
    if counting:  # count vision-tower runs (HF adapter)
        inner = lmm._features
        lmm._features = lambda px: calls.append(1) or inner(px)
    t0 = time.perf_counter()
    lmm.encode(corrupt)  # warm the image-feature cache for every engine alike
    t_img = time.perf_counter() - t0
    n_warm = len(calls)
    bs = a.batch_size
    batches = [corrupt[i : i + bs] for i in range(0, len(corrupt), bs)]

    def engine(name: str) -> Callable[[], torch.Tensor]:
        if name == "reference":
            return lambda: torch.stack([cma.ie_reference(lmm, p, means) for p in corrupt])
        fn = getattr(cma, f"ie_{name}")
        return lambda: torch.cat([fn(lmm, b, means, a.heads_per_batch) for b in batches])

    @torch.no_grad()
    def floor() -> None:  # what every exact engine must do at least: encode and run the prompts' prefix
        for b in batches:
            lmm.prefix(lmm.encode(b))

    base = "fast" if a.no_reference else "reference"
    rows = {name: timed(engine(name), a.repeats) for name in ((), ("reference",))[not a.no_reference] + ("fast", "skip")}
    rows["floor (prefix only)"] = timed(floor, a.repeats)
    ref = rows[base][1]
    fast, flo = rows["fast"][0], rows["floor (prefix only)"][0]
    print(f"{'':<20} {'wall min s':>10} {'median s':>9} {'cpu s':>8} {'/ fast':>7} {'/ floor':>8} {'cpu / fast':>11} {'cpu / floor':>12}  max |IE - {base}|")
    for name, (t, out) in rows.items():
        diff = f"{float((out - ref).abs().max()):.2e}" if isinstance(out, torch.Tensor) else ""
        print(f"{name:<20} {t.min:10.3f} {t.median:9.3f} {t.cpu_median:8.3f} {t.median / fast.median:7.2f} {t.median / flo.median:8.2f} "
              f"{t.cpu_median / fast.cpu_median:11.2f} {t.cpu_median / flo.cpu_median:12.2f}  {diff}")
    print(f"(reference: {a.n_cma * (1 + L * H)} full passes, batch 1; fast: KV cache of T-1 positions, {a.heads_per_batch} heads per "
          f"last-token batch through all {L} layers; skip: each row from its own layer on)")
    if counting:
        print(f"vision tower: {n_warm} runs ({t_img:.2f}s) to encode the corrupted prompts' images, {len(calls) - n_warm} during all engines")
    if not a.no_screen and not a.no_reference:
        t_ap, est = timed(lambda: cma.attribution_patching(lmm, corrupt, means), a.repeats)
        rho = rsa.spearman(est.mean(0).flatten(), ref.mean(0).flatten())
        print(f"attribution patching (screening estimate, not exact): median {t_ap.median:.2f}s, Spearman rho vs exact AIE {rho:.3f}")
    skip = rows["skip"][0]
    diff = max(float((rows[e][1].mean(0) - ref.mean(0)).abs().max()) for e in ("fast", "skip"))
    vs_ref = "" if a.no_reference else f", reference/skip {rows['reference'][0].median / skip.median:.1f}x"
    print(f"cma skip/fast {skip.median / fast.median:.2f}x (cpu {skip.cpu_median / fast.cpu_median:.2f}x), skip/floor {skip.median / flo.median:.2f}x "
          f"(cpu {skip.cpu_median / flo.cpu_median:.2f}x){vs_ref}, max abs AIE diff from {base} {diff:.2e}")


if __name__ == "__main__":
    main()
