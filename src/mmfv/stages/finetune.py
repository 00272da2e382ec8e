"""Stage ``finetune``: each function vector fine-tuned with the model frozen, by training-set size,
against ICL k-shot baselines and a random-init control, all on the same ``test`` queries."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from mmfv import prompts as P
from mmfv.report import html as H
from mmfv.settings import Count, Demos, Index, Rate, Section, fail
from mmfv.stages.base import Context, ReportSection, Stage


class FinetuneStageSettings(Section):
    sizes: list[Count] = Field(default_factory=lambda: [25, 50, 100, 200, 400], description="training-set sizes (zero-shot train prompts)")
    headline_size: Count = Field(200, description="the size reported as 'fine-tuned FV' (one of sizes)")
    epochs: Count = Field(20, description="training epochs; the epoch is chosen on val")
    lr: Rate = Field(1e-2, description="Adam learning rate")
    schedule: Literal["cosine", "constant"] = Field("cosine", description="learning-rate schedule")
    search_layers: bool = Field(False, description="tune at each candidate layer (headline size) and keep the best on val; else the FV's own layer")
    layers: list[Index] = Field(default_factory=list, description="candidate layers for search_layers (empty: every layer)")
    batch_size: Count = Field(16, description="training prompts per step")
    cached: bool = Field(True, description="cached injection: each training and val batch's prefix and last-token residuals computed once, "
                                            "a step runs only the layers after the vector's (same method; float rounding differs, ~1e-6)")
    shots: list[Demos] = Field(default_factory=lambda: list(range(1, 9)), min_length=1, description="ICL baselines: numbers of demonstrations")
    n: Count = Field(200, description="val / test prompts per relation")

    @model_validator(mode="after")
    def _check(self) -> "FinetuneStageSettings":
        if self.headline_size not in self.sizes:
            raise fail("headline_size", f"{self.headline_size} is not in finetune.sizes {self.sizes}")
        return self


def check(cfg: Any, lmm: Any) -> None:
    """Before any stage runs: the candidate layers of search_layers exist in the model."""
    c = cfg.finetune
    bad = [l for l in c.layers if l >= lmm.n_layers] if c.search_layers else []
    if bad:
        raise ValueError(f"config key finetune.layers: layer {bad[0]} is out of range: {lmm.model_id} has layers 0..{lmm.n_layers - 1}")


def run(ctx: Context) -> dict:
    import torch

    from mmfv import evaluate
    from mmfv import vectors as V
    from mmfv.finetune import FinetuneSettings, finetune
    from mmfv.injection import Stems
    from mmfv.stages import vectors as VS

    c, lmm, out, bs, seed = ctx.cfg.finetune, ctx.lmm, ctx.dir("finetune"), ctx.cfg.run.batch_size, ctx.seed
    fvs = VS.load(ctx.input("vectors"), ctx.relations, lmm)
    ev = ctx.results("eval")
    settings = FinetuneSettings(epochs=c.epochs, lr=c.lr, schedule=c.schedule, batch_size=c.batch_size, seed=seed, cached=c.cached)
    cands = (list(range(lmm.n_layers)) if not c.layers else list(c.layers)) if c.search_layers else []
    check(ctx.cfg, lmm)
    train, val, test = ctx.items("train"), ctx.items("val"), ctx.items("test")
    res: dict = {"relations": {}, "sizes": list(c.sizes), "headline_size": c.headline_size}
    stems = Stems(lmm) if c.cached else None  # test prompts prepared once for every tuned vector
    acc = lambda prompts, vec=None, layer=None: evaluate.accuracy(lmm, prompts, vec, layer, bs, ctx.ex, stems)["acc"]  # noqa: E731
    def one(rel: str, fv: V.FunctionVector) -> dict:
        layer = ev["relations"][rel]["best_layer"]
        pool = train[rel]
        for n in c.sizes:
            if n > len(pool):
                raise ValueError(f"training size {n} exceeds the {len(pool)} {rel} items of the train split: enlarge data.train_scenes")
        zs_val = P.build("zero-shot", val[rel], val, 0, c.n, seed)
        zs_test = P.build("zero-shot", test[rel], test, 0, c.n, seed)
        icl_k = {str(k): acc(P.build("clean", test[rel], test, k, c.n, seed, ctx.protocol)) for k in c.shots}
        r: dict = {"layer": layer, "icl_by_shots": icl_k, "icl_best": max(icl_k.values()), "zero_shot": acc(zs_test),
                   "fv": acc(zs_test, fv.vector, layer), "by_size": {}, "curves": {}}
        ck = lambda name: str(out / "checkpoints" / f"{name}.safetensors")  # noqa: E731
        if cands:  # choose the fine-tuning layer on val, at the headline size
            tr = P.build("zero-shot", pool, train, 0, c.headline_size, seed)
            search = {l: finetune(lmm, fv.vector, l, tr, zs_val, settings, ck(f"{rel}_n{c.headline_size}_L{l}"), ctx.ex) for l in cands}
            layer = max(search, key=lambda l: (search[l].best_val_acc, l == r["layer"], -l))
            r["layer_search_val"] = {str(l): f.best_val_acc for l, f in search.items()}
            r["layer"] = layer
            r["fv_at_layer"] = acc(zs_test, fv.vector, layer)
        for n in c.sizes:
            tr = P.build("zero-shot", pool, train, 0, n, seed)
            ft = finetune(lmm, fv.vector, layer, tr, zs_val, settings, ck(f"{rel}_n{n}_L{layer}" if cands else f"{rel}_n{n}"), ctx.ex)
            r["by_size"][str(n)] = {"fv_tuned": acc(zs_test, ft.vector, layer), "best_epoch": ft.best_epoch, "val_acc": ft.best_val_acc}
            r["curves"][str(n)] = ft.curve
            if n == c.headline_size:
                tuned = V.FunctionVector(ft.vector, rel, fv.model_id, fv.config_hash, fv.n_layers, fv.hidden_size, fv.heads, fv.k,
                                         extra={"finetuned": True, "train_size": n, "epoch": ft.best_epoch, "layer": layer, "init": "extracted"},
                                         layer=layer)
                tuned.save(out / "vectors" / f"{rel}.safetensors")
                r["fv_tuned"] = r["by_size"][str(n)]["fv_tuned"]
                g = torch.Generator().manual_seed(seed)
                rand = torch.randn(lmm.hidden_size, generator=g) * float(fv.vector.norm()) / lmm.hidden_size**0.5
                ftr = finetune(lmm, rand, layer, tr, zs_val, settings, ck(f"{rel}_n{n}_random_L{layer}"), ctx.ex)
                r["fv_random_init"] = acc(zs_test, ftr.vector, layer)
                r["curves"][f"{n}_random"] = ftr.curve
        return r

    for rel, fv in fvs.items():
        with ctx.ex.scope(rel):
            r = res["relations"][rel] = one(rel, fv)
        res[rel] = {k: r[k] for k in ("icl_best", "fv", "fv_tuned", "fv_random_init")}
        ctx.ex.info("  %s: icl_best %.3f  fv %.3f  fv_tuned %.3f  fv_random_init %.3f", rel, r["icl_best"], r["fv"], r["fv_tuned"], r["fv_random_init"])
    rels = list(fvs)
    res["mean"] = {k: round(sum(res[r][k] for r in rels) / len(rels), 4) for k in ("icl_best", "fv", "fv_tuned", "fv_random_init")}
    draw(res, out)
    ctx.ex.info("fine-tuning (test): %s", res["mean"])
    out_json = {"model": lmm.model_id, "n_eval": c.n, **res}
    ctx.write("finetune", out_json)
    return out_json


def draw(res: dict, out: Path) -> list[Path]:
    """The stage's figures from its results (``res``: results.json's content) into ``out``: tuned-FV
    accuracy by training size, and the val learning curves at the headline size. The stage and the
    report both draw them, so a rebuilt report shows the current figure style."""
    from mmfv import plots

    rels, sizes, hs = list(res["relations"]), list(res.get("sizes", [])), res.get("headline_size")
    paths = []
    if sizes:
        by = {r: [res["relations"][r]["by_size"][str(n)]["fv_tuned"] for n in sizes] for r in rels}
        refs = {k: v for k, v in (("ICL best (mean)", res.get("mean", {}).get("icl_best")), ("extracted FV (mean)", res.get("mean", {}).get("fv")))
                if v is not None}
        paths.append(plots.curves(by, sizes, "training prompts", "zero-shot accuracy with tuned FV (test)", "Fine-tuned FV vs ICL",
                                  out / "accuracy_vs_size.png", hlines=refs, formats=H.FORMATS).mmfv_path)
    lc = {f"{r} n={hs}": [x["val_acc"] for x in res["relations"][r].get("curves", {}).get(str(hs), [])] for r in rels}
    if any(lc.values()):
        epochs = max(len(v) for v in lc.values())
        paths.append(plots.curves(lc, list(range(1, epochs + 1)), "epoch", "val accuracy", "Fine-tuning learning curves", out / "learning_curves.png",
                                  formats=H.FORMATS).mmfv_path)
    return paths


def best_icl(res: H.Results, rel: str) -> float | None:
    """Best k-shot (k ≥ 1) ICL accuracy: fine-tuning stage first, else the ICL stage, else eval's copy."""
    ft = res.json("finetune")
    if ft and rel in ft.get("relations", {}):
        return ft["relations"][rel]["icl_best"]
    icl = res.json("icl")
    if icl and "clean" in icl:
        accs = [row[rel]["acc"] for k, row in icl["clean"].items() if float(k) >= 1 and rel in row]
        if accs:
            return max(accs)
    ev = res.json("eval")
    by = (ev or {}).get("relations", {}).get(rel, {}).get("icl_by_shots", {})
    accs = [a for k, a in by.items() if float(k) >= 1]
    return max(accs) if accs else None


