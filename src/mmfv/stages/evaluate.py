"""Stage ``eval``: zero-shot accuracy with and without each function vector — the injection layer
chosen on ``val``, reported on ``test`` — with head-count and context-size sweeps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from mmfv import prompts as P
from mmfv.report import html as H
from mmfv.settings import Count, Section
from mmfv.stages.base import Context, ReportSection, Stage


class EvalSettings(Section):
    n: Count = Field(200, description="zero-shot prompts per relation and split (val: layer choice; test: reported)")
    head_counts: list[Count] = Field(default_factory=lambda: list(range(1, 21)), min_length=1, description="numbers of top heads for the head-count sweep (the default stops at the model's head count; counts you set must fit)")
    cached: bool = Field(True, description="sweeps by cached injection: each prompt batch's prefix and last-token residuals computed once, "
                                           "only the layers after the injection layer run per accuracy (false: a full forward each time)")


def head_counts(cfg: Any, n: int, where: str) -> list[int]:
    """The head counts to sweep on a model with ``n`` heads: the default sweep stops at ``n``; counts
    the config sets must all fit (a one-line error naming the key and ``where`` the heads are)."""
    ks = list(cfg.eval.head_counts)
    if ks == EvalSettings.model_fields["head_counts"].get_default(call_default_factory=True):
        return [k for k in ks if k <= n]
    if max(ks) > n:
        raise ValueError(f"config key eval.head_counts: {max(ks)} is larger than the {n} heads of {where}: use counts up to {n}")
    return ks


def check(cfg: Any, lmm: Any) -> None:
    """Before any stage runs: every head count of the sweep fits in the model's heads."""
    from mmfv.stages.cma import heads

    head_counts(cfg, heads(cfg, lmm), f"{lmm.model_id} ({cfg.cma.head_set})")


def run(ctx: Context) -> dict:
    from mmfv import evaluate
    from mmfv import vectors as V
    from mmfv.injection import Stems
    from mmfv.stages import cma as CMA
    from mmfv.stages import vectors as VS

    c, lmm, out, bs = ctx.cfg.eval, ctx.lmm, ctx.dir("eval"), ctx.cfg.run.batch_size
    fvs = VS.load(ctx.input("vectors"), ctx.relations, lmm)
    icl = ctx.results("icl")
    val, test = ctx.items("val"), ctx.items("test")
    res: dict = {"relations": {}}
    stems = Stems(lmm) if c.cached else None
    for rel, fv in fvs.items():
        zs_val = P.build("zero-shot", val[rel], val, 0, c.n, ctx.seed)
        zs_test = P.build("zero-shot", test[rel], test, 0, c.n, ctx.seed)
        with ctx.ex.scope(rel):
            sweep = evaluate.layer_sweep(lmm, zs_val, fv.vector, bs, ex=ctx.ex, stems=stems)
            best = evaluate.best_layer(sweep)
            r = {
                "zero_shot": evaluate.accuracy(lmm, zs_test, batch_size=bs, ex=ctx.ex)["acc"],
                "fv": evaluate.accuracy(lmm, zs_test, fv.vector, best, bs, ctx.ex, stems)["acc"],
                "best_layer": best,
                "layer_sweep_val": sweep,
                "layer_sweep_test": evaluate.layer_sweep(lmm, zs_test, fv.vector, bs, ex=ctx.ex, stems=stems),
            }
            cres = CMA.load(ctx.input("cma"), rel, lmm)
            ks = head_counts(ctx.cfg, cres.aie.numel(), f"the CMA results in {ctx.input('cma')}")
            by_k = [V.build(lmm, cres.means, cres.top_heads(k), rel, head_set=cres.head_set).vector for k in ks]
            r["head_count"] = dict(zip(map(str, ks), evaluate.accuracies(lmm, zs_test, by_k, best, bs, ctx.ex, stems)))
        r["icl_by_shots"] = {k: icl["clean"][k][rel]["acc"] for k in icl["clean"]}
        fv.at(best).save(out / "vectors" / f"{rel}.safetensors")  # the vector with the layer chosen for it
        res["relations"][rel] = r
        if stems is not None:
            stems.clear()  # the next relation has other prompts
        ctx.ex.info("  %s: zero-shot %.3f  fv %.3f @ layer %d", rel, r["zero_shot"], r["fv"], best)
    rels = list(fvs)
    res["mean"] = {k: round(sum(res["relations"][r][k] for r in rels) / len(rels), 4) for k in ("zero_shot", "fv")}
    for r in rels:  # flat per-relation keys
        res[r] = {k: res["relations"][r][k] for k in ("zero_shot", "fv", "best_layer")}
    draw({"model": lmm.model_id, **res}, out)
    ctx.ex.info("FV (test, layer chosen on val): zero-shot %.3f -> %.3f", res["mean"]["zero_shot"], res["mean"]["fv"])
    out_json = {"model": lmm.model_id, "n_eval": c.n, **res}
    ctx.write("eval", out_json)
    return out_json


