"""KV-cache memory and time of the HF fast CMA path: the row-repeated cache (``cache="repeat"``, the
reference) against one shared prefix cache (``"shared"``, the default), on one few-shot prompt.

Printed per path: the prefix cache of the prompt batch, the most KV bytes a last-token forward's cache
held (repeat: the copies, grown by the last token; shared: the prefix plus the largest one layer's
own last-token rows, freed after that layer), their ratio, and the ``ie_fast`` time (warm-up, then ``--repeats``
runs, min and median; benchmarks/timing.py); then the largest IE difference between the paths.

    python benchmarks/memory.py [--model smolvlm-256m-random] [--shots 5] [--heads-per-batch 64] [--repeats 3]

Offline: the real-sized random SmolVLM-256M of benchmarks/real_size.py (set HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import argparse
import contextlib

import torch

from mmfv import cma
from mmfv import prompts as P
from mmfv import relations as R
from mmfv.models import hf, hf_cache
from mmfv.settings import DataSettings

try:  # run as a script: benchmarks/ is on sys.path
    from real_size import load
    from timing import timed
except ImportError:  # imported as benchmarks.memory
    from benchmarks.real_size import load
    from benchmarks.timing import timed

MiB = 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smolvlm-256m-random")
    ap.add_argument("--relation", default="left")
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--n-mean", type=int, default=2, help="clean prompts for the mean head activations")
    ap.add_argument("--heads-per-batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per path after one warm-up (at least 3)")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    if a.repeats < 3:
        ap.error("--repeats must be at least 3")
    torch.set_num_threads(a.threads)
    lmm = load(a.model)
    if not hasattr(lmm, "cache_mode"):
        ap.error(f"{a.model} is not a Hugging Face model: it has no KV cache modes")
    data = DataSettings()
    items = data.items(lmm, "eval", R.CARDINAL)
    clean = P.build("clean", items[a.relation], items, a.shots, a.n_mean, data.seed)
    prompt = P.build("corrupted", items[a.relation], items, a.shots, 1, data.seed + 1)
    means, _ = cma.mean_activations(lmm, clean)
    batch = lmm.encode(prompt)
    with torch.no_grad():
        prefix_bytes = hf_cache.kv_bytes(lmm.prefix(batch).cache)
    L, H = lmm.n_layers, lmm.n_heads
    print(f"model {lmm.model_id}: {L} layers x {H} heads; one corrupted {a.shots}-shot prompt of {batch.length} tokens; "
          f"{a.heads_per_batch} heads per last-token batch; warm-up + {a.repeats} runs, torch threads {a.threads}")
    print(f"prefix KV cache of the prompt batch: {prefix_bytes / MiB:.1f} MiB")

    peak = [0]
    real = hf.last_cache

    @contextlib.contextmanager
    def measured(*args):
        with real(*args) as cache:
            yield cache
        peak[0] = max(peak[0], hf_cache.kv_bytes(cache))

    hf.last_cache = measured
    rows = {}
    try:
        for mode in ("repeat", "shared"):
            lmm.cache_mode = mode
            peak[0] = 0
            t, ie = timed(lambda: cma.ie_fast(lmm, prompt, means, a.heads_per_batch), a.repeats)
            rows[mode] = (peak[0], t, ie)
    finally:
        hf.last_cache = real
        lmm.cache_mode = "shared"
    print(f"{'path':<8} {'peak KV MiB':>11} {'/ prefix':>9} {'ie_fast min s':>14} {'median s':>9} {'cpu s':>7}")
    for mode, (kv, t, _) in rows.items():
        print(f"{mode:<8} {kv / MiB:11.1f} {kv / prefix_bytes:9.2f} {t.min:14.3f} {t.median:9.3f} {t.cpu_median:7.3f}")
    (kv_r, t_r, ie_r), (kv_s, t_s, ie_s) = rows["repeat"], rows["shared"]
    print(f"shared/repeat: KV {kv_s / kv_r:.3f}x, ie_fast median {t_s.median / t_r.median:.2f}x (cpu {t_s.cpu_median / t_r.cpu_median:.2f}x); "
          f"max |IE shared - IE repeat| {float((ie_s - ie_r).abs().max()):.2e}")


if __name__ == "__main__":
    main()
