"""One self-contained HTML report of a results folder: every figure embedded, every table inline.

``build_report(results_dir)`` reads the stage folders of an ``mmfv run`` (icl/ cma/ vectors/ eval/
finetune/ compose/) and writes ``report/report.html`` plus the PNGs it drew into ``report/``.
A section whose stage did not run says so in one line. Given a model, it also shows example scenes
with the model's answer without and with the relation's function vector.

Deterministic for the same inputs: no timestamps, PNGs are written without metadata, JSON keys
that are numbers (shots, sizes, head counts) are ordered numerically.
"""

from __future__ import annotations

import base64
import html
import io
import math
import tomllib
from pathlib import Path
from typing import Any, Iterable, Sequence

from mmfv import __version__, plots
from mmfv.io import read_json, write_bytes

# Stage folder names; the first that exists is used ("ft" is what hand-run CLI verbs often use).
STAGE_DIRS = {"icl": ("icl",), "cma": ("cma",), "vectors": ("vectors",), "eval": ("eval",), "finetune": ("finetune", "ft"), "compose": ("compose",)}

# (anchor, heading) of every section, in order; tests look for these headings.
SECTIONS = (
    ("icl", "In-context learning by number of demonstrations"),
    ("cma", "Causal mediation: the heads that carry each relation"),
    ("eval", "Function vectors: zero-shot with the vector, layer and head-count sweeps"),
    ("summary", "Summary: zero-shot, FV, fine-tuned FV and best ICL"),
    ("finetune", "Fine-tuned function vectors"),
    ("compose", "Composition of relation vectors and analogies"),
    ("examples", "Examples: the model's answer without and with the vector"),
)

CSS = """
body{font-family:"DejaVu Sans",-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;max-width:1200px;margin:24px auto;padding:0 20px;color:#222;line-height:1.45;background:#fff}
h1{font-size:1.7em;margin:0 0 .3em}h2{font-size:1.3em;border-bottom:2px solid #dde2e8;padding-bottom:4px;margin:2.2em 0 .6em}
h3{font-size:1.02em;margin:1.3em 0 .4em}
.meta td:first-child{font-weight:600;color:#555}
nav ol{margin:.3em 0;padding-left:1.4em;columns:2;font-size:.92em}nav a{color:#2457a6;text-decoration:none}
table{border-collapse:collapse;margin:6px 0 14px;font-size:.86em;font-variant-numeric:tabular-nums}
th,td{border:1px solid #d5dae0;padding:3px 9px;text-align:right;vertical-align:top;white-space:nowrap}
th{background:#eef1f5;font-weight:600;text-align:center;white-space:normal;min-width:3.5em;max-width:9em;vertical-align:bottom}tr:nth-child(even) td{background:#f8f9fb}
td:first-child,th:first-child{text-align:left}td.l{text-align:left}
tr.mean td{font-weight:600;border-top:2px solid #9aa3ad;background:#f1f4f7}
td small{color:#6b7280;font-size:.85em}
.scroll{overflow-x:auto;max-width:100%}
.figs{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start;margin:8px 0}
.figs img{max-width:calc(50% - 6px);height:auto;border:1px solid #eee}
img{max-width:100%}
.tables{display:flex;flex-wrap:wrap;gap:28px;align-items:flex-start}.tables h3{margin-top:.2em}.figs>.tables{flex:1 1 300px}
.note{color:#6b7280;font-style:italic;margin:.3em 0}
pre{background:#f6f8fa;border:1px solid #e1e4e8;border-radius:4px;padding:10px 12px;font-size:.8em;line-height:1.35;overflow-x:auto}
pre.config{columns:20em;column-gap:28px;column-rule:1px solid #e1e4e8;white-space:pre-wrap;overflow-wrap:anywhere}
.strip{display:grid;grid-template-columns:repeat(auto-fill,minmax(175px,1fr));gap:14px;margin-top:8px}
.strip figure{margin:0;border:1px solid #d5dae0;border-radius:6px;padding:8px;background:#fbfcfd}
.strip img{display:block;width:100%;height:auto;image-rendering:pixelated;border:1px solid #ccc}
figcaption{font-size:.85em;margin-top:6px;line-height:1.5}
.ok{color:#1a7f37;font-weight:600}.bad{color:#c62828;font-weight:600}
"""


