"""One self-contained HTML report of a results folder: every figure embedded, every table inline.

Sections whose stage did not run say so in one line. Deterministic for the same inputs (no
timestamps; PNGs are written without metadata).
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from mmfv import __version__, plots
from mmfv.io import read_json, write_bytes

CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:24px auto;padding:0 16px;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:2em}
table{border-collapse:collapse;margin:8px 0;font-size:.9em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%;margin:6px 4px}
.grid{display:flex;flex-wrap:wrap;gap:8px}.grid figure{margin:0;width:23%}.note{color:#777}
figcaption{font-size:.8em}.ok{color:#1a7f37}.bad{color:#c62828}pre{background:#f7f7f7;padding:8px;font-size:.8em}"""


def _img(path: Path) -> str:
    return f'<img src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}" alt="{html.escape(path.name)}">'


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else html.escape(str(v))


def _table(header: list[str], rows: list[list[Any]]) -> str:
    h = "".join(f"<th>{html.escape(x)}</th>" for x in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


def _load(root: Path, stage: str) -> dict | None:
    p = root / stage / "results.json"
    return read_json(p) if p.exists() else None


def _missing(stage: str) -> str:
    return f'<p class="note">stage {stage} not run</p>'


def _icl(root: Path, out: Path) -> str:
    res = _load(root, "icl")
    if not res:
        return _missing("icl")
    rels = res["relations"]
    shots = [int(k) for k in res["clean"]]
    series = {f"{kind} mean": [res[kind][str(k)]["mean"]["acc"] for k in shots] for kind in ("clean", "corrupted") if kind in res}
    series.update({f"clean {r}": [res["clean"][str(k)][r]["acc"] for k in shots] for r in rels})
    png = plots.curves(series, shots, "demonstrations (k)", "accuracy (test)", "ICL accuracy by number of demonstrations", out / "icl.png")
    rows = [[kind, k, *[row[r]["acc"] for r in rels], row["mean"]["acc"], f"[{row['mean']['ci95'][0]:.3f}, {row['mean']['ci95'][1]:.3f}]"]
            for kind in ("clean", "corrupted") if kind in res for k, row in res[kind].items()]
    return _img(png) + _table(["kind", "k", *rels, "mean", "95% CI"], rows) + f'<p class="note">{res["n"]} prompts per cell.</p>'


def _cma(root: Path) -> str:
    res = _load(root, "cma")
    if not res:
        return _missing("cma")
    rows = [[r, v["top_share"], ", ".join(f"L{l}H{h} ({a:.3f})" for l, h, a in v["top_heads"][:5]), " ".join(map(str, v["top_layers"]))]
            for r, v in res["relations"].items()]
    figs = "".join(_img(p) for p in sorted((root / "cma").glob("aie_*.png")))
    return (f"<p>{res['n_layers']} layers × {res['n_heads']} heads; top {res['top_k']} boxed.</p>" + figs
            + _table(["relation", f"top-{res['top_k']} share of positive AIE", "top heads (AIE)", "layers of the top heads"], rows))


def _eval(root: Path, out: Path) -> str:
    ev, ft, icl = _load(root, "eval"), _load(root, "finetune"), _load(root, "icl")
    if not ev:
        return _missing("eval")
    rels = list(ev["relations"])
    rows = [[r, ev[r]["zero_shot"], ev[r]["fv"], ev[r]["best_layer"]] for r in rels] + [["mean", ev["mean"]["zero_shot"], ev["mean"]["fv"], ""]]
    bars = {}
    for r in rels:
        b = {"zero-shot": ev[r]["zero_shot"], "FV": ev[r]["fv"]}
        if ft and r in ft:
            b["fine-tuned FV"] = ft[r]["fv_tuned"]
        if icl:
            b["best ICL"] = max(icl["clean"][k][r]["acc"] for k in icl["clean"])
        bars[r] = b
    png = plots.bars(bars, "accuracy (test)", "Zero-shot, FV, fine-tuned FV and best ICL", out / "summary_bars.png")
    figs = "".join(_img(root / "eval" / n) for n in ("layer_sweep.png", "head_count.png", "context_size.png") if (root / "eval" / n).exists())
    return _table(["relation", "zero-shot", "FV (layer chosen on val)", "layer"], rows) + _img(png) + figs


def _finetune(root: Path) -> str:
    ft = _load(root, "finetune")
    if not ft:
        return _missing("finetune")
    rels = list(ft["relations"])
    keys = ["icl_best", "fv", "fv_tuned", "fv_random_init"]
    rows = [[r, *[ft[r][k] for k in keys]] for r in rels] + [["mean", *[ft["mean"][k] for k in keys]]]
    sizes = ft["sizes"]
    size_rows = [[r, *[ft["relations"][r]["by_size"][str(n)]["fv_tuned"] for n in sizes]] for r in rels]
    figs = "".join(_img(root / "finetune" / n) for n in ("accuracy_vs_size.png", "learning_curves.png") if (root / "finetune" / n).exists())
    return (_table(["relation", "best ICL (1-8 shots)", "FV", f"FV fine-tuned ({ft['headline_size']} items)", "random-init fine-tuned"], rows)
            + _table(["relation", *[f"n={n}" for n in sizes]], size_rows) + figs)


def _compose(root: Path) -> str:
    co = _load(root, "compose")
    if not co or "skipped" in co:
        return _missing("compose")
    tuned = "composed_tuned" in co["mean"]
    hdr = ["relation", "chance", "zero-shot", "single best", "composed a=b=1", "composed (val grid)", *(["composed, tuned"] if tuned else []), "ICL by shots"]
    rows = []
    for r, v in co["relations"].items():
        rows.append([r, v["chance"], v["zero_shot"], v["single_best"], v["composed"], v["composed_grid"], *([v["composed_tuned"]] if tuned else []),
                     " ".join(f"{k}:{a:.2f}" for k, a in v["icl_by_shots"].items())])
    m = co["mean"]
    rows.append(["mean", m["chance"], m["zero_shot"], m["single_best"], m["composed"], m["composed_grid"], *([m["composed_tuned"]] if tuned else []), ""])
    out = _table(hdr, rows)
    if (root / "compose" / "composition.png").exists():
        out += _img(root / "compose" / "composition.png")
    for fam, a in co.get("analogies", {}).items():
        out += f"<h3>Analogies ({fam}): mean accuracy {a['mean_acc']:.3f} vs chance {a['mean_chance']:.3f}, layer {a['layer']}</h3>"
        out += _table(["A : B :: C : D", "accuracy", "chance"], [[x["analogy"], x["acc"], x["chance"]] for x in a["items"]])
    return out


def _examples(root: Path, lmm, n: int, out: Path) -> str:
    if lmm is None or not (root / "vectors").exists() or not _load(root, "eval"):
        return '<p class="note">no model given or vectors missing: no examples</p>'
    import torch
    from PIL import Image

    from mmfv import evaluate
    from mmfv import prompts as P
    from mmfv.stages import DataSettings
    from mmfv.vectors import FunctionVector

    ev = _load(root, "eval")
    rels = list(ev["relations"])
    test = DataSettings().items(lmm, "test", rels)
    figs = []
    for i in range(n):
        rel = rels[i % len(rels)]
        (p,) = P.build("zero-shot", test[rel][i // len(rels) :], test, 0, 1, 0)
        fv = FunctionVector.load(root / "vectors" / f"{rel}.safetensors", lmm)
        b = lmm.encode([p])
        with torch.no_grad():
            plain = lmm.decode([int(lmm.predict(b)[0])])
            with evaluate.with_vector(lmm, fv.vector, ev["relations"][rel]["best_layer"])(1):
                steered = lmm.decode([int(lmm.predict(b)[0])])
        im = p.query.load_image()
        buf = io.BytesIO()
        im.resize((im.width * 5, im.height * 5), Image.NEAREST).save(buf, format="PNG")
        path = write_bytes(out / f"example_{i}.png", buf.getvalue())
        ok = lambda a: "ok" if a == p.answer else "bad"  # noqa: E731
        figs.append(f"<figure>{_img(path)}<figcaption><b>{rel}</b> of <i>{html.escape(p.query.query)}</i>: {html.escape(p.answer)}<br>"
                    f'without FV: <span class="{ok(plain)}">{html.escape(plain)}</span><br>with FV: <span class="{ok(steered)}">{html.escape(steered)}</span></figcaption></figure>')
    return '<div class="grid">' + "".join(figs) + "</div>"


def build_report(results_dir: str | Path, lmm=None, examples: int = 8) -> Path:
    """Write ``results_dir/report/report.html`` (self-contained) and its PNGs; return its path."""
    root = Path(results_dir)
    out = root / "report"
    run = read_json(root / "run.json") if (root / "run.json").exists() else {}
    cfg = (root / "config.toml").read_text() if (root / "config.toml").exists() else ""
    sections = [
        ("In-context learning by number of demonstrations", _icl(root, out)),
        ("Causal mediation: which heads carry the relation", _cma(root)),
        ("Function vectors: zero-shot with and without", _eval(root, out)),
        ("Fine-tuned function vectors vs in-context learning", _finetune(root)),
        ("Composition of relation vectors and analogies", _compose(root)),
        ("Examples: the model's answer without and with the vector", _examples(root, lmm, examples, out)),
    ]
    model = run.get("model") or (lmm.model_id if lmm is not None else "?")
    body = "".join(f"<h2>{html.escape(t)}</h2>{c}" for t, c in sections)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>mmfv report: {html.escape(str(model))}</title><style>{CSS}</style></head><body>"
            f"<h1>mmfv report — {html.escape(str(model))}</h1><p>mmfv {__version__}; config hash {html.escape(run.get('config_hash', '?'))}</p>"
            + (f"<details><summary>config</summary><pre>{html.escape(cfg)}</pre></details>" if cfg else "") + body + "</body></html>")
    return write_bytes(out / "report.html", page.encode())
