"""Stage ``report``: one self-contained HTML report of the run — every stage's report section, in
stage order, each figure embedded, each table inline — plus the examples strip: test scenes with
the model's answer without and with the relation's function vector.

Deterministic for the same run folder (the header shows the run's own date from run.json; figures
carry no timestamps); JSON keys that are numbers (shots, sizes, head counts) are ordered numerically.
Long tables go to an appendix at the end, linked from where they belong; the page prints cleanly."""

from __future__ import annotations

import io
import tomllib
from pathlib import Path
from typing import Any

from mmfv import __version__
from mmfv.io import read_json, write_bytes
from mmfv.report import html as H
from mmfv.stages.base import Context, ReportSection, Stage

EXAMPLES = 6  # scenes in the examples strip


def run(ctx: Context) -> dict:
    from mmfv import dist

    if dist.is_main():  # the report reads back the files it writes, which only rank 0 does
        path = build_report(ctx.out, ctx.lmm)
        ctx.ex.info("report: %s", path)
    return {}


def _data_settings(root: Path) -> Any:
    """The run's data settings from its config.toml (defaults where absent or unreadable)."""
    from mmfv.settings import DataSettings

    p = root / "config.toml"
    try:
        data = tomllib.loads(p.read_text()).get("data", {}) if p.exists() else {}
        return DataSettings.model_validate(data)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, ValueError):
        return DataSettings()


def example_png(item: Any) -> bytes:
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


