"""One self-contained HTML report of a results folder: every figure embedded, every table inline.

``build_report(results_dir)`` renders the report sections of every stage (``mmfv.stages``), in
stage order, into ``report/report.html`` plus the PNGs it drew into ``report/``. A section whose
stage did not run says so in one line. Given a model, it also shows example scenes with the model's
answer without and with the relation's function vector.

Deterministic for the same inputs: no timestamps, PNGs are written without metadata, JSON keys
that are numbers (shots, sizes, head counts) are ordered numerically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmfv import __version__
from mmfv.io import read_json, write_bytes
from mmfv.report.html import CSS, Results, esc, note


def sections() -> list:
    """Every stage's report sections, in stage order."""
    from mmfv.stages import STAGES

    return [sec for st in STAGES for sec in st.report]


def _model_id(res: Results, run: dict, lmm: Any) -> str:
    if run.get("model"):
        return str(run["model"])
    for stage in ("icl", "cma", "eval", "finetune", "compose"):
        j = res.json(stage)
        if j and j.get("model"):
            return str(j["model"])
    return str(lmm.model_id) if lmm is not None else "unknown model"


def _header(res: Results, run: dict, model: str, secs: list) -> str:
    from mmfv.stages import STAGES

    root = res.root
    meta = [["model", model], ["mmfv (report)", __version__]]
    if run.get("mmfv_version"):
        meta.append(["mmfv (results)", run["mmfv_version"]])
    if run.get("config_hash"):
        meta.append(["config hash", run["config_hash"]])
    ran = [st.name for st in STAGES if st.name != "report" and res.dir(st.name) is not None]
    meta.append(["stages present", ", ".join(ran) or "none"])
    rows = "".join(f"<tr><td>{esc(k)}</td><td class='l'>{esc(v)}</td></tr>" for k, v in meta)
    out = f"<h1>mmfv report: {esc(model)}</h1><table class='meta'>{rows}</table>"
    nav = "".join(f'<li><a href="#{s.anchor}">{esc(s.title)}</a></li>' for s in secs)
    out += f"<nav><ol>{nav}</ol></nav>"
    if (root / "config.toml").exists():
        out += f"<h3>Configuration (config.toml)</h3><pre class='config'>{esc((root / 'config.toml').read_text().rstrip())}</pre>"
    else:
        out += note("no config.toml in the results folder")
    return out


def build_report(results_dir: str | Path, lmm: Any = None, examples: int = 6) -> Path:
    """Write ``results_dir/report/report.html`` (self-contained: images as data URIs, inline CSS)
    and the PNGs it drew into ``results_dir/report/``; return the HTML's path."""
    root = Path(results_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"results folder {root} does not exist: run `mmfv run` first")
    out = root / "report"
    out.mkdir(parents=True, exist_ok=True)
    res = Results(root, lmm)
    res.examples = examples
    try:
        run = read_json(root / "run.json") if (root / "run.json").exists() else {}
    except ValueError:
        run = {}
    model = _model_id(res, run, lmm)
    secs = sections()
    body = "".join(f'<section id="{s.anchor}"><h2>{esc(s.title)}</h2>{s.render(res, out)}</section>' for s in secs)
    page = (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>mmfv report: {esc(model)}</title><style>{CSS}</style></head>\n<body>{_header(res, run, model, secs)}{body}</body></html>\n")
    return write_bytes(out / "report.html", page.encode())
