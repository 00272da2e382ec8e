"""Stage ``cma``: the indirect effect of every head on corrupted ``eval`` prompts, per relation.

Owns the ``[cma]`` section, which the ``means`` and ``vectors`` stages share."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from mmfv import prompts as P
from mmfv.io import write_safetensors
from mmfv.report import html as H
from mmfv.settings import Count, Demos, Section, fail
from mmfv.stages.base import Context, ReportSection, Stage


class CMASettings(Section):
    n_mean: Count = Field(100, description="clean prompts for the mean head activations")
    n_cma: Count = Field(25, description="corrupted prompts for the indirect effects")
    shots: Demos = Field(5, description="demonstrations per prompt (clean and corrupted)")
    engine: Literal["fast", "skip", "reference"] = Field("fast", description="fast: KV-cached last-token batches; skip: fast, and each patched row "
                                                        "runs only the layers from its own on (same IEs); reference: the published algorithm")
    metric: Literal["prob", "logprob", "logit_diff"] = Field("prob", description="what an indirect effect changes: P(answer), its log, or answer logit minus the best other")
    top_k: Count = Field(10, description="heads in a function vector")
    fv_bias: bool = Field(False, description="add the output projection's bias once per head to the vector (the paper's code does)")
    only_correct: bool = Field(False, description="average only prompts the model answers correctly")
    batch_size: Count = Field(8, description="corrupted prompts per batch of the fast and skip engines")
    head_set: Literal["self", "cross"] = Field("self", description="self, or cross for cross-attention (Flamingo-style) models")

    @model_validator(mode="after")
    def _check(self) -> "CMASettings":
        if self.top_k > 100_000:
            raise fail("top_k", f"{self.top_k} heads is more than any model has")
        return self


def heads(cfg: Any, lmm: Any) -> int:
    """How many heads of the config's head set the model has (one-line error if it has no such set)."""
    name = cfg.cma.head_set
    if name not in lmm.head_sets:
        raise ValueError(f"config key cma.head_set: {lmm.model_id} has no {name!r} heads (it has {', '.join(lmm.head_sets)})")
    hs = lmm.head_sets[name]
    return hs.n_layers * hs.n_heads


def check(cfg: Any, lmm: Any) -> None:
    """Before any stage runs: the model has the head set, and cma.top_k fits in it."""
    n, hs = heads(cfg, lmm), lmm.head_sets[cfg.cma.head_set]
    if cfg.cma.top_k > n:
        raise ValueError(f"config key cma.top_k: {cfg.cma.top_k} is larger than the {n} heads of {lmm.model_id} "
                         f"({hs.n_layers} layers x {hs.n_heads} {hs.name} heads)")


def run(ctx: Context) -> dict:
    from mmfv import cma
    from mmfv.execution import Checkpoint
    from mmfv.stages import means as M

    c, lmm, out = ctx.cfg.cma, ctx.lmm, ctx.dir("cma")
    check(ctx.cfg, lmm)
    hs = lmm.head_sets[c.head_set]
    items = ctx.items("eval")
    results, done = {}, {}
    for rel in ctx.relations:
        clean = P.build("clean", items[rel], items, c.shots, c.n_mean, ctx.seed, ctx.protocol)
        corrupt = corrupted_prompts(ctx, items, rel)
        means, n_mean = M.load(ctx.input("means"), rel, c.head_set, lmm)
        ck = Checkpoint(out / "checkpoints" / f"{rel}.safetensors",
                        cma.cma_fingerprint(lmm, clean, corrupt, c.engine, c.head_set, c.only_correct, c.metric))
        with ctx.ex.scope(rel):
            ie = cma.indirect_effects(lmm, corrupt, means, c.engine, c.batch_size, head_set=c.head_set, metric=c.metric, ex=ctx.ex, checkpoint=ck)
        res = cma.CMAResult(rel, means, ie, n_mean, c.engine, c.head_set)
        save(res, lmm, out)
        done[rel] = res
        top = res.top_heads(c.top_k)
        results[rel] = {
            "top_heads": [[l, h, round(float(res.aie[l, h]), 6)] for l, h in top],
            "top_share": round(res.top_share(c.top_k), 4),
            "top_layers": sorted(l for l, _ in top),
            "n_mean": res.n_mean, "n_cma": len(corrupt), "engine": c.engine,
            "aie": [[round(float(x), 6) for x in row] for row in res.aie],
        }
        if c.metric != "prob":
            results[rel]["metric"] = c.metric
        ctx.ex.info("CMA %s: top-%d share %.3f, top heads %s", rel, c.top_k, results[rel]["top_share"], results[rel]["top_heads"][:3])
    draw(done, c.top_k, lmm.model_id, out)
    summary = {"model": lmm.model_id, "config_hash": lmm.config_hash(), "head_set": c.head_set, "n_layers": hs.n_layers, "n_heads": hs.n_heads,
               "top_k": c.top_k, "shots": c.shots, "relations": results}
    ctx.write("cma", summary)
    return summary