def summary_section(res: H.Results, out: Path) -> str:
    from mmfv import plots

    if (why := res.why_missing("eval")) is not None:
        return why
    ev, ft = res.json("eval"), res.json("finetune") or {}
    groups, rows = {}, []
    for r, v in ev["relations"].items():
        tuned = ft.get("relations", {}).get(r, {}).get("fv_tuned")
        best = best_icl(res, r)
        groups[r] = {"zero-shot": v["zero_shot"], "FV": v["fv"], "fine-tuned FV": math.nan if tuned is None else tuned,
                     "best ICL": math.nan if best is None else best}
        rows.append([r, v["zero_shot"], v["fv"], tuned, best])
    mean = ["mean", *[H.mean([row[j] for row in rows]) for j in range(1, 5)]]
    em = ev.get("mean", {})
    mean[1], mean[2] = em.get("zero_shot", mean[1]), em.get("fv", mean[2])
    fig = H.png(plots.bars, groups, "accuracy (test)", "Zero-shot, FV, fine-tuned FV and best ICL", out / "summary_bars.png")
    notes = "Best ICL: the best k-shot (k ≥ 1) accuracy of the fine-tuning stage where it ran for the relation, else of the ICL stage."
    if not ft:
        notes += " The fine-tuning stage did not run: no fine-tuned FV bars."
    elif any(row[3] is None for row in rows):
        notes += " Relations without a fine-tuned FV show no bar and a dash."
    n_ev, n_ft = ev.get("n_eval"), ft.get("n_eval", ev.get("n_eval"))
    ns = (n_ev, n_ev, n_ft, n_ft)
    shown = [[row[0], *[H.acc(x, k) for x, k in zip(row[1:], ns)]] for row in rows]
    mean = [mean[0], *[H.acc(x, (k or 0) * len(rows)) for x, k in zip(mean[1:], ns)]]
    table = H.table(["relation", "zero-shot", "FV", "fine-tuned FV", "best ICL"], shown, mean, caption=notes + " Brackets: 95% intervals.")
    return f'<div class="tables"><div>{fig}</div><div>{table}</div></div>'


