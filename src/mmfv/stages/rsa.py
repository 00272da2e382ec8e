"""Stage ``rsa`` (and the ``mmfv rsa RUN_A RUN_B`` verb): representational similarity of the
relations between two representations — per-relation mean head activations of a layer (the means
stage) or function vectors — of this run's layers with each other, or of this run with another
(``[rsa] other``: two models, or two layers). No model is loaded."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import torch
from pydantic import Field

from mmfv.report import html as H
from mmfv.settings import Count, Section
from mmfv.stages.base import Context, ReportSection, Stage, StageSkipped

Layer = Annotated[int, Field(ge=-1, le=10**6)]


class RSASettings(Section):
    enabled: bool = Field(True, description="run the representational similarity analysis (false: the stage is skipped)")
    other: str = Field("", description="another run folder to compare with (empty: this run's layers with each other and with its vectors)")
    what: Literal["means", "vectors"] = Field("means", description="mean head activations per relation (means stage) or function vectors")
    layer: Layer = Field(-1, description="means: this run's layer for the headline comparison (-1: all layers concatenated; without other: the first layer)")
    other_layer: Layer = Field(-1, description="means: the other run's layer (-1: all layers concatenated; without other: this run's last layer)")
    metric: Literal["pearson", "cosine"] = Field("pearson", description="RDM distance: 1 - Pearson r, or cosine distance")
    perms: Count = Field(1000, description="label permutations of the test (exact over all orders when there are fewer)")


def features(run: str | Path, what: str = "means", layer: int = -1) -> dict[str, torch.Tensor]:
    """relation -> features read from a run folder (its ``run.use`` followed): a layer's mean head
    activations (H·d,), all layers' (L·H·d,) for ``layer`` −1, or the function vector (D,)."""
    from mmfv.stages.cma import read
    from mmfv.vectors import FunctionVector

    root = Path(run)
    folder = H.Results(root).dir(what)
    if folder is None or not any(folder.glob("*.safetensors")):
        raise FileNotFoundError(f"{root} holds no {what} results ({what}/*.safetensors): run the {what} stage there first")
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        if what == "vectors":
            if layer != -1:
                raise ValueError("a layer applies to means only: a function vector is one (D,) vector per relation")
            out[f.stem] = FunctionVector.load(f).vector.float()
            continue
        m = read(f, "means")[0]["means"].float()  # (L, H, d)
        if not -1 <= layer < m.shape[0]:
            raise ValueError(f"layer {layer} is out of range: {f} has layers 0..{m.shape[0] - 1}")
        out[f.stem] = m.reshape(-1) if layer == -1 else m[layer].reshape(-1)
    return out


def n_layers(run: str | Path) -> int:
    from mmfv.stages.cma import read

    folder = H.Results(Path(run)).dir("means")
    if folder is None or not any(folder.glob("*.safetensors")):
        raise FileNotFoundError(f"{run} holds no means results (means/*.safetensors): run the means stage there first")
    return int(read(next(iter(sorted(folder.glob("*.safetensors")))), "means")[0]["means"].shape[0])


def compare_runs(a: str | Path, b: str | Path, what: str = "means", layer_a: int = -1, layer_b: int = -1, metric: str = "pearson",
                 perms: int = 1000, seed: int = 0) -> dict:
    """Run ``a`` against run ``b`` (or a layer against a layer, of one run or two): the headline RSA
    (rho, p, both RDMs) and, for means, rho of every layer of ``a`` against every layer of ``b``."""
    from mmfv import rsa

    out = {"a": str(a), "b": str(b), "what": what, "layer_a": layer_a, "layer_b": layer_b,
           **rsa.compare(features(a, what, layer_a), features(b, what, layer_b), metric, perms, seed)}
    if what == "means":
        fa = [features(a, "means", l) for l in range(n_layers(a))]
        fb = [features(b, "means", l) for l in range(n_layers(b))]
        rdms_a = [rsa.rdm(torch.stack([f[r] for r in out["relations"]]), metric) for f in fa]
        rdms_b = [rsa.rdm(torch.stack([f[r] for r in out["relations"]]), metric) for f in fb]
        out["by_layer"] = [[round(rsa.spearman(rsa.upper(x), rsa.upper(y)), 4) for y in rdms_b] for x in rdms_a]
    return out


