"""CMA speed: the reference (published) engine vs the fast KV-cached engine, side by side.

Prints the AIE agreement, the speed ratio, the fast engine's ratio to the limit (the same passes —
one prompt pass + the batched last-token passes — with no patching at all), and the attribution-
patching screening estimate with its rank correlation to the exact AIE (an estimate, not exact).
Last line: ``cma speedup <x>x, limit ratio <y>x, max abs AIE diff <e>``.

    python benchmarks/cma_speed.py [--model tiny] [--relation left] [--n-cma 25] [--shots 5]
    python benchmarks/cma_speed.py --model smolvlm-256m-random --n-mean 4 --n-cma 2 --shots 4 --no-screen

``--model`` takes anything ``load_model`` does, or a real-sized random-weight model from
benchmarks/real_size.py (SmolVLM-256M dimensions). Both engines start from the same warm per-image
feature cache; the line ``vision tower`` shows each image is encoded once however many heads are patched.
"""

from __future__ import annotations

import argparse
import time

import torch

from mmfv import cma
from mmfv import prompts as P
from mmfv import relations as R
from mmfv.settings import DataSettings

try:
    from real_size import load  # run as a script: benchmarks/ is on sys.path
except ImportError:  # imported as benchmarks.cma_speed
    from benchmarks.real_size import load


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--relation", default="left")
    ap.add_argument("--n-mean", type=int, default=100)
    ap.add_argument("--n-cma", type=int, default=25)
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=8, help="prompts per fast-engine batch")
    ap.add_argument("--heads-per-batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-screen", action="store_true", help="skip attribution patching (its backward is slow on big models)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    lmm = load(a.model)
    data = DataSettings()
    items = data.items(lmm, "eval", R.CARDINAL)
    clean = P.build("clean", items[a.relation], items, a.shots, a.n_mean, data.seed)
    corrupt = P.build("corrupted", items[a.relation], items, a.shots, a.n_cma, data.seed + 1)
    means, _ = cma.mean_activations(lmm, clean)
    L, H = lmm.n_layers, lmm.n_heads
    print(f"model {lmm.model_id}: {L} layers x {H} heads; {a.n_cma} corrupted {a.shots}-shot prompts of {lmm.encode(corrupt[:1]).length} tokens; relation {a.relation}")

    calls: list[int] = []
    counting = hasattr(lmm, "_features")
    if counting:  # count vision-tower runs (HF adapter)
        inner = lmm._features
        lmm._features = lambda px: calls.append(1) or inner(px)
    t0 = time.perf_counter()
    lmm.encode(corrupt)  # warm the image-feature cache for both engines alike
    t_img = time.perf_counter() - t0
    n_warm = len(calls)
    t0 = time.perf_counter()
    ref = torch.stack([cma.ie_reference(lmm, p, means) for p in corrupt])
    t_ref = time.perf_counter() - t0

    t0 = time.perf_counter()
    fast = torch.cat([cma.ie_fast(lmm, corrupt[i : i + a.batch_size], means, a.heads_per_batch) for i in range(0, len(corrupt), a.batch_size)])
    t_fast = time.perf_counter() - t0

    # The limit: the same passes without any patching hooks.
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(corrupt), a.batch_size):
            b = lmm.encode(corrupt[i : i + a.batch_size])
            pre = lmm.prefix(b)
            lmm.last(pre, 1)
            for s in range(0, L * H, a.heads_per_batch):
                lmm.last(pre, min(a.heads_per_batch, L * H - s))
    t_lim = time.perf_counter() - t0

    est = None
    if not a.no_screen:
        t0 = time.perf_counter()
        est = cma.attribution_patching(lmm, corrupt, means)
        t_ap = time.perf_counter() - t0

    diff = float((fast.mean(0) - ref.mean(0)).abs().max())
    print(f"reference engine: {t_ref:8.2f}s  ({a.n_cma * (1 + L * H)} full passes, batch 1)")
    print(f"fast engine:      {t_fast:8.2f}s  (KV cache of T-1 positions, {a.heads_per_batch} heads per last-token batch)")
    print(f"limit (no hooks): {t_lim:8.2f}s")
    if counting:
        print(f"vision tower:     {n_warm} runs ({t_img:.2f}s) to encode the corrupted prompts' images, {len(calls) - n_warm} during both engines")
    if est is not None:
        rho = cma.spearman(est.mean(0), ref.mean(0))
        print(f"attribution patching (screening estimate, not exact): {t_ap:.2f}s, Spearman rho vs exact AIE {rho:.3f}")
    print(f"max abs IE diff per prompt {float((fast - ref).abs().max()):.2e} (largest |IE| {float(ref.abs().max()):.2e})")
    print(f"cma speedup {t_ref / t_fast:.1f}x, limit ratio {t_fast / t_lim:.2f}x, max abs AIE diff {diff:.2e}")


if __name__ == "__main__":
    main()
