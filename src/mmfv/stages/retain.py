"""Stage ``retain``: what each injected vector does to what the model could already do — accuracy
on the other relations' zero-shot and k-shot ICL prompts and on its own relation's clean ICL, with
and without the vector (extracted at its val-chosen layer, fine-tuned, composed), on ``test``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from mmfv.report import html as H
from mmfv.settings import Count, Demos, Section
from mmfv.stages.base import Context, ReportSection, Stage, StageSkipped

KINDS = ("extracted", "tuned", "composed")


class RetainSettings(Section):
    enabled: bool = Field(True, description="run the retained-ability check (false: the stage is skipped)")
    shots: Demos = Field(4, description="demonstrations of the ICL prompts scored with and without each vector")
    n: Count = Field(100, description="test prompts per (relation, zero-shot | ICL) set")
    vectors: list[Literal["extracted", "tuned", "composed"]] = Field(default_factory=lambda: list(KINDS), min_length=1,
                                                                    description="which vectors to inject (each where its stage ran)")
    cached: bool = Field(True, description="cached injection: each prompt set prepared once for every vector (false: a full forward each time)")


def injections(ctx: Context) -> list:
    """Every vector to inject, with its layer: extracted (eval's choice), tuned, composed (a = b = 1)."""
    from mmfv import compose as C
    from mmfv.retain import Injection
    from mmfv.stages import vectors as VS

    c, lmm = ctx.cfg.retain, ctx.lmm
    out = []
    extracted = VS.load(ctx.input("eval") / "vectors", ctx.relations, lmm)
    if "extracted" in c.vectors:
        out += [Injection(r, "extracted", fv.vector, int(fv.layer)) for r, fv in extracted.items()]
    ft = ctx.input("finetune")
    if "tuned" in c.vectors and (ft / "results.json").exists() and "skipped" not in ctx.results("finetune"):
        out += [Injection(r, "tuned", fv.vector, int(fv.layer)) for r, fv in VS.load(ft / "vectors", ctx.relations, lmm).items()]
    co = ctx.input("compose")
    if "composed" in c.vectors and (co / "results.json").exists() and "skipped" not in (cres := ctx.results("compose")):
        raw = VS.load(ctx.input("vectors"), ctx.relations, lmm)
        out += [Injection(r, "composed", C.composed(raw, r).vector, int(v["layer"])) for r, v in cres["relations"].items()]
    return out


def run(ctx: Context) -> dict:
    from mmfv import retain

    c, lmm, bs = ctx.cfg.retain, ctx.lmm, ctx.cfg.run.batch_size
    if not c.enabled:
        raise StageSkipped("off (retain.enabled = false)")
    inj = injections(ctx)
    rels = ctx.relations
    own = sorted({i.relation for i in inj} - set(rels))  # composed vectors' relations: only their own ICL
    test = ctx.items("test", tuple(dict.fromkeys([*(ctx.cfg.data.pool_relations() or rels), *own]))) if own else ctx.items("test")
    sets = retain.prompt_sets(test, rels, c.shots, c.n, ctx.seed, ctx.protocol)
    sets |= retain.prompt_sets(test, own, c.shots, c.n, ctx.seed, ctx.protocol, kinds=("icl",))
    with ctx.ex.scope("no vector"):
        base = retain.scores(lmm, sets, None, bs, ctx.ex)
    rows = []
    from mmfv.injection import Stems

    stems = Stems(lmm) if c.cached else None
    for i in inj:
        keys = retain.targets(i, rels)
        with ctx.ex.scope(i.name):
            got = retain.scores(lmm, {k: sets[k] for k in keys}, i, bs, ctx.ex, stems)
        rows += [{"vector": i.relation, "kind": i.kind, "layer": i.layer, "target": t, "prompts": p, "base": base[(t, p)], "with": got[(t, p)],
                  "delta": round(got[(t, p)] - base[(t, p)], 4)} for t, p in keys]
    text = retain.summary(rows, c.shots)
    for line in text:
        ctx.ex.info("  %s", line)
    out = {"model": lmm.model_id, "n_eval": c.n, "shots": c.shots, "baseline": {f"{t}|{p}": a for (t, p), a in base.items()},
           "rows": rows, "summary": text, "means": _means(rows)}
    ctx.write("retain", out)
    return out


def _means(rows: list[dict]) -> dict:
    """Per (vector, kind): mean base and with-vector accuracy on other relations' zero-shot, ICL, and own ICL."""
    out: dict = {}
    for r in rows:
        group = "own_icl" if r["target"] == r["vector"] else ("other_zero_shot" if r["prompts"] == "zero-shot" else "other_icl")
        d = out.setdefault(f"{r['vector']} ({r['kind']})", {"vector": r["vector"], "kind": r["kind"], "layer": r["layer"]})
        d.setdefault(group, []).append((r["base"], r["with"]))
    for d in out.values():
        for g in ("other_zero_shot", "other_icl", "own_icl"):
            if g in d:
                pairs = d[g]
                d[g] = {"base": round(sum(b for b, _ in pairs) / len(pairs), 4), "with": round(sum(w for _, w in pairs) / len(pairs), 4)}
    return out


def section(res: H.Results, out: Path) -> str:
    if (why := res.why_not_shown("retain")) is not None:
        return why
    j = res.json("retain")
    k = j.get("shots", "?")
    cell = lambda g: H.Raw(f"{g['base']:.3f} → <b>{g['with']:.3f}</b> <small>({g['with'] - g['base']:+.3f})</small>") if g else None  # noqa: E731
    rows = [[m["vector"], m["kind"], m["layer"], cell(m.get("other_zero_shot")), cell(m.get("other_icl")), cell(m.get("own_icl"))]
            for m in j["means"].values()]
    html = "<ul>" + "".join(f"<li>{H.esc(s)}</li>" for s in j.get("summary", [])) + "</ul>"
    html += H.table(["vector of", "kind", "layer", "other relations, zero-shot", f"other relations, {k}-shot ICL", f"own relation, {k}-shot ICL"], rows,
                    caption=f"Test accuracy without → with the vector added at its layer (last position), {H.esc(j.get('n_eval', '?'))} prompts per set; "
                            "other relations: mean over the relations the vector was not built for.")
    detail = [[r["vector"], r["kind"], r["target"], r["prompts"], r["base"], r["with"], r["delta"]] for r in j["rows"]]
    return html + res.fold("Retained ability, every (vector, prompt set)", H.table(["vector of", "kind", "prompts of", "prompts", "without", "with", "Δ"], detail))


def table(res: dict) -> list[dict]:
    """One row per (vector, kind, target relation, prompt kind): accuracy without and with the vector."""
    return [] if "skipped" in res else list(res["rows"])


STAGE = Stage("retain", "retained ability: other relations' zero-shot and ICL, own ICL, with and without each vector", run,
              needs=("vectors", "eval", "finetune", "compose"), section="retain", settings=RetainSettings,
              report=(ReportSection("retain", "Retained ability: what each vector does to other prompts", section),), table=table)