def head_ci(ie: Any) -> Any:
    """(L, H) half-width of the 95% interval of each head's AIE, from its per-prompt IEs (N, L, H)."""
    import torch

    n = ie.shape[0]
    return 1.96 * ie.std(0) / n**0.5 if n > 1 else torch.zeros(ie.shape[1:])


def draw(results: dict, k: int, model_id: str, out: Path) -> None:
    """Per relation and all together: AIE heatmaps on ONE symmetric colour scale, top-k boxed where
    legible, each top head's 95% interval printed (PNG, SVG, PDF)."""
    from mmfv import plots

    vmax = max(float(r.aie.abs().max()) for r in results.values()) or 1.0
    for rel, r in results.items():
        plots.aie_heatmap(r.aie, r.top_heads(k), f"AIE, {rel} ({model_id}); top {k} boxed", out / f"aie_{rel}.png", vmax=vmax, ci=head_ci(r.ie),
                          formats=H.FORMATS)
    plots.heatmap_grid({rel: r.aie for rel, r in results.items()}, {rel: r.top_heads(k) for rel, r in results.items()}, vmax,
                       title=f"AIE per head ({model_id}); top {k} boxed, one colour scale", path=out / "aie_all.png", formats=H.FORMATS)


def corrupted_prompts(ctx: Context, items: dict, rel: str) -> list:
    """The prompts whose indirect effects are measured. mmfv: corrupted prompts drawn on their own
    (seed + 1). fu2025: the shuffled versions of the first n_cma clean prompts, and with
    only_correct only those whose clean version the model answers correctly (the paper's filter)."""
    from mmfv import evaluate

    c = ctx.cfg.cma
    if ctx.protocol == "mmfv":
        return P.build("corrupted", items[rel], items, c.shots, c.n_cma, ctx.seed + 1)
    corrupt = P.build("corrupted", items[rel], items, c.shots, c.n_cma, ctx.seed, ctx.protocol)
    if not c.only_correct:
        return corrupt
    clean = P.build("clean", items[rel], items, c.shots, c.n_cma, ctx.seed, ctx.protocol)
    ok = evaluate.correct(ctx.lmm, clean, ctx.cfg.run.batch_size, ex=ctx.ex).tolist()
    kept = [p for p, right in zip(corrupt, ok) if right]
    if not kept:
        raise ValueError(f"relation {rel}: the model answered none of the {len(clean)} clean CMA prompts correctly, so the paper's filter "
                         "(cma.only_correct) leaves no corrupted prompt: set cma.only_correct = false or use more prompts")
    return kept


def save(res: Any, lmm: Any, folder: Path) -> None:
    meta = {"relation": res.relation, "engine": res.engine, "n_mean": str(res.n_mean), "head_set": res.head_set,
            "model_id": lmm.model_id, "config_hash": lmm.config_hash()}
    write_safetensors(Path(folder) / f"{res.relation}.safetensors", {"means": res.means, "ie": res.ie}, meta)