def draw(res: dict, out: Path) -> list[Path]:
    """The stage's figures from its results (``res``: results.json's content) into ``out``: the layer
    sweep, the head-count sweep and ICL by context size. The stage and the report both draw them, so a
    rebuilt report shows the current figure style."""
    from mmfv import plots

    rels = list(res["relations"])
    first = res["relations"][rels[0]]
    zs = {"zero-shot, no FV (mean)": res["mean"]["zero_shot"]}
    depth = max(len(res["relations"][r]["layer_sweep_test"]) for r in rels)
    hk, sk = H.by_k(first["head_count"]), H.by_k(first["icl_by_shots"])
    figs = [
        plots.curves({r: res["relations"][r]["layer_sweep_test"] for r in rels}, list(range(depth)), "injection layer", "zero-shot accuracy (test)",
                     f"FV layer sweep ({res.get('model', '?')})", out / "layer_sweep.png", hlines=zs, formats=H.FORMATS),
        plots.curves({r: [res["relations"][r]["head_count"][k] for k in hk] for r in rels}, [int(k) for k in hk], "heads in the FV (k)",
                     "zero-shot accuracy (test)", "FV head-count sweep", out / "head_count.png", hlines=zs, formats=H.FORMATS),
        plots.curves({r: [res["relations"][r]["icl_by_shots"][k] for k in sk] for r in rels}, [int(k) for k in sk], "demonstrations (k)",
                     "accuracy (test)", "ICL by context size", out / "context_size.png", hlines={"zero-shot + FV (mean)": res["mean"]["fv"]},
                     formats=H.FORMATS),
    ]
    return [f.mmfv_path for f in figs]


def section(res: H.Results, out: Path) -> str:
    if (why := res.why_missing("eval")) is not None:
        return why
    ev, d = res.json("eval"), res.dir("eval")
    n = ev.get("n_eval")
    rows = [[r, H.acc(v["zero_shot"], n), H.acc(v["fv"], n), v["fv"] - v["zero_shot"], v["best_layer"]] for r, v in ev["relations"].items()]
    m, nm = ev.get("mean", {}), (n or 0) * len(ev["relations"])
    mean = ["mean", H.acc(m.get("zero_shot"), nm), H.acc(m.get("fv"), nm), (m["fv"] - m["zero_shot"]) if "fv" in m and "zero_shot" in m else None, ""]
    html = H.table(["relation", "zero-shot [95% CI]", "zero-shot + FV [95% CI]", "Δ", "layer (chosen on val)"], rows, mean,
                   caption=f"Test accuracy, {H.esc(n or '?')} zero-shot prompts per relation; the FV is added at the layer best on val.")
    try:
        figs = [H.img_file(p) for p in draw(ev, out)]
    except (KeyError, TypeError, ValueError, IndexError):  # results of an older layout: the stage's own figures
        figs = [H.img_file(d / n) for n in ("layer_sweep.png", "head_count.png", "context_size.png") if (d / n).exists()]
    if not figs:
        html += H.note("no sweep figures in the eval folder")
    tabs = []
    sw = {r: v["layer_sweep_test"] for r, v in ev["relations"].items() if v.get("layer_sweep_test")}
    if sw:
        depth = max(len(x) for x in sw.values())
        rows = [[layer, *[H.Raw(f"<b>{sw[r][layer]:.3f}</b>") if layer == ev["relations"][r]["best_layer"] else (sw[r][layer] if layer < len(sw[r]) else None)
                          for r in sw]] for layer in range(depth)]
        tabs.append("<div><h3>Layer sweep (test)</h3>" + H.table(["layer", *sw], rows, caption="Bold: the layer chosen on val.") + "</div>")
    hc = {r: v["head_count"] for r, v in ev["relations"].items() if v.get("head_count")}
    if hc:
        ks = H.by_k(next(iter(hc.values())))
        tabs.append("<div><h3>Head-count sweep (test)</h3>" + H.table(["heads (k)", *hc], [[int(float(k)), *[hc[r].get(k) for r in hc]] for k in ks]) + "</div>")
    return html + H.figs(figs) + res.fold("Sweep tables (layer sweep on test, head-count sweep)", '<div class="tables">' + "".join(tabs) + "</div>" if tabs else "")


def table(res: dict) -> list[dict]:
    """One row per (relation, sweep, x): the layer sweeps (val and test), head counts and ICL by shots."""
    rows = []
    for r, v in res.get("relations", {}).items():
        for sweep in ("layer_sweep_val", "layer_sweep_test"):
            rows += [{"relation": r, "sweep": sweep, "x": l, "acc": a, "chosen": l == v["best_layer"]} for l, a in enumerate(v[sweep])]
        rows += [{"relation": r, "sweep": "head_count", "x": int(k), "acc": a, "chosen": False} for k, a in v.get("head_count", {}).items()]
        rows += [{"relation": r, "sweep": "icl_by_shots", "x": int(k), "acc": a, "chosen": False} for k, a in v.get("icl_by_shots", {}).items()]
    return rows


STAGE = Stage("eval", "zero-shot accuracy with function vectors: layer, head-count and context-size sweeps", run, needs=("vectors", "cma", "icl"),
              section="eval", settings=EvalSettings, check=check,
              report=(ReportSection("eval", "Function vectors: zero-shot with the vector, layer and head-count sweeps", section),), table=table)
