"""Stage ``novel``: do the vectors carry the relation to objects they never saw? Zero-shot accuracy
with the extracted and the fine-tuned vector (each at its own layer) on novel-object queries —
answers held out from building, tuning and choosing the vectors (:mod:`mmfv.data.novel`) — beside
the same on ``test``, with clean k-shot ICL on the novel queries for reference (can the model
answer these objects at all?)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from mmfv import prompts as P
from mmfv.report import html as H
from mmfv.settings import Count, Demos, Section
from mmfv.stages.base import Context, ReportSection, Stage, StageSkipped

KEYS = ("zero_shot", "fv", "fv_tuned", "icl")


class NovelSettings(Section):
    enabled: bool = Field(True, description="score the vectors on novel-object queries (false: the stage is skipped)")
    n: Count = Field(200, description="prompts per relation and split (test, novel)")
    scenes: Count = Field(400, description="synthetic data: scenes of the novel_objects split")
    shots: Demos = Field(4, description="demonstrations of the ICL reference on the novel split (the icl stage has test's)")


def run(ctx: Context) -> dict:
    from mmfv import evaluate
    from mmfv.data import novel
    from mmfv.stages import data as D
    from mmfv.stages import vectors as VS

    c, lmm, bs, seed = ctx.cfg.novel, ctx.lmm, ctx.cfg.run.batch_size, ctx.seed
    if not c.enabled:
        raise StageSkipped("off (novel.enabled = false)")
    rels = ctx.relations
    fvs = VS.load(ctx.input("eval") / "vectors", rels, lmm)
    ft = ctx.input("finetune")
    tuned = VS.load(ft / "vectors", rels, lmm) if (ft / "results.json").exists() and "skipped" not in ctx.results("finetune") else {}
    splits = {"test": ctx.items("test")}
    splits["novel"], how = novel.items(ctx.cfg.data, lmm, tuple(rels), c.scenes)
    res: dict = {"how": how, "relations": {}}
    for rel in rels:
        r: dict = {}
        for name, items in splits.items():
            its = items.get(rel, [])
            if not its:
                r[name] = {"items": 0}
                continue
            zs = P.build("zero-shot", its, items, 0, c.n, seed)
            acc = lambda v=None, layer=None: evaluate.accuracy(lmm, zs, v, layer, bs, ctx.ex)["acc"]  # noqa: E731
            with ctx.ex.scope(f"{rel} {name}"):
                r[name] = {"items": len(its), "chance": D.chance(its), "zero_shot": acc(), "fv": acc(fvs[rel].vector, fvs[rel].layer), "icl": None}
                # ICL reference on the novel split only (the icl stage has test's): can the model answer these objects at all?
                # demonstrations from other images of the same split (none when too few images)
                if name == "novel" and len({it.image_id for it in its}) > c.shots:
                    r[name]["icl"] = evaluate.accuracy(lmm, P.build("clean", its, items, c.shots, c.n, seed, ctx.protocol), batch_size=bs, ex=ctx.ex)["acc"]
                if rel in tuned:
                    r[name]["fv_tuned"] = acc(tuned[rel].vector, tuned[rel].layer)
        res["relations"][rel] = r
        ctx.ex.info("  %s: %s", rel, "  ".join(f"{s} fv {v.get('fv', float('nan')):.3f}" for s, v in r.items()))
    res["mean"] = {s: {k: H.mean([res["relations"][r][s].get(k) for r in rels]) for k in KEYS} for s in splits}
    out = {"model": lmm.model_id, "n_eval": c.n, "shots": c.shots, **res}
    ctx.write("novel", out)
    return out


def section(res: H.Results, out: Path) -> str:
    if (why := res.why_not_shown("novel")) is not None:
        return why
    j = res.json("novel")
    n, k = j.get("n_eval"), j.get("shots", "?")
    names = {"zero_shot": "zero-shot", "fv": "FV", "fv_tuned": "fine-tuned FV", "icl": f"ICL {k}-shot"}
    rows = []
    for r, v in j["relations"].items():
        for s in ("test", "novel"):
            x = v.get(s, {})
            rows.append([r, s, x.get("items"), x.get("chance"), *[H.acc(x.get(key), n) for key in names]])
    mean = [[f"mean ({s})", s, "", "", *[j["mean"][s].get(key) for key in names]] for s in ("test", "novel") if s in j.get("mean", {})]
    nv = j.get("mean", {}).get("novel", {})
    warn = H.note("ICL fails on the novel objects too: the model itself does not produce these answers (e.g. it never saw the objects), "
                  "so a low FV score there says nothing about the vector") if nv.get("icl") is not None and nv["icl"] < 0.05 else ""
    return warn + H.table(["relation", "queries", "items", "chance", *names.values()], rows + mean,
                   caption=f"Accuracy on {H.esc(n)} prompts per relation and split. Novel objects: {H.esc(j.get('how', ''))}. "
                           "Vectors at the layers chosen on val (extracted: eval stage; fine-tuned: finetune stage). ICL: novel queries only "
                           "(test's is in the ICL section).")


def table(res: dict) -> list[dict]:
    """One row per (relation, split: test | novel) with every accuracy."""
    if "skipped" in res:
        return []
    return [{"relation": r, "split": s, **{k: x.get(k) for k in ("items", "chance", *KEYS)}} for r, v in res["relations"].items() for s, x in v.items()]


STAGE = Stage("novel", "extracted and fine-tuned vectors on queries whose answers are held-out objects, beside test", run,
              needs=("eval", "finetune"), section="novel", settings=NovelSettings,
              report=(ReportSection("novel", "Novel objects: the vectors on held-out answers", section),), table=table)