def read(path: Path, stage: str, lmm: Any = None) -> tuple[dict, dict]:
    """(tensors, metadata) of a means or CMA results file; a damaged file, or (with ``lmm``) one
    computed with another model, is a one-line error naming it."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except Exception as e:  # noqa: BLE001 - any damage reads the same to the user
        raise ValueError(f"{path} is damaged ({type(e).__name__}): delete it and rerun the {stage} stage") from None
    if lmm is not None and meta.get("config_hash") != lmm.config_hash():
        raise ValueError(f"{path} was computed with another model ({meta.get('model_id', 'config ' + str(meta.get('config_hash')))}), not "
                         f"{lmm.model_id}: rerun the {stage} stage with this model, or point run.use at results of this model")
    return tensors, meta


def load(folder: str | Path, relation: str, lmm: Any = None) -> Any:
    """The CMAResult of one relation from a cma folder (with ``lmm``: checked to be that model's)."""
    from mmfv import cma

    path = Path(folder) / f"{relation}.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the cma stage for {relation} into {folder} first")
    t, meta = read(path, "cma", lmm)
    try:
        return cma.CMAResult(meta["relation"], t["means"], t["ie"], int(meta["n_mean"]), meta["engine"], meta.get("head_set", "self"))
    except (KeyError, ValueError) as e:
        raise ValueError(f"{path} is damaged (no {e}): delete it and rerun the cma stage") from None


def section(res: H.Results, out: Path) -> str:
    if (why := res.why_missing("cma")) is not None:
        return why
    cma, d = res.json("cma"), res.dir("cma")
    rels = list(cma["relations"])
    k = cma.get("top_k", max((len(v["top_heads"]) for v in cma["relations"].values()), default=0))
    heat = [H.img_file(d / "aie_all.png")] if (d / "aie_all.png").exists() else [H.img_file(d / f"aie_{r}.png") for r in rels if (d / f"aie_{r}.png").exists()]
    html = (f"<p>{H.esc(cma.get('n_layers', '?'))} layers × {H.esc(cma.get('n_heads', '?'))} heads; {H.esc(cma.get('shots', '?'))}-shot corrupted prompts; "
            f"the top {H.esc(k)} heads by average indirect effect (AIE) are boxed where legible (|AIE| ≥ 10% of the shared colour scale), "
            "with their 95% interval over prompts.</p>")
    html += H.figs(heat) if heat else H.note("no AIE heatmaps (cma/aie_<relation>.png) in the folder")
    cis = {}
    for r in rels:  # per-head intervals from the per-prompt IEs kept beside the results
        try:
            cis[r] = head_ci(load(d, r).ie)
        except (FileNotFoundError, KeyError, ValueError):
            pass
    summary = [[r, v.get("top_share"), " ".join(map(str, v.get("top_layers", []))), v.get("n_mean"), v.get("n_cma"), v.get("engine")]
               for r, v in cma["relations"].items()]
    left = "<div><h3>Top heads</h3>" + H.table(["relation", f"top-{k} share", "top layers", "n mean", "n CMA", "engine"], summary,
                                               caption=f"Top-{k} share: the top {k} heads' part of the summed positive AIE;<br>top layers: the layers of those heads; "
                                                       "n: prompts for the<br>mean activations and for the indirect effects.") + "</div>"
    depth = max(len(v["top_heads"]) for v in cma["relations"].values())
    ranks = []
    for i in range(depth):
        row: list[Any] = [i + 1]
        for r in rels:
            th = cma["relations"][r]["top_heads"]
            pm = f" ± {float(cis[r][th[i][0], th[i][1]]):.3f}" if r in cis and i < len(th) else ""
            row.append(H.Raw(f"L{th[i][0]} H{th[i][1]} <small>{th[i][2]:.3f}{pm}</small>") if i < len(th) else None)
        ranks.append(row)
    right = (f"<div><h3>Top {k} heads by AIE</h3>" + H.table(["rank", *rels], ranks, caption="Layer, head and AIE ± 95% interval: Δ P(answer) when the<br>"
                                                                 "head's mean clean output is patched into corrupted prompts.") + "</div>")
    return html + f'<div class="tables">{left}{right}</div>'


def table(res: dict) -> list[dict]:
    """One row per (relation, layer, head): its AIE, and its rank when among the top heads."""
    rows = []
    for r, v in res.get("relations", {}).items():
        rank = {(l, h): i + 1 for i, (l, h, _) in enumerate(v["top_heads"])}
        rows += [{"relation": r, "layer": l, "head": h, "aie": a, "top_rank": rank.get((l, h))} for l, row in enumerate(v["aie"]) for h, a in enumerate(row)]
    return rows


STAGE = Stage("cma", "causal mediation analysis: the indirect effect of every attention head", run, needs=("means",), section="cma",
              settings=CMASettings, check=check, report=(ReportSection("cma", "Causal mediation: the heads that carry each relation", section),), table=table)