# --- small HTML helpers ------------------------------------------------------------------------------
class Raw(str):
    """Cell content that is already HTML (not escaped)."""


def _esc(x: Any) -> str:
    return html.escape(str(x))


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _fmt(v: Any) -> str:
    """Floats to 3 decimals; missing values (None, NaN) as a dash; everything else escaped."""
    if isinstance(v, Raw):
        return str(v)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if isinstance(v, float):
        return f"{v:.3f}"
    return _esc(v)


def _ci(ci: Sequence[float] | None) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]], mean: Sequence[Any] | None = None, caption: str = "") -> str:
    h = "".join(f"<th>{_esc(x)}</th>" for x in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in r) + "</tr>" for r in rows)
    if mean is not None:
        body += '<tr class="mean">' + "".join(f"<td>{_fmt(c)}</td>" for c in mean) + "</tr>"
    cap = f'<p class="note">{caption}</p>' if caption else ""
    return f'<div class="scroll"><table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table></div>{cap}'


def _img(data: bytes, alt: str) -> str:
    return f'<img src="data:image/png;base64,{base64.b64encode(data).decode()}" alt="{_esc(alt)}">'


def _img_file(path: Path) -> str:
    return _img(path.read_bytes(), path.name)


def _figs(parts: Iterable[str]) -> str:
    parts = [p for p in parts if p]
    return f'<div class="figs">{"".join(parts)}</div>' if parts else ""


def _note(text: str) -> str:
    return f'<p class="note">{_esc(text)}</p>'


def _missing(stage: str, why: str = "") -> str:
    return _note(f"stage {stage} not run" + (f" ({why})" if why else ""))


def _by_k(d: dict) -> list[str]:
    """Keys that are numbers ("0", "1", "16" …), numerically ordered (JSON sorts them as text)."""
    return sorted(d, key=lambda k: (float(k) if k.replace(".", "", 1).isdigit() else math.inf, k))


def _mean(values: Sequence[Any]) -> float | None:
    """Mean rounded like the stages round theirs (4 decimals); None unless every value is there."""
    if not values or any(v is None for v in values):
        return None
    return round(sum(values) / len(values), 4)


def _png(draw, *args, **kw) -> str:
    """Draw a figure with a ``plots`` helper (which writes the PNG atomically) and embed it."""
    path = draw(*args, **kw)
    return _img_file(Path(path))


# --- reading the results folder ---------------------------------------------------------------------
class Results:
    def __init__(self, root: Path):
        self.root = root
        self._cache: dict[str, dict | None] = {}

    def dir(self, stage: str) -> Path | None:
        for name in STAGE_DIRS[stage]:
            if (self.root / name).is_dir():
                return self.root / name
        return None

    def json(self, stage: str) -> dict | None:
        if stage not in self._cache:
            d = self.dir(stage)
            p = d / "results.json" if d else None
            self._cache[stage] = read_json(p) if p and p.exists() else None
        return self._cache[stage]

    def why_missing(self, stage: str) -> str | None:
        """None when the stage's results are there; else the one-line note to show."""
        if self.dir(stage) is None:
            return _missing(stage)
        if self.json(stage) is None:
            return _missing(stage, "its folder has no results.json yet")
        return None