def section(res: H.Results, out: Path) -> str:
    if (why := res.why_missing("finetune")) is not None:
        return why
    ft, d = res.json("finetune"), res.dir("finetune")
    rels = list(ft["relations"])
    hs = ft.get("headline_size", "?")
    keys = ("zero_shot", "icl_best", "fv", "fv_tuned", "fv_random_init")
    n = ft.get("n_eval")
    nm = (n or 0) * len(rels)
    rows = [[r, v.get("layer"), *[H.acc(v.get(k), n) for k in keys]] for r, v in ft["relations"].items()]
    m = {k: H.acc(ft.get("mean", {}).get(k, H.mean([v.get(k) for v in ft["relations"].values()])), nm) for k in keys}
    html = H.table(["relation", "layer", "zero-shot", "best ICL (k ≥ 1)", "FV", f"FV fine-tuned (n={hs})", f"random init fine-tuned (n={hs})"], rows,
                 ["mean", "", *[m.get(k) for k in keys]], caption=f"Test accuracy, {H.esc(ft.get('n_eval', '?'))} prompts per relation; fine-tuned on n zero-shot train prompts, epoch chosen on val.")
    sizes = [str(s) for s in ft.get("sizes", [])]
    if sizes:
        srows = [[r, *[H.Raw(f"{b['fv_tuned']:.3f} <small>ep {b.get('best_epoch', '?')}</small>") if (b := v["by_size"].get(s)) else None for s in sizes]]
                 for r, v in ft["relations"].items()]
        html += "<h3>Fine-tuned FV by training-set size</h3>" + H.table(["relation", *[f"n={s}" for s in sizes]], srows, caption="Test accuracy (best epoch on val).")
    search = {r: v["layer_search_val"] for r, v in ft["relations"].items() if v.get("layer_search_val")}
    if search:
        layers = sorted({int(l) for v in search.values() for l in v})
        lrows = [[l, *[(H.Raw(f"<b>{search[r][str(l)]:.3f}</b>") if ft["relations"][r].get("layer") == l else search[r].get(str(l))) for r in search]]
                 for l in layers]
        html += res.fold("Fine-tuning layer (chosen on val)", H.table(["layer", *search], lrows,
                                                                      caption=f"Val accuracy of the vector fine-tuned at each layer (n={hs}); bold: the layer kept."))
    icl_k = {r: v.get("icl_by_shots", {}) for r, v in ft["relations"].items()}
    if any(icl_k.values()):
        ks = H.by_k(next(v for v in icl_k.values() if v))
        html += res.fold("ICL baselines by shots (test, 95% CI)", H.table(["relation", *[f"k={k}" for k in ks]], [[r, *[H.acc(icl_k[r].get(k), n) for k in ks]] for r in rels]))
    try:
        figs = [H.img_file(p) for p in draw(ft, out)]
    except (KeyError, TypeError, ValueError):  # results of an older layout: the stage's own figures
        figs = [H.img_file(d / n) for n in ("accuracy_vs_size.png", "learning_curves.png") if (d / n).exists()]
    return html + (H.figs(figs) if figs else H.note("no fine-tuning figures in the folder"))


def table(res: dict) -> list[dict]:
    """One row per (relation, training size): tuned FV accuracy beside the relation's baselines."""
    rows = []
    for r, v in res.get("relations", {}).items():
        base = {k: v.get(k) for k in ("layer", "zero_shot", "icl_best", "fv", "fv_random_init")}
        for n, b in v["by_size"].items():
            rows.append({"relation": r, "train_size": int(n), **base, "fv_tuned": b["fv_tuned"], "best_epoch": b["best_epoch"], "val_acc": b["val_acc"]})
    return rows


STAGE = Stage("finetune", "fine-tune function vectors with the model frozen; compare with ICL", run, needs=("vectors", "eval"),
              section="finetune", settings=FinetuneStageSettings, check=check,
              report=(ReportSection("summary", "Summary: zero-shot, FV, fine-tuned FV and best ICL", summary_section),
                      ReportSection("finetune", "Fine-tuned function vectors", section)), table=table)
