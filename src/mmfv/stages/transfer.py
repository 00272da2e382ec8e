"""Stage ``transfer`` (opt-in): vectors built in another run (``[transfer] source``: its extracted
and fine-tuned vectors, e.g. from synthetic scenes) evaluated on this run's data (e.g. GQA) — at the
layer the source chose, and at a layer chosen on this run's ``val`` — beside this run's own vector,
on this run's ``test``. The vectors must come from the same model (they remember which)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from mmfv import prompts as P
from mmfv.report import html as H
from mmfv.settings import Count, Section
from mmfv.stages.base import Context, ReportSection, Stage, StageSkipped

KEYS = ("zero_shot", "fv_here", "fv_source", "fv_source_val", "fv_tuned_source", "fv_tuned_source_val")


class TransferSettings(Section):
    source: str = Field("", description="run folder whose vectors are evaluated on this run's data (empty: the stage is skipped)")
    n: Count = Field(200, description="val / test prompts per relation")
    cached: bool = Field(True, description="cached injection for the layer sweeps and scores (false: a full forward each time)")


def source_vectors(source: str | Path, relations: list[str], lmm) -> tuple[dict, dict]:
    """(extracted, fine-tuned) relation -> FunctionVector of the source run (its ``run.use`` followed),
    for the relations both runs have; a vector of another model is a one-line error."""
    from mmfv.vectors import FunctionVector

    res = H.Results(Path(source))
    if not Path(source).is_dir():
        raise FileNotFoundError(f"config key transfer.source: {source} is not a folder: point it at a finished run")
    ev = res.dir("eval")
    if ev is None or not (ev / "vectors").is_dir():
        raise FileNotFoundError(f"config key transfer.source: {source} has no eval/vectors: run the pipeline through eval there first")
    ft = res.dir("finetune")
    load = lambda d: {r: FunctionVector.load(d / f"{r}.safetensors", lmm) for r in relations if (d / f"{r}.safetensors").exists()}  # noqa: E731
    return load(ev / "vectors"), (load(ft / "vectors") if ft is not None and (ft / "vectors").is_dir() else {})


def run(ctx: Context) -> dict:
    from mmfv import evaluate
    from mmfv.injection import Stems
    from mmfv.stages import vectors as VS

    c, lmm, bs, seed = ctx.cfg.transfer, ctx.lmm, ctx.cfg.run.batch_size, ctx.seed
    stems = Stems(lmm) if c.cached else None
    if not c.source:
        raise StageSkipped("opt-in: set transfer.source to another run's folder")
    ext, tuned = source_vectors(c.source, ctx.relations, lmm)
    if not ext:
        raise ValueError(f"config key transfer.source: {c.source} has no vector for any relation of this run ({', '.join(ctx.relations)})")
    here = VS.load(ctx.input("eval") / "vectors", list(ext), lmm)
    val, test = ctx.items("val"), ctx.items("test")
    res: dict = {"source": str(c.source), "relations": {}}
    for rel, fv in ext.items():
        zv, zt = P.build("zero-shot", val[rel], val, 0, c.n, seed), P.build("zero-shot", test[rel], test, 0, c.n, seed)
        acc = lambda v=None, layer=None: evaluate.accuracy(lmm, zt, v, layer, bs, ctx.ex, stems)["acc"]  # noqa: E731
        with ctx.ex.scope(rel):
            layer = evaluate.best_layer(evaluate.layer_sweep(lmm, zv, fv.vector, bs, ex=ctx.ex, stems=stems))
            r = {"zero_shot": acc(), "fv_here": acc(here[rel].vector, here[rel].layer), "layer_here": here[rel].layer,
                 "fv_source": acc(fv.vector, fv.layer), "layer_source": fv.layer, "fv_source_val": acc(fv.vector, layer), "layer_val": layer}
            if rel in tuned:
                t = tuned[rel]
                tl = evaluate.best_layer(evaluate.layer_sweep(lmm, zv, t.vector, bs, ex=ctx.ex, stems=stems))
                r |= {"fv_tuned_source": acc(t.vector, t.layer), "fv_tuned_source_val": acc(t.vector, tl), "layer_tuned_val": tl}
        res["relations"][rel] = r
        if stems is not None:
            stems.clear()  # the next relation has other prompts
        ctx.ex.info("  %s: zero-shot %.3f  FV here %.3f  source FV %.3f (val layer %.3f)", rel, r["zero_shot"], r["fv_here"], r["fv_source"], r["fv_source_val"])
    res["mean"] = {k: H.mean([v.get(k) for v in res["relations"].values()]) for k in KEYS}
    out = {"model": lmm.model_id, "n_eval": c.n, **res}
    ctx.write("transfer", out)
    return out


def section(res: H.Results, out: Path) -> str:
    if (why := res.why_not_shown("transfer")) is not None:
        return why
    j = res.json("transfer")
    n = j.get("n_eval")
    names = ["zero-shot", "FV built here", "source FV (source's layer)", "source FV (layer chosen on val here)",
             "source tuned FV (its layer)", "source tuned FV (val layer here)"]
    rows = [[r, *[H.acc(v.get(k), n) for k in KEYS], f"{v.get('layer_source')} / {v.get('layer_val')}"] for r, v in j["relations"].items()]
    mean = ["mean", *[j["mean"].get(k) for k in KEYS], ""]
    return H.table(["relation", *names, "layers (source / val)"], rows, mean,
                   caption=f"Zero-shot test accuracy of this run's data, {H.esc(n)} prompts per relation, with vectors built in {H.esc(j['source'])}.")


def table(res: dict) -> list[dict]:
    """One row per relation: every accuracy and the layers used."""
    return [] if "skipped" in res else [{"relation": r, **v} for r, v in res["relations"].items()]


STAGE = Stage("transfer", "vectors of another run evaluated on this run's data (opt-in: transfer.source)", run, needs=("eval",),
              section="transfer", settings=TransferSettings, folders=lambda cfg: (cfg.transfer.source,) if cfg.transfer.source else (),
              report=(ReportSection("transfer", "Transfer: another run's vectors on this run's data", section),), table=table)