# --- sections ----------------------------------------------------------------------------------------
def _icl(res: Results, out: Path) -> str:
    if (why := res.why_missing("icl")) is not None:
        return why
    icl = res.json("icl")
    kinds = [k for k in ("clean", "corrupted") if icl.get(k)]
    if not kinds:
        return _note("icl/results.json holds no clean or corrupted accuracies")
    rels = list(icl.get("relations") or [r for r in icl[kinds[0]][_by_k(icl[kinds[0]])[0]] if r != "mean"])
    shots = _by_k(icl[kinds[0]])
    x = [int(float(k)) for k in shots]

    def series(kind: str, key: str) -> tuple[list[float], tuple[list[float], list[float]]]:
        cells = [icl[kind][k][key] for k in shots]
        return [c["acc"] for c in cells], ([c["ci95"][0] for c in cells], [c["ci95"][1] for c in cells])

    mean_s, mean_b = {}, {}
    for kind in kinds:
        mean_s[kind], mean_b[kind] = series(kind, "mean")
    figs = [_png(plots.curves, mean_s, x, "demonstrations (k)", "accuracy (test)", "ICL, mean over relations (shaded: 95% CI)",
                 out / "icl_mean.png", bands=mean_b)]
    for kind in kinds:
        s, b = {}, {}
        for r in rels:
            s[r], b[r] = series(kind, r)
        figs.append(_png(plots.curves, s, x, "demonstrations (k)", "accuracy (test)", f"ICL, {kind} prompts, per relation (shaded: 95% CI)",
                         out / f"icl_{kind}.png", bands=b))
    rows = []
    for kind in kinds:
        for k in shots:
            row = icl[kind][k]
            rows.append([kind, int(float(k)), *[Raw(f"{row[r]['acc']:.3f} <small>{_ci(row[r].get('ci95'))}</small>") for r in rels],
                         row["mean"]["acc"], _ci(row["mean"].get("ci95"))])
    cap = (f"Accuracy on {_esc(icl.get('split', 'test'))} prompts, {_esc(icl.get('n', '?'))} per cell, seed {_esc(icl.get('seed', '?'))}; "
           "95% Wilson intervals in brackets. k = 0 is the zero-shot prompt for both kinds; corrupted prompts show demonstrations of other relations only.")
    return _figs(figs) + _table(["kind", "k", *rels, "mean", "mean 95% CI"], rows, caption=cap)


def _cma(res: Results) -> str:
    if (why := res.why_missing("cma")) is not None:
        return why
    cma, d = res.json("cma"), res.dir("cma")
    rels = list(cma["relations"])
    k = cma.get("top_k", max((len(v["top_heads"]) for v in cma["relations"].values()), default=0))
    heat = [_img_file(d / f"aie_{r}.png") for r in rels if (d / f"aie_{r}.png").exists()]
    out = (f"<p>{_esc(cma.get('n_layers', '?'))} layers × {_esc(cma.get('n_heads', '?'))} heads; {_esc(cma.get('shots', '?'))}-shot corrupted prompts; "
           f"the top {_esc(k)} heads by average indirect effect (AIE) are boxed.</p>")
    out += _figs(heat) if heat else _note("no AIE heatmaps (cma/aie_<relation>.png) in the folder")
    summary = [[r, v.get("top_share"), " ".join(map(str, v.get("top_layers", []))), v.get("n_mean"), v.get("n_cma"), v.get("engine")]
               for r, v in cma["relations"].items()]
    left = "<div><h3>Top heads</h3>" + _table(["relation", f"top-{k} share", "top layers", "n mean", "n CMA", "engine"], summary,
                                              caption=f"Top-{k} share: the top {k} heads' part of the summed positive AIE;<br>top layers: the layers of those heads; "
                                                      "n: prompts for the<br>mean activations and for the indirect effects.") + "</div>"
    depth = max(len(v["top_heads"]) for v in cma["relations"].values())
    ranks = []
    for i in range(depth):
        row: list[Any] = [i + 1]
        for r in rels:
            th = cma["relations"][r]["top_heads"]
            row.append(Raw(f"L{th[i][0]} H{th[i][1]} <small>{th[i][2]:.3f}</small>") if i < len(th) else None)
        ranks.append(row)
    right = (f"<div><h3>Top {k} heads by AIE</h3>" + _table(["rank", *rels], ranks, caption="Layer, head and AIE: Δ P(answer) when the head's mean clean<br>"
                                                                "output is patched into corrupted prompts.") + "</div>")
    return out + f'<div class="tables">{left}{right}</div>'