def run(ctx: Context) -> dict:
    from mmfv import rsa

    c = ctx.cfg.rsa
    if not c.enabled:
        raise StageSkipped("off (rsa.enabled = false)")
    shared = set(features(ctx.out, c.what if c.other else "vectors")) & (set(features(c.other, c.what)) if c.other else set(ctx.relations))
    if len(shared) < 3:
        raise StageSkipped(f"RSA needs at least 3 relations in both representations; there are {len(shared)}")
    if c.other:
        res = compare_runs(ctx.out, c.other, c.what, c.layer, c.other_layer, c.metric, c.perms, ctx.seed)
    else:  # two layers of this run (default: first and last), every layer pair, each layer against the function vectors
        last = n_layers(ctx.out) - 1
        res = compare_runs(ctx.out, ctx.out, "means", 0 if c.layer == -1 else c.layer, last if c.other_layer == -1 else c.other_layer,
                           c.metric, c.perms, ctx.seed)
        fv = features(ctx.out, "vectors")
        res["vs_vectors"] = [rsa.compare(features(ctx.out, "means", l), fv, c.metric, c.perms, ctx.seed) | {"layer": l}
                             for l in range(n_layers(ctx.out))]
    res |= {"a": "this run", "b": c.other or "this run"}  # results never depend on where the run folder is
    ctx.ex.info("RSA %s: rho %.3f, p %.4f (%d relations)", c.other or "layers", res["rho"], res["p"], len(res["relations"]))
    ctx.write("rsa", res)
    return res


def format_table(res: dict) -> str:
    """Plain text: both RDMs, the headline rho and p, and the layer-by-layer rho matrix (means)."""
    rels = res["relations"]
    w = max(8, *map(len, rels))
    lines = [f"RSA of {res['what']} ({res['metric']} RDMs, {len(rels)} relations): {res['a']} layer {res['layer_a']} vs {res['b']} layer {res['layer_b']}"]
    for name in ("rdm_a", "rdm_b"):
        lines.append(f"{name}:" + "".join(f" {r:>{w}}" for r in rels))
        lines += [f"{r:<6}" + "".join(f" {v:>{w}.3f}" for v in row) for r, row in zip(rels, res[name])]
    kind = "exact, all orders" if res["exact"] else f"{res['n_perm']} permutations, seed {res['seed']}"
    lines.append(f"Spearman rho {res['rho']:.4f}, p {res['p']:.4f} ({kind})")
    if res.get("by_layer"):
        lines.append("rho by layer (rows: a, columns: b):")
        lines += [f"L{i:<4}" + "".join(f" {v:>6.3f}" for v in row) for i, row in enumerate(res["by_layer"])]
    return "\n".join(lines)


def section(res: H.Results, out: Path) -> str:
    if (why := res.why_not_shown("rsa")) is not None:
        return why
    j = res.json("rsa")
    kind = (f"exact over all {j['n_perm']} label orders, so p ≥ 1/{j['n_perm']}" if j["exact"] else f"{j['n_perm']} label permutations")
    html = H.note(f"{j['what']}: {j['a']} (layer {j['layer_a']}) vs {j['b']} (layer {j['layer_b']}); layer −1 = all layers concatenated. "
                  f"Spearman rho of the RDMs' upper triangles {j['rho']:.3f}, p = {j['p']:.4f} ({kind}); {j['metric']} distances.")
    rels = j["relations"]
    g = lambda v: H.Raw(f"{v:.3g}")  # noqa: E731 - dissimilarities can be tiny (early layers)
    tabs = [f"<div><h3>RDM {s}</h3>" + H.table(["", *rels], [[r, *map(g, row)] for r, row in zip(rels, j[f"rdm_{s}"])]) + "</div>" for s in ("a", "b")]
    html += '<div class="tables">' + "".join(tabs) + "</div>"
    if j.get("vs_vectors"):
        html += "<h3>Each layer's mean activations vs the function vectors</h3>" + H.table(
            ["layer", "rho", "p"], [[v["layer"], v["rho"], v["p"]] for v in j["vs_vectors"]])
    if j.get("by_layer"):
        m = j["by_layer"]
        html += res.fold("RSA rho, every layer against every layer", H.table(["layer", *[f"L{i}" for i in range(len(m[0]))]], [[f"L{i}", *row] for i, row in enumerate(m)]))
    return html


def table(res: dict) -> list[dict]:
    """One row per (layer of a, layer of b) with rho (means), or the headline row alone."""
    if "skipped" in res:
        return []
    rows = [{"layer_a": res["layer_a"], "layer_b": res["layer_b"], "rho": res["rho"], "p": res["p"]}]
    rows += [{"layer_a": i, "layer_b": j, "rho": v, "p": None} for i, row in enumerate(res.get("by_layer", [])) for j, v in enumerate(row)]
    return rows


STAGE = Stage("rsa", "representational similarity of relations: layers of this run, or this run vs another", run, needs=("means", "vectors"),
              section="rsa", settings=RSASettings, report=(ReportSection("rsa", "Representational similarity (RSA) of the relations", section),),
              table=table, uses_model=False, folders=lambda cfg: (cfg.rsa.other,) if cfg.rsa.other else ())
