"""Stage ``icl``: accuracy by number of demonstrations, clean and corrupted prompts, per relation."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from mmfv.report import html as H
from mmfv.settings import Count, Section, Shots
from mmfv.stages.base import Context, ReportSection, Stage


class ICLSettings(Section):
    shots: list[Shots] = Field(default_factory=lambda: [0, 1, 2, 4, 8], min_length=1, description="numbers of demonstrations (0: zero-shot)")
    n: Count = Field(400, description="test prompts per (kind, shots, relation) cell")


def run(ctx: Context) -> dict:
    from mmfv import evaluate, plots

    c = ctx.cfg
    test = ctx.items("test", tuple(ctx.relations))  # corrupted demos come from the asked relations only
    res = evaluate.icl(ctx.lmm, test, test, c.icl.shots, c.icl.n, seed=ctx.seed, batch_size=c.run.batch_size, ex=ctx.ex, protocol=ctx.protocol)
    ctx.ex.info("ICL accuracy (test):\n%s", evaluate.format_icl_table(res, ctx.relations))
    kinds = {f"{kind} (mean)": [res[kind][str(k)]["mean"]["acc"] for k in c.icl.shots] for kind in res}
    plots.curves(kinds, c.icl.shots, "demonstrations (k)", "accuracy (test)", f"ICL by shots ({ctx.lmm.model_id})", ctx.dir("icl") / "icl_curve.png",
                 formats=H.FORMATS)
    out = {"model": ctx.lmm.model_id, "split": "test", "n": c.icl.n, "seed": ctx.seed, "relations": ctx.relations, **res}
    ctx.write("icl", out)
    return out


def section(res: H.Results, out: Path) -> str:
    from mmfv import plots

    if (why := res.why_missing("icl")) is not None:
        return why
    icl = res.json("icl")
    kinds = [k for k in ("clean", "corrupted") if icl.get(k)]
    if not kinds:
        return H.note("icl/results.json holds no clean or corrupted accuracies")
    rels = list(icl.get("relations") or [r for r in icl[kinds[0]][H.by_k(icl[kinds[0]])[0]] if r != "mean"])
    shots = H.by_k(icl[kinds[0]])
    x = [int(float(k)) for k in shots]

    def series(kind: str, key: str) -> tuple[list[float], tuple[list[float], list[float]]]:
        cells = [icl[kind][k][key] for k in shots]
        return [c["acc"] for c in cells], ([c["ci95"][0] for c in cells], [c["ci95"][1] for c in cells])

    mean_s, mean_b = {}, {}
    for kind in kinds:
        mean_s[kind], mean_b[kind] = series(kind, "mean")
    figs = [H.png(plots.curves, mean_s, x, "demonstrations (k)", "accuracy (test)", "ICL, mean over relations (shaded: 95% CI)",
                  out / "icl_mean.png", bands=mean_b)]
    for kind in kinds:
        s, b = {}, {}
        for r in rels:
            s[r], b[r] = series(kind, r)
        figs.append(H.png(plots.curves, s, x, "demonstrations (k)", "accuracy (test)", f"ICL, {kind} prompts, per relation (shaded: 95% CI)",
                          out / f"icl_{kind}.png", bands=b))
    rows = []
    for kind in kinds:
        for k in shots:
            row = icl[kind][k]
            rows.append([kind, int(float(k)), *[H.Raw(f"{row[r]['acc']:.3f} <small>{H.ci(row[r].get('ci95'))}</small>") for r in rels],
                         row["mean"]["acc"], H.ci(row["mean"].get("ci95"))])
    cap = (f"Accuracy on {H.esc(icl.get('split', 'test'))} prompts, {H.esc(icl.get('n', '?'))} per cell, seed {H.esc(icl.get('seed', '?'))}; "
           "95% Wilson intervals in brackets. k = 0 is the zero-shot prompt for both kinds; corrupted prompts show demonstrations of other relations only.")
    return H.figs(figs) + H.table(["kind", "k", *rels, "mean", "mean 95% CI"], rows, caption=cap)


def table(res: dict) -> list[dict]:
    """One row per (kind, shots, relation) with the accuracy, its 95% interval and n."""
    return [{"kind": kind, "k": int(k), "relation": r, "acc": c["acc"], "ci_low": c["ci95"][0], "ci_high": c["ci95"][1], "n": c["n"]}
            for kind in ("clean", "corrupted") for k, row in res.get(kind, {}).items() for r, c in row.items()]


STAGE = Stage("icl", "in-context accuracy by number of demonstrations, clean and corrupted", run, section="icl", settings=ICLSettings,
              report=(ReportSection("icl", "In-context learning by number of demonstrations", section),), table=table)