def _eval(res: Results) -> str:
    if (why := res.why_missing("eval")) is not None:
        return why
    ev, d = res.json("eval"), res.dir("eval")
    rows = [[r, v["zero_shot"], v["fv"], v["fv"] - v["zero_shot"], v["best_layer"]] for r, v in ev["relations"].items()]
    m = ev.get("mean", {})
    mean = ["mean", m.get("zero_shot"), m.get("fv"), (m["fv"] - m["zero_shot"]) if "fv" in m and "zero_shot" in m else None, ""]
    out = _table(["relation", "zero-shot", "zero-shot + FV", "Δ", "layer (chosen on val)"], rows, mean,
                 caption=f"Test accuracy, {_esc(ev.get('n_eval', '?'))} zero-shot prompts per relation; the FV is added at the layer best on val.")
    names = {"layer_sweep.png": "layer sweep", "head_count.png": "head-count sweep", "context_size.png": "context size"}
    figs = [_img_file(d / n) for n in names if (d / n).exists()]
    if not figs:
        out += _note("no sweep figures in the eval folder")
    tabs = []
    sw = {r: v["layer_sweep_test"] for r, v in ev["relations"].items() if v.get("layer_sweep_test")}
    if sw:
        depth = max(len(x) for x in sw.values())
        rows = [[layer, *[Raw(f"<b>{sw[r][layer]:.3f}</b>") if layer == ev["relations"][r]["best_layer"] else (sw[r][layer] if layer < len(sw[r]) else None)
                          for r in sw]] for layer in range(depth)]
        tabs.append("<div><h3>Layer sweep (test)</h3>" + _table(["layer", *sw], rows, caption="Bold: the layer chosen on val.") + "</div>")
    hc = {r: v["head_count"] for r, v in ev["relations"].items() if v.get("head_count")}
    if hc:
        ks = _by_k(next(iter(hc.values())))
        tabs.append("<div><h3>Head-count sweep (test)</h3>" + _table(["heads (k)", *hc], [[int(float(k)), *[hc[r].get(k) for r in hc]] for k in ks]) + "</div>")
    # The tables sit beside the last figure when there is room.
    return out + _figs([*figs, '<div class="tables">' + "".join(tabs) + "</div>" if tabs else ""])


def _best_icl(res: Results, rel: str) -> float | None:
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


def _summary(res: Results, out: Path) -> str:
    if (why := res.why_missing("eval")) is not None:
        return why
    ev, ft = res.json("eval"), res.json("finetune") or {}
    groups, rows = {}, []
    for r, v in ev["relations"].items():
        tuned = ft.get("relations", {}).get(r, {}).get("fv_tuned")
        best = _best_icl(res, r)
        groups[r] = {"zero-shot": v["zero_shot"], "FV": v["fv"], "fine-tuned FV": math.nan if tuned is None else tuned,
                     "best ICL": math.nan if best is None else best}
        rows.append([r, v["zero_shot"], v["fv"], tuned, best])
    mean = ["mean", *[_mean([row[j] for row in rows]) for j in range(1, 5)]]
    em = ev.get("mean", {})
    mean[1], mean[2] = em.get("zero_shot", mean[1]), em.get("fv", mean[2])
    fig = _png(plots.bars, groups, "accuracy (test)", "Zero-shot, FV, fine-tuned FV and best ICL", out / "summary_bars.png")
    notes = "Best ICL: the best k-shot (k ≥ 1) accuracy of the fine-tuning stage where it ran for the relation, else of the ICL stage."
    if not ft:
        notes += " The fine-tuning stage did not run: no fine-tuned FV bars."
    elif any(row[3] is None for row in rows):
        notes += " Relations without a fine-tuned FV show no bar and a dash."
    table = _table(["relation", "zero-shot", "FV", "fine-tuned FV", "best ICL"], rows, mean, caption=notes)
    return f'<div class="tables"><div>{fig}</div><div style="max-width:420px">{table}</div></div>'


