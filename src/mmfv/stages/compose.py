"""Stage ``compose``: vectors of the four cardinal relations combined into the four diagonal ones,
never used to build a vector (a·FV_vertical + b·FV_horizontal, with a = b = 1, the val grid's best
pair, and the pair one one-shot val example of the relation prefers), and analogies A : B :: C : D;
beside them ICL on the diagonal relations and, as a reference, a vector extracted from their own
prompts. Layers and weights are chosen on ``val``; every reported number is on ``test``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from pydantic import Field

from mmfv import prompts as P
from mmfv import relations as R
from mmfv.report import html as H
from mmfv.settings import Count, Demos, Rate, Section
from mmfv.stages.base import Context, ReportSection, Stage, StageSkipped


class ComposeSettings(Section):
    grid: list[Rate] = Field(default_factory=lambda: [0.5, 1.0, 1.5, 2.0], min_length=1, description="weights a, b tried on val for a·FV_v + b·FV_h")
    shots: list[Demos] = Field(default_factory=lambda: [1, 2, 4, 8], min_length=1, description="ICL baselines on the diagonal relations")
    n: Count = Field(200, description="val / test prompts per relation")
    direct: bool = Field(True, description="also a reference vector extracted directly from diagonal ICL prompts (val; the top-k heads "
                                           "of the cardinal CMA averaged): what composition would have to match, never a composition input")
    cached: bool = Field(True, description="layer and weight choices by cached injection: each prompt batch's prefix and last-token residuals "
                                           "computed once, only the layers after the injection layer run per accuracy (false: a full forward each time)")


def chance(items: Sequence[P.Item]) -> float:
    """Share of the answer among the candidate objects, averaged over items."""
    return round(sum(1.0 / max(1, len(it.candidates)) for it in items) / max(1, len(items)), 4)


def run(ctx: Context) -> dict:
    from mmfv import compose as C
    from mmfv import evaluate, plots
    from mmfv.injection import Stems
    from mmfv.stages import vectors as VS

    if ctx.cfg.data.dataset != "synthetic":
        raise StageSkipped(f"composition needs the diagonal relations, which only synthetic scenes have ({ctx.cfg.data.dataset} has none)")
    if set(ctx.relations) != set(R.CARDINAL):
        raise StageSkipped("needs all four cardinal relations")
    c, lmm, out, bs, seed = ctx.cfg.compose, ctx.lmm, ctx.dir("compose"), ctx.cfg.run.batch_size, ctx.seed
    fvs = VS.load(ctx.input("vectors"), ctx.relations, lmm)
    tuned = VS.load(ctx.input("finetune") / "vectors", ctx.relations, lmm)
    val, test = ctx.items("val", R.SPATIAL), ctx.items("test", R.SPATIAL)
    direct = _direct_vectors(ctx, val) if c.direct else {}
    res: dict = {"relations": {}, "grid": list(c.grid)}

    def zs(split, rel):
        return P.build("zero-shot", split[rel], split, 0, c.n, seed)

    stems = Stems(lmm) if c.cached else None

    def acc(prompts, vec, layer):
        return evaluate.accuracy(lmm, prompts, vec, layer, bs, ctx.ex, stems)["acc"]

    def sweep(prompts, vec):
        return evaluate.layer_sweep(lmm, prompts, vec, bs, ex=ctx.ex, stems=stems)

    neighbours: dict[tuple[str, str], dict[str, str]] = {}  # (image, query) -> relation -> answer, in test scenes
    for r_, its in test.items():
        for it in its:
            neighbours.setdefault((it.image_id, it.query), {})[r_] = it.answer
    for rel in R.NOVEL:
        v, h = R.decompose(rel)
        zv, zt = zs(val, rel), zs(test, rel)
        base = C.composed(fvs, rel)
        with ctx.ex.scope(rel):
            layer = evaluate.best_layer(sweep(zv, base.vector))
            pairs = [(a, b) for a in c.grid for b in c.grid]
            val_grid = dict(zip(pairs, evaluate.accuracies(lmm, zv, [C.composed(fvs, rel, a, b).vector for a, b in pairs], layer, bs, ctx.ex, stems)))
            a_best, b_best = C.best_pair(val_grid)
            singles = {v: acc(zt, fvs[v].vector, layer), h: acc(zt, fvs[h].vector, layer)}
            # one source example of the composite relation (a one-shot val prompt) sets the weights
            source = P.build("clean", val[rel], val, 1, 1, seed + 1, ctx.protocol)[0]
            (a_src, b_src), src_probs = C.source_weights(lmm, source, fvs, rel, layer, c.grid, stems)
            predicted = evaluate.predictions(lmm, zt, bs, evaluate.with_vector(lmm, base.vector, layer), ctx.ex)[0].tolist()
            r = {
                "layer": layer, "chance": chance(test[rel][:c.n]),
                "zero_shot": evaluate.accuracy(lmm, zt, batch_size=bs, ex=ctx.ex)["acc"],
                "single": singles, "single_best": max(singles.values()),
                "composed": acc(zt, base.vector, layer),
                "composed_answers": C.answer_kinds(rel, zt, predicted, neighbours, lmm.answer_token_id),
                "composed_grid": acc(zt, C.composed(fvs, rel, a_best, b_best).vector, layer), "grid_choice": [a_best, b_best],
                "composed_source": acc(zt, C.composed(fvs, rel, a_src, b_src).vector, layer), "source_choice": [a_src, b_src],
                "source_example": {"image": source.items[-1].image_id, "query": source.items[-1].query, "probs": src_probs},
                "icl_by_shots": {str(k): evaluate.accuracy(lmm, P.build("clean", test[rel], test, k, c.n, seed, ctx.protocol), batch_size=bs, ex=ctx.ex)["acc"]
                                 for k in c.shots},
            }
            # tuned vectors may live at other layers: the composed one gets its own val-chosen layer
            tv = C.composed(tuned, rel).vector
            r["layer_tuned"] = evaluate.best_layer(sweep(zv, tv))
            r["composed_tuned"] = acc(zt, tv, r["layer_tuned"])
            if rel in direct:  # reference, not a composition: built from diagonal prompts themselves
                r["layer_direct"] = evaluate.best_layer(sweep(zv, direct[rel].vector))
                r["direct"] = acc(zt, direct[rel].vector, r["layer_direct"])
        res["relations"][rel] = r
        res[rel] = {k: r[k] for k in ("chance", "single_best", "composed")}
        ctx.ex.info("  %s: chance %.3f  single_best %.3f  composed %.3f (grid %.3f) @ layer %d", rel, r["chance"], r["single_best"], r["composed"],
                    r["composed_grid"], layer)
    keys = ["chance", "single_best", "composed", "composed_grid", "composed_source", "zero_shot", "composed_tuned", "direct"]
    res["mean"] = {k: round(sum(res["relations"][r][k] for r in R.NOVEL) / len(R.NOVEL), 4) for k in keys if all(k in res["relations"][r] for r in R.NOVEL)}
    res["mean"]["icl_by_shots"] = {str(k): round(sum(res["relations"][r]["icl_by_shots"][str(k)] for r in R.NOVEL) / len(R.NOVEL), 4) for k in c.shots}
    res["analogies"] = {fam: _analogies(ctx, fvs, val, test, ops, answers, stems) for fam, (ops, answers) in
                        {"cardinal": (R.CARDINAL, R.CARDINAL), "diagonal": (R.SPATIAL, R.NOVEL)}.items()}
    k_icl = 4 if 4 in c.shots else max(c.shots)  # the paper compares composition with 4-shot ICL
    plots.bars({r: {"single best": res["relations"][r]["single_best"], "composed a=b=1": res["relations"][r]["composed"],
                    "composed (val grid)": res["relations"][r]["composed_grid"], "composed (source weights)": res["relations"][r]["composed_source"],
                    f"ICL {k_icl}-shot": res["relations"][r]["icl_by_shots"][str(k_icl)]} for r in R.NOVEL},
               "zero-shot accuracy (test)", f"Composition of relation vectors ({lmm.model_id})", out / "composition.png",
               hlines={"chance (mean)": res["mean"]["chance"]}, formats=H.FORMATS)
    ctx.ex.info("composition (test): %s", res["mean"])
    out_json = {"model": lmm.model_id, "n_eval": c.n, **res}
    ctx.write("compose", out_json)
    return out_json


def _direct_vectors(ctx: Context, val: dict) -> dict:
    """relation -> a function vector of each diagonal relation extracted from its own clean ICL prompts
    on val ([cma] shots and n_mean, every prompt counted: the model is weak on them), with the top-k
    heads of the mean AIE over the cardinal relations. A reference for composition, never its input."""
    from mmfv import cma
    from mmfv import vectors as V
    from mmfv.stages import cma as CMA
    from mmfv.stages import means as M

    c, lmm = ctx.cfg.cma, ctx.lmm
    res = [CMA.load(ctx.input("cma"), r, lmm) for r in ctx.relations]
    heads = cma.top_heads(sum(x.aie for x in res) / len(res), c.top_k)  # of the mean AIE (L, H)
    out = {}
    for rel in R.NOVEL:
        clean = P.build("clean", val[rel], val, c.shots, c.n_mean, ctx.seed, ctx.protocol)
        with ctx.ex.scope(f"{rel} direct"):
            m, _ = cma.mean_activations(lmm, clean, M.BATCH, False, head_set=c.head_set, ex=ctx.ex)
        out[rel] = V.build(lmm, m, heads, rel, head_set=c.head_set, extra={"direct": True})
    return out


def _analogies(ctx: Context, fvs: dict, val: dict, test: dict, ops: Sequence[str], answers: Sequence[str], stems=None) -> dict:
    """One family of analogies: one layer, chosen on val (mean accuracy over the family's items, at
    most 50 val prompts per item), reported on test; ``stems``: cached injection."""
    from mmfv import compose as C
    from mmfv import evaluate

    n, bs, seed, lmm = ctx.cfg.compose.n, ctx.cfg.run.batch_size, ctx.seed, ctx.lmm
    acc = lambda prompts, vec, layer: evaluate.accuracy(lmm, prompts, vec, layer, bs, ctx.ex, stems)["acc"]  # noqa: E731
    items = C.analogy_items(ops, answers)
    vecs = {(a, b, c): C.analogy_vector(fvs, a, b, c).vector for a, b, c, _ in items}
    val_zs = {d: P.build("zero-shot", val[d], val, 0, min(n, 50), seed) for d in {d for *_, d in items}}
    by_layer = analogy_layers(lmm, items, vecs, val_zs, bs, ctx.ex, stems)
    layer = evaluate.best_layer(by_layer)
    rows = []
    for a, b, c, d in items:
        zt = P.build("zero-shot", test[d], test, 0, n, seed)
        rows.append({"analogy": f"{a} : {b} :: {c} : {d}", "acc": acc(zt, C.analogy_vector(fvs, a, b, c).vector, layer), "chance": chance(test[d][:n])})
    return {"items": rows, "mean_acc": round(sum(x["acc"] for x in rows) / len(rows), 4),
            "mean_chance": round(sum(x["chance"] for x in rows) / len(rows), 4), "layer": layer, "val_by_layer": [round(x, 4) for x in by_layer]}


def analogy_layers(lmm: Any, items: Sequence[tuple[str, str, str, str]], vecs: dict, prompts: dict, batch_size: int, ex: Any = None, stems: Any = None) -> list[float]:
    """Mean accuracy over ``items`` (A, B, C, D) at every layer, each item's vector ``vecs[(A, B, C)]``
    on ``prompts[D]``; the items of one D are scored together (:func:`mmfv.evaluate.accuracies`)."""
    from mmfv import evaluate
    from mmfv.execution import LOCAL

    by_d: dict[str, list[tuple[str, str, str]]] = {}
    for a, b, c, d in items:
        by_d.setdefault(d, []).append((a, b, c))
    out = []
    for l in range(lmm.n_layers):
        acc = {}
        for d, abcs in by_d.items():
            acc.update(zip(abcs, evaluate.accuracies(lmm, prompts[d], [vecs[abc] for abc in abcs], l, batch_size, ex or LOCAL, stems)))
        out.append(sum(acc[(a, b, c)] for a, b, c, _ in items) / len(items))  # summed in item order, as one item at a time
    return out


def section(res: H.Results, out: Path) -> str:
    if (why := res.why_not_shown("compose")) is not None:
        return why
    co, d = res.json("compose"), res.dir("compose")
    rels = co["relations"]
    tuned = any("composed_tuned" in v for v in rels.values())
    src = any("composed_source" in v for v in rels.values())
    direct = any("direct" in v for v in rels.values())
    shots = H.by_k(next(iter(rels.values())).get("icl_by_shots", {})) if rels else []
    hdr = ["relation", "layer", "chance", "zero-shot", "single (each)", "single best", "composed a=b=1", "composed (val grid)", "grid (a, b)",
           *(["composed (one-shot source weights)", "source (a, b)"] if src else []), *(["composed, tuned FVs"] if tuned else []),
           *[f"ICL k={k}" for k in shots], *(["reference: FV from diagonal prompts"] if direct else [])]
    rows = []
    n = co.get("n_eval")
    ac = lambda x, k=n: H.acc(x, k)  # noqa: E731 - accuracy with its 95% interval
    pair = lambda p: f"({p[0]:g}, {p[1]:g})" if p else None  # noqa: E731
    for r, v in rels.items():
        single = H.Raw("<br>".join(f"{H.esc(name)} {x:.3f}" for name, x in v.get("single", {}).items()))
        rows.append([r, v.get("layer"), v["chance"], ac(v.get("zero_shot")), single, ac(v["single_best"]), ac(v["composed"]), ac(v.get("composed_grid")),
                     pair(v.get("grid_choice")), *([ac(v.get("composed_source")), pair(v.get("source_choice"))] if src else []),
                     *([ac(v.get("composed_tuned"))] if tuned else []), *[ac(v.get("icl_by_shots", {}).get(k)) for k in shots],
                     *([ac(v.get("direct"))] if direct else [])])
    m, nm = co.get("mean", {}), (n or 0) * len(rels)
    micl = m.get("icl_by_shots", {})
    mean = ["mean", "", m.get("chance"), ac(m.get("zero_shot"), nm), "", ac(m.get("single_best"), nm), ac(m.get("composed"), nm), ac(m.get("composed_grid"), nm), "",
            *([ac(m.get("composed_source"), nm), ""] if src else []), *([ac(m.get("composed_tuned"), nm)] if tuned else []),
            *[ac(micl.get(k), nm) if micl.get(k) is not None else "" for k in shots], *([ac(m.get("direct"), nm)] if direct else [])]
    html = H.table(hdr, rows, mean, caption=f"Zero-shot test accuracy on the diagonal relations, {H.esc(co.get('n_eval', '?'))} prompts each, with 95% "
                 "intervals; composed = a·FV(vertical) + b·FV(horizontal) with a = b = 1, with the (a, b) grid point best on val, and with the "
                 "grid point that gives ONE one-shot val example of the relation its highest answer probability (source weights); layers "
                 "chosen on val. ICL k = clean k-shot prompts of the diagonal relation itself. The last column is a reference, not a "
                 "composition: a vector extracted from the diagonal relation's own ICL prompts (top-k heads of the cardinal CMA).")
    kinds = {r: v["composed_answers"] for r, v in rels.items() if v.get("composed_answers")}
    if kinds:
        from mmfv.compose import ANSWER_KINDS

        first = next(iter(kinds.values()))
        names = [n for n in ANSWER_KINDS if n in first] + [n for n in first if n not in ANSWER_KINDS]  # results.json sorts keys
        html += "<h3>What the composed vector makes the model answer</h3>" + H.table(
            ["relation", *names], [[r, *[k.get(n) for n in names]] for r, k in kinds.items()],
            caption="Shares of the test prompts, composed a=b=1 at the chosen layer, by the predicted first token: the diagonal answer, "
                    "the query's vertical or horizontal neighbour (one part of the sum wins), the query, another neighbour, or elsewhere.")
    side = [H.img_file(d / "composition.png")] if (d / "composition.png").exists() else []
    after = ""
    for fam, a in (co.get("analogies") or {}).items():
        items = [[x["analogy"], x["acc"], x["chance"]] for x in a["items"]]
        n_parts = 2 if len(items) > 16 else 1  # long lists side by side in two halves
        size = max(1, -(-len(items) // n_parts))
        parts = [items[i : i + size] for i in range(0, len(items), size)] or [[]]
        mean_row = ["mean", a.get("mean_acc"), a.get("mean_chance")]
        tabs = "".join(f"<div>{H.table(['A : B :: C : D', 'accuracy', 'chance'], part, mean_row if j == len(parts) - 1 else None)}</div>" for j, part in enumerate(parts))
        block = (f"<h3>Analogies, {H.esc(fam)}: mean accuracy {H.fmt(a.get('mean_acc'))} vs chance {H.fmt(a.get('mean_chance'))} "
                 f"({len(items)} analogies, layer {H.esc(a.get('layer', '?'))})</h3>" + res.fold("every analogy", f"<div class=\"tables\">{tabs}</div>"))
        if n_parts == 1 and len(side) == 1:  # a short table beside the composition chart
            side.append(f'<div class="tables"><div>{block}</div></div>')
        else:
            after += block
    html += H.figs(side) + after
    if co.get("analogies"):
        html += '<p class="note">Analogy A : B :: C : D: the vector FV(B) − FV(A) + FV(C) added to zero-shot prompts of relation D.</p>'
    return html


def table(res: dict) -> list[dict]:
    """One row per diagonal relation (every accuracy), then one per analogy."""
    if "skipped" in res:
        return []
    keys = ("layer", "chance", "zero_shot", "single_best", "composed", "composed_grid", "composed_source", "composed_tuned", "layer_tuned", "direct",
            "layer_direct")
    rows = [{"kind": "composition", "item": r, **{k: v.get(k) for k in keys}} for r, v in res["relations"].items()]
    for fam, a in res.get("analogies", {}).items():
        rows += [{"kind": f"analogy ({fam})", "item": x["analogy"], "layer": a["layer"], "chance": x["chance"], "composed": x["acc"]} for x in a["items"]]
    return rows


STAGE = Stage("compose", "compose cardinal vectors into untrained diagonal relations; analogies", run, needs=("vectors", "eval", "finetune"),
              section="compose", settings=ComposeSettings,
              report=(ReportSection("compose", "Composition of relation vectors and analogies", section),), table=table)