def examples(res: H.Results, lmm: Any, n: int, out: Path) -> str:
    """A strip of test scenes with the model's answer without and with each relation's vector."""
    if lmm is None:
        return H.note("no model given: examples not shown (pass a model to build_report)")
    for stage in ("vectors", "eval"):
        if res.dir(stage) is None or (stage == "eval" and res.json("eval") is None):
            return H.missing(stage, "the examples need its vectors and layers")
    if n <= 0:
        return H.note("no examples asked for")
    import torch

    from mmfv import evaluate
    from mmfv import prompts as P
    from mmfv.vectors import FunctionVector, VectorError

    ev, vdir = res.json("eval"), res.dir("vectors")
    rels = [r for r in ev["relations"] if (vdir / f"{r}.safetensors").exists()]
    if not rels:
        return H.note("no vectors/<relation>.safetensors for the evaluated relations: no examples")
    data = _data_settings(res.root)
    try:
        test = data.items(lmm, "test", tuple(rels))
    except ValueError as e:
        return H.note(f"examples not shown: {e}")
    per = -(-n // len(rels))
    found: dict[str, list[tuple[Any, str, bool, str, bool]]] = {}
    for r in rels:
        try:
            fv = FunctionVector.load(vdir / f"{r}.safetensors", lmm)
        except VectorError:
            meta = FunctionVector.load(vdir / f"{r}.safetensors")
            return H.note(f"examples not shown: vectors/{r}.safetensors was built from {meta.model_id} (config {meta.config_hash}), "
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
    mark = lambda text, ok: f'<span class="{"ok" if ok else "bad"}">{H.esc(text)}&nbsp;{"✓" if ok else "✗"}</span>'  # noqa: E731
    figs, written = [], set()
    for i in range(n):
        r = rels[i % len(rels)]
        p, plain, ok0, steered, ok1 = found[r][i // len(rels)]
        if p.query.has_image:
            data_png = example_png(p.query)
            name = f"example_{i}.png"
            write_bytes(out / name, data_png)
            written.add(name)
            pic = H.img(data_png, f"{r}: {p.query.query}")
        else:  # a text-only item: the prompt itself is the example
            pic = f"<pre>{H.esc(lmm.render(p))}</pre>"
        layer = ev["relations"][r]["best_layer"]
        figs.append(f"<figure>{pic}<figcaption><b>{H.esc(r)}</b> of <i>{H.esc(p.query.query)}</i><br>"
                    f"correct: <b>{H.esc(p.answer)}</b><br>without FV: {mark(plain, ok0)}<br>with FV (layer {H.esc(layer)}): {mark(steered, ok1)}</figcaption></figure>")
    for old in out.glob("example_*.png"):  # examples of an earlier, larger report
        if old.name not in written:
            old.unlink()
    n0 = sum(found[rels[i % len(rels)]][i // len(rels)][2] for i in range(n))
    n1 = sum(found[rels[i % len(rels)]][i // len(rels)][4] for i in range(n))
    cap = (f"Zero-shot test prompts (seed {data.seed}); answer = the model's argmax first token; on synthetic scenes the query is boxed white, "
           f"the correct answer green. Right without the vector: {n0}/{n}; with it: {n1}/{n}. Model: {H.esc(lmm.model_id)}.")
    return f'<p class="note">{cap}</p><div class="strip">{"".join(figs)}</div>'


def section(res: H.Results, out: Path) -> str:
    return examples(res, res.lmm, getattr(res, "examples", EXAMPLES), out)


def sections() -> list[ReportSection]:
    """Every stage's report sections, in stage order."""
    from mmfv.stages import STAGES

    return [sec for st in STAGES for sec in st.report]


def _model_id(res: H.Results, run: dict, lmm: Any) -> str:
    if run.get("model"):
        return str(run["model"])
    for stage in ("icl", "cma", "eval", "finetune", "compose"):
        j = res.json(stage)
        if j and j.get("model"):
            return str(j["model"])
    return str(lmm.model_id) if lmm is not None else "unknown model"


def _header(res: H.Results, run: dict, model: str, secs: list) -> str:
    from mmfv.stages import STAGES

    root = res.root
    prov = run.get("provenance", {})
    meta = [["model", model + (f" (weights {run['weights']})" if run.get("weights") else "")], ["mmfv (report)", __version__]]
    if run.get("mmfv_version"):
        meta.append(["mmfv (results)", run["mmfv_version"] + (f", commit {prov['mmfv_commit']}" if prov.get("mmfv_commit") else "")])
    if run.get("config_hash"):
        meta.append(["config hash", run["config_hash"]])
    if prov:
        meta.append(["run", f"{prov.get('date', '?')}; {prov.get('processes', 1)} process(es) on {prov.get('device', '?')}, {prov.get('cpus', '?')} CPUs "
                            f"({prov.get('platform', '?')}); python {prov.get('python', '?')}, torch {prov.get('torch', '?')}, transformers {prov.get('transformers', '?')}"])
    if (root / "timings.json").exists():
        try:
            t = read_json(root / "timings.json")
            meta.append(["runtime (s)", "  ".join(f"{k} {v:.1f}" for k, v in t.items()) + f"; total {sum(t.values()):.1f}"])
        except (ValueError, AttributeError, TypeError):
            pass
    ran = [st.name for st in STAGES if st.name != "report" and res.dir(st.name) is not None]
    meta.append(["stages present", ", ".join(ran) or "none"])
    rows = "".join(f"<tr><td>{H.esc(k)}</td><td class='l'>{H.esc(v)}</td></tr>" for k, v in meta)
    out = f"<h1>mmfv report: {H.esc(model)}</h1><table class='meta'>{rows}</table>"
    nav = "".join(f'<li><a href="#{s.anchor}">{H.esc(s.title)}</a></li>' for s in secs) + '<li><a href="#appendix">Appendix</a></li>'
    out += f"<nav><ol>{nav}</ol></nav>"
    if (root / "config.toml").exists():
        out += res.fold("Configuration (config.toml)", f"<pre class='config'>{H.esc((root / 'config.toml').read_text().rstrip())}</pre>")
    else:
        out += H.note("no config.toml in the results folder")
    return out


def build_report(results_dir: str | Path, lmm: Any = None, examples: int = 6) -> Path:
    """Write ``results_dir/report/report.html`` (self-contained: images as data URIs, inline CSS)
    and the PNGs it drew into ``results_dir/report/``; return the HTML's path."""
    root = Path(results_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"results folder {root} does not exist: run `mmfv run` first")
    out = root / "report"
    out.mkdir(parents=True, exist_ok=True)
    res = H.Results(root, lmm)
    res.examples = examples
    try:
        run = read_json(root / "run.json") if (root / "run.json").exists() else {}
    except ValueError:
        run = {}
    model = _model_id(res, run, lmm)
    secs = sections()
    head = _header(res, run, model, secs)  # first: it moves the config into the appendix
    body = "".join(f'<section id="{s.anchor}"><h2>{H.esc(s.title)}</h2>{s.render(res, out)}</section>' for s in secs)
    appx = res.appendix()
    if appx:
        body += '<section id="appendix"><h2>Appendix</h2>' + "".join(
            f'<h3 id="appx-{i}">A.{i} {H.esc(t)}</h3>{b}' for i, (t, b) in enumerate(appx, 1)) + "</section>"
    page = (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>mmfv report: {H.esc(model)}</title><style>{H.CSS}</style></head>\n<body>{head}{body}</body></html>\n")
    return write_bytes(out / "report.html", page.encode())


STAGE = Stage("report", "one self-contained HTML report of every stage", run,
              report=(ReportSection("examples", "Examples: the model's answer without and with the vector", section),))