def _finetune(res: Results) -> str:
    if (why := res.why_missing("finetune")) is not None:
        return why
    ft, d = res.json("finetune"), res.dir("finetune")
    rels = list(ft["relations"])
    hs = ft.get("headline_size", "?")
    keys = ("zero_shot", "icl_best", "fv", "fv_tuned", "fv_random_init")
    rows = [[r, v.get("layer"), *[v.get(k) for k in keys]] for r, v in ft["relations"].items()]
    m = {k: ft.get("mean", {}).get(k, _mean([v.get(k) for v in ft["relations"].values()])) for k in keys}
    out = _table(["relation", "layer", "zero-shot", "best ICL (k ≥ 1)", "FV", f"FV fine-tuned (n={hs})", f"random init fine-tuned (n={hs})"], rows,
                 ["mean", "", *[m.get(k) for k in keys]], caption=f"Test accuracy, {_esc(ft.get('n_eval', '?'))} prompts per relation; fine-tuned on n zero-shot train prompts, epoch chosen on val.")
    sizes = [str(s) for s in ft.get("sizes", [])]
    if sizes:
        srows = [[r, *[Raw(f"{b['fv_tuned']:.3f} <small>ep {b.get('best_epoch', '?')}</small>") if (b := v["by_size"].get(s)) else None for s in sizes]]
                 for r, v in ft["relations"].items()]
        out += "<h3>Fine-tuned FV by training-set size</h3>" + _table(["relation", *[f"n={s}" for s in sizes]], srows, caption="Test accuracy (best epoch on val).")
    search = {r: v["layer_search_val"] for r, v in ft["relations"].items() if v.get("layer_search_val")}
    if search:
        layers = sorted({int(l) for v in search.values() for l in v})
        lrows = [[l, *[(Raw(f"<b>{search[r][str(l)]:.3f}</b>") if ft["relations"][r].get("layer") == l else search[r].get(str(l))) for r in search]]
                 for l in layers]
        out += "<h3>Fine-tuning layer (chosen on val)</h3>" + _table(["layer", *search], lrows,
                                                                      caption=f"Val accuracy of the vector fine-tuned at each layer (n={hs}); bold: the layer kept.")
    icl_k = {r: v.get("icl_by_shots", {}) for r, v in ft["relations"].items()}
    if any(icl_k.values()):
        ks = _by_k(next(v for v in icl_k.values() if v))
        out += "<h3>ICL baselines by shots</h3>" + _table(["relation", *[f"k={k}" for k in ks]], [[r, *[icl_k[r].get(k) for k in ks]] for r in rels])
    figs = [_img_file(d / n) for n in ("accuracy_vs_size.png", "learning_curves.png") if (d / n).exists()]
    return out + (_figs(figs) if figs else _note("no fine-tuning figures in the folder"))


def _compose(res: Results) -> str:
    if (why := res.why_missing("compose")) is not None:
        return why
    co, d = res.json("compose"), res.dir("compose")
    if "skipped" in co:
        return _missing("compose", f"skipped: {co['skipped']}")
    rels = co["relations"]
    tuned = any("composed_tuned" in v for v in rels.values())
    shots = _by_k(next(iter(rels.values())).get("icl_by_shots", {})) if rels else []
    hdr = ["relation", "layer", "chance", "zero-shot", "single (each)", "single best", "composed a=b=1", "composed (val grid)", "grid (a, b)",
           *(["composed, tuned FVs"] if tuned else []), *[f"ICL k={k}" for k in shots]]
    rows = []
    for r, v in rels.items():
        single = Raw("<br>".join(f"{_esc(n)} {a:.3f}" for n, a in v.get("single", {}).items()))
        gc = v.get("grid_choice")
        rows.append([r, v.get("layer"), v["chance"], v.get("zero_shot"), single, v["single_best"], v["composed"], v.get("composed_grid"),
                     f"({gc[0]:g}, {gc[1]:g})" if gc else None, *([v.get("composed_tuned")] if tuned else []),
                     *[v.get("icl_by_shots", {}).get(k) for k in shots]])
    m = co.get("mean", {})
    mean = ["mean", "", m.get("chance"), m.get("zero_shot"), "", m.get("single_best"), m.get("composed"), m.get("composed_grid"), "",
            *([m.get("composed_tuned")] if tuned else []), *[""] * len(shots)]
    out = _table(hdr, rows, mean, caption=f"Zero-shot test accuracy on the diagonal relations, {_esc(co.get('n_eval', '?'))} prompts each; "
                 "composed = FV(vertical) + FV(horizontal), scaled by the (a, b) grid point best on val; layers chosen on val.")
    kinds = {r: v["composed_answers"] for r, v in rels.items() if v.get("composed_answers")}
    if kinds:
        from mmfv.compose import ANSWER_KINDS

        first = next(iter(kinds.values()))
        names = [n for n in ANSWER_KINDS if n in first] + [n for n in first if n not in ANSWER_KINDS]  # results.json sorts keys
        out += "<h3>What the composed vector makes the model answer</h3>" + _table(
            ["relation", *names], [[r, *[k.get(n) for n in names]] for r, k in kinds.items()],
            caption="Shares of the test prompts, composed a=b=1 at the chosen layer, by the predicted first token: the diagonal answer, "
                    "the query's vertical or horizontal neighbour (one part of the sum wins), the query, another neighbour, or elsewhere.")
    side = [_img_file(d / "composition.png")] if (d / "composition.png").exists() else []
    after = ""
    for fam, a in (co.get("analogies") or {}).items():
        items = [[x["analogy"], x["acc"], x["chance"]] for x in a["items"]]
        n_parts = 2 if len(items) > 16 else 1  # long lists side by side in two halves
        size = max(1, -(-len(items) // n_parts))
        parts = [items[i : i + size] for i in range(0, len(items), size)] or [[]]
        mean_row = ["mean", a.get("mean_acc"), a.get("mean_chance")]
        tabs = "".join(f"<div>{_table(['A : B :: C : D', 'accuracy', 'chance'], part, mean_row if j == len(parts) - 1 else None)}</div>" for j, part in enumerate(parts))
        block = (f"<h3>Analogies, {_esc(fam)}: mean accuracy {_fmt(a.get('mean_acc'))} vs chance {_fmt(a.get('mean_chance'))} "
                 f"({len(items)} analogies, layer {_esc(a.get('layer', '?'))})</h3><div class=\"tables\">{tabs}</div>")
        if n_parts == 1 and len(side) == 1:  # a short table beside the composition chart
            side.append(f'<div class="tables"><div>{block}</div></div>')
        else:
            after += block
    out += _figs(side) + after
    if co.get("analogies"):
        out += '<p class="note">Analogy A : B :: C : D: the vector FV(B) − FV(A) + FV(C) added to zero-shot prompts of relation D.</p>'
    return out


def _data_settings(root: Path):
    """The run's data settings (seed, test scenes, dataset) from config.toml, else the defaults."""
    from mmfv.stages import DataSettings

    p = root / "config.toml"
    if not p.exists():
        return DataSettings()
    try:
        data = tomllib.loads(p.read_text()).get("data", {})
    except tomllib.TOMLDecodeError:
        return DataSettings()
    base = DataSettings()
    scenes = dict(base.scenes)
    if "test_scenes" in data:
        scenes["test"] = int(data["test_scenes"])
    return DataSettings(data.get("dataset", base.dataset), int(data.get("seed", base.seed)), scenes)


def _example_png(item) -> bytes:
    """The item's image enlarged (nearest neighbour, ~220 px); on synthetic scenes the query's cell
    is boxed white and the answer's cell green."""
    from PIL import Image, ImageDraw

    im = item.load_image().convert("RGB")
    side = max(im.size)
    s = max(1, 220 // side) if side <= 220 else 220 / side
    im = im.resize((round(im.width * s), round(im.height * s)), Image.NEAREST if s >= 1 else Image.LANCZOS)
    scene = item.image
    cell = getattr(getattr(scene, "config", None), "cell_px", None)
    if cell and hasattr(scene, "query") and hasattr(scene, "neighbours"):
        c = cell * s
        d = ImageDraw.Draw(im)
        for obj, rgb in ((scene.query, (255, 255, 255)), (scene.neighbours.get(item.relation), (0, 220, 90))):
            if obj is not None:
                d.rectangle([round(obj.col * c), round(obj.row * c), round((obj.col + 1) * c) - 1, round((obj.row + 1) * c) - 1], outline=rgb, width=3)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _examples(res: Results, lmm, n: int, out: Path) -> str:
    if lmm is None:
        return _note("no model given: examples not shown (pass a model to build_report)")
    for stage in ("vectors", "eval"):
        if res.dir(stage) is None or (stage == "eval" and res.json("eval") is None):
            return _missing(stage, "the examples need its vectors and layers")
    if n <= 0:
        return _note("no examples asked for")
    import torch

    from mmfv import evaluate
    from mmfv import prompts as P
    from mmfv.vectors import FunctionVector, VectorError

    ev, vdir = res.json("eval"), res.dir("vectors")
    rels = [r for r in ev["relations"] if (vdir / f"{r}.safetensors").exists()]
    if not rels:
        return _note("no vectors/<relation>.safetensors for the evaluated relations: no examples")
    data = _data_settings(res.root)
    try:
        test = data.items(lmm, "test", tuple(rels))
    except ValueError as e:
        return _note(f"examples need synthetic scenes: {e}")
    per = -(-n // len(rels))
    found: dict[str, list[tuple[Any, str, bool, str, bool]]] = {}
    for r in rels:
        try:
            fv = FunctionVector.load(vdir / f"{r}.safetensors", lmm)
        except VectorError:
            meta = FunctionVector.load(vdir / f"{r}.safetensors")
            return _note(f"examples not shown: vectors/{r}.safetensors was built from {meta.model_id} (config {meta.config_hash}), "
                         f"not from the model given ({lmm.model_id}, config {lmm.config_hash()}); re-extract the vectors with this model")
        prompts = P.build("zero-shot", test[r], test, 0, per, data.seed)
        batch = lmm.encode(prompts)
        with torch.no_grad():
            plain = lmm.predict(batch).cpu()
            with evaluate.with_vector(lmm, fv.vector, int(ev["relations"][r]["best_layer"]))(batch.size):
                steered = lmm.predict(batch).cpu()
        gold = batch.answer_ids.cpu()
        found[r] = [(p, lmm.decode([int(a)]).strip(), bool(a == g), lmm.decode([int(b)]).strip(), bool(b == g))
                    for p, a, b, g in zip(prompts, plain, steered, gold)]
    mark = lambda text, ok: f'<span class="{"ok" if ok else "bad"}">{_esc(text)}&nbsp;{"✓" if ok else "✗"}</span>'  # noqa: E731
    figs, written = [], set()
    for i in range(n):
        r = rels[i % len(rels)]
        p, plain, ok0, steered, ok1 = found[r][i // len(rels)]
        data_png = _example_png(p.query)
        name = f"example_{i}.png"
        write_bytes(out / name, data_png)
        written.add(name)
        layer = ev["relations"][r]["best_layer"]
        figs.append(f"<figure>{_img(data_png, f'{r}: {p.query.query}')}<figcaption><b>{_esc(r)}</b> of <i>{_esc(p.query.query)}</i><br>"
                    f"correct: <b>{_esc(p.answer)}</b><br>without FV: {mark(plain, ok0)}<br>with FV (layer {_esc(layer)}): {mark(steered, ok1)}</figcaption></figure>")
    for old in out.glob("example_*.png"):  # examples of an earlier, larger report
        if old.name not in written:
            old.unlink()
    n0 = sum(found[rels[i % len(rels)]][i // len(rels)][2] for i in range(n))
    n1 = sum(found[rels[i % len(rels)]][i // len(rels)][4] for i in range(n))
    cap = (f"Zero-shot test prompts (seed {data.seed}); answer = the model's argmax first token; on synthetic scenes the query is boxed white, "
           f"the correct answer green. Right without the vector: {n0}/{n}; with it: {n1}/{n}. Model: {_esc(lmm.model_id)}.")
    return f'<p class="note">{cap}</p><div class="strip">{"".join(figs)}</div>'


# --- the page ----------------------------------------------------------------------------------------
def _model_id(res: Results, run: dict, lmm) -> str:
    if run.get("model"):
        return str(run["model"])
    for stage in ("icl", "cma", "eval", "finetune", "compose"):
        j = res.json(stage)
        if j and j.get("model"):
            return str(j["model"])
    return str(lmm.model_id) if lmm is not None else "unknown model"


def _header(res: Results, run: dict, model: str) -> str:
    root = res.root
    meta = [["model", model], ["mmfv (report)", __version__]]
    if run.get("mmfv_version"):
        meta.append(["mmfv (results)", run["mmfv_version"]])
    if run.get("config_hash"):
        meta.append(["config hash", run["config_hash"]])
    ran = [s for s in STAGE_DIRS if res.dir(s) is not None]
    meta.append(["stages present", ", ".join(ran) or "none"])
    rows = "".join(f"<tr><td>{_esc(k)}</td><td class='l'>{_esc(v)}</td></tr>" for k, v in meta)
    out = f"<h1>mmfv report: {_esc(model)}</h1><table class='meta'>{rows}</table>"
    nav = "".join(f'<li><a href="#{a}">{_esc(t)}</a></li>' for a, t in SECTIONS)
    out += f"<nav><ol>{nav}</ol></nav>"
    if (root / "config.toml").exists():
        out += f"<h3>Configuration (config.toml)</h3><pre class='config'>{_esc((root / 'config.toml').read_text().rstrip())}</pre>"
    else:
        out += _note("no config.toml in the results folder")
    return out


def build_report(results_dir: str | Path, lmm=None, examples: int = 6) -> Path:
    """Write ``results_dir/report/report.html`` (self-contained: images as data URIs, inline CSS)
    and the PNGs it drew into ``results_dir/report/``; return the HTML's path."""
    root = Path(results_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"results folder {root} does not exist: run `mmfv run` first")
    out = root / "report"
    out.mkdir(parents=True, exist_ok=True)
    res = Results(root)
    run = read_json(root / "run.json") if (root / "run.json").exists() else {}
    model = _model_id(res, run, lmm)
    bodies = {
        "icl": _icl(res, out), "cma": _cma(res), "eval": _eval(res), "summary": _summary(res, out), "finetune": _finetune(res),
        "compose": _compose(res), "examples": _examples(res, lmm, examples, out),
    }
    sections = "".join(f'<section id="{a}"><h2>{_esc(t)}</h2>{bodies[a]}</section>' for a, t in SECTIONS)
    page = (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>mmfv report: {_esc(model)}</title><style>{CSS}</style></head>\n<body>{_header(res, run, model)}{sections}</body></html>\n")
    return write_bytes(out / "report.html", page.encode())
