"""HTML building blocks of the report (escaping, tables, embedded figures) and :class:`Results`,
read access to a run folder's stage results. Report sections (in the stage modules) use these."""

from __future__ import annotations

import base64
import html
import math
import tomllib
from pathlib import Path
from typing import Any, Iterable, Sequence

from mmfv.io import read_json

# Stage folder names; the first that exists is used ("ft" is what hand-run CLI verbs often use).
ALIASES = {"finetune": ("finetune", "ft")}

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
.figs{display:flex;flex-direction:column;gap:14px;align-items:flex-start;margin:8px 0}
.figs img{display:block;width:auto;max-width:100%;height:auto;border:1px solid #eee}
img{max-width:100%}
.tables{display:flex;flex-wrap:wrap;gap:28px;align-items:flex-start}.tables h3{margin-top:.2em}.tables>div{max-width:100%}
.note{color:#6b7280;font-style:italic;margin:.3em 0}
pre{background:#f6f8fa;border:1px solid #e1e4e8;border-radius:4px;padding:10px 12px;font-size:.8em;line-height:1.35;overflow-x:auto}
pre.config{white-space:pre-wrap;overflow-wrap:anywhere;max-width:60em}
p.appx{font-size:.9em}p.appx a{color:#2457a6}
@media print{nav{display:none}body{max-width:none;margin:0}h2{break-after:avoid}table,figure,img{break-inside:avoid}#appendix{break-before:page}}
.strip{display:grid;grid-template-columns:repeat(auto-fill,minmax(175px,1fr));gap:14px;margin-top:8px}
.strip figure{margin:0;border:1px solid #d5dae0;border-radius:6px;padding:8px;background:#fbfcfd}
.strip img{display:block;width:100%;height:auto;image-rendering:pixelated;border:1px solid #ccc}
figcaption{font-size:.85em;margin-top:6px;line-height:1.5}
.ok{color:#1a7f37;font-weight:600}.bad{color:#c62828;font-weight:600}
"""


# --- small HTML helpers ------------------------------------------------------------------------------
class Raw(str):
    """Cell content that is already HTML (not escaped)."""


def esc(x: Any) -> str:
    return html.escape(str(x))


def num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def fmt(v: Any) -> str:
    """Floats to 3 decimals; missing values (None, NaN) as a dash; everything else escaped."""
    if isinstance(v, Raw):
        return str(v)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if isinstance(v, float):
        return f"{v:.3f}"
    return esc(v)


def ci(ci: Sequence[float] | None) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], mean: Sequence[Any] | None = None, caption: str = "") -> str:
    h = "".join(f"<th>{esc(x)}</th>" for x in header)
    body = "".join("<tr>" + "".join(f"<td>{fmt(c)}</td>" for c in r) + "</tr>" for r in rows)
    if mean is not None:
        body += '<tr class="mean">' + "".join(f"<td>{fmt(c)}</td>" for c in mean) + "</tr>"
    cap = f'<p class="note">{caption}</p>' if caption else ""
    return f'<div class="scroll"><table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table></div>{cap}'


def img(data: bytes, alt: str) -> str:
    return f'<img src="data:image/png;base64,{base64.b64encode(data).decode()}" alt="{esc(alt)}">'


def img_file(path: Path) -> str:
    return img(path.read_bytes(), path.name)


def figs(parts: Iterable[str]) -> str:
    parts = [p for p in parts if p]
    return f'<div class="figs">{"".join(parts)}</div>' if parts else ""


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def missing(stage: str, why: str = "") -> str:
    return note(f"stage {stage} not run" + (f" ({why})" if why else ""))


def by_k(d: dict) -> list[str]:
    """Keys that are numbers ("0", "1", "16" …), numerically ordered (JSON sorts them as text)."""
    return sorted(d, key=lambda k: (float(k) if k.replace(".", "", 1).isdigit() else math.inf, k))


def mean(values: Sequence[Any]) -> float | None:
    """Mean rounded like the stages round theirs (4 decimals); None unless every value is there."""
    if not values or any(v is None for v in values):
        return None
    return round(sum(values) / len(values), 4)


FORMATS = ("png", "svg", "pdf")
"""Every figure of a run is written in these formats (PNG embedded in the report; SVG and PDF beside it for papers)."""


def png(draw, *args, **kw) -> str:
    """Draw a figure with a ``plots`` helper (which writes PNG, SVG and PDF atomically) and embed the PNG."""
    fig = draw(*args, formats=FORMATS, **kw)
    return img_file(fig.mmfv_path)


def acc(a: float | None, n: int | None) -> Any:
    """An accuracy with its 95% Wilson interval (from the number of prompts it was measured on)."""
    if a is None or not n:
        return a
    from mmfv.evaluate import wilson

    lo, hi = wilson(a * n, int(n))
    return Raw(f"{a:.3f} <small>[{lo:.2f}, {hi:.2f}]</small>")





# --- reading the results folder ---------------------------------------------------------------------
class Results:
    """A run folder's stage results, read once each. Stages read from another run (``run.use`` in
    the folder's config.toml) are found there."""

    def __init__(self, root: Path, lmm: Any = None):
        self.root = root
        self.lmm = lmm  # the model, for sections that run it (examples); None: those say so
        self._cache: dict[str, dict | None] = {}
        self.use: dict[str, str] = {}
        cfg = root / "config.toml"
        if cfg.exists():
            try:
                self.use = dict(tomllib.loads(cfg.read_text()).get("run", {}).get("use", {}))
            except (tomllib.TOMLDecodeError, UnicodeDecodeError):
                self.use = {}

    def dir(self, stage: str) -> Path | None:
        if stage in self.use and Path(self.use[stage]).is_dir():
            return Path(self.use[stage])
        for name in ALIASES.get(stage, (stage,)):
            if (self.root / name).is_dir():
                return self.root / name
        return None

    def fold(self, title: str, body: str) -> str:
        """Move a long table or block into the report's appendix; returns the link that stands in its place."""
        if not body:
            return ""
        if not hasattr(self, "_appendix"):
            self._appendix: list[tuple[str, str]] = []
        self._appendix.append((title, body))
        i = len(self._appendix)
        return f'<p class="appx">→ <a href="#appx-{i}">Appendix A.{i}: {esc(title)}</a></p>'

    def appendix(self) -> list[tuple[str, str]]:
        """(title, HTML) of every block moved to the appendix, in order."""
        return list(getattr(self, "_appendix", []))

    def skipped(self, stage: str) -> str | None:
        """Why the stage was skipped in this run (its results say so), else None."""
        j = self.json(stage)
        return j.get("skipped") if j else None

    def json(self, stage: str) -> dict | None:
        if stage not in self._cache:
            d = self.dir(stage)
            p = d / "results.json" if d else None
            self._cache[stage] = read_json(p) if p and p.exists() else None
        return self._cache[stage]

    def why_missing(self, stage: str) -> str | None:
        """None when the stage's results are there; else the one-line note to show."""
        if self.dir(stage) is None:
            return missing(stage)
        if self.json(stage) is None:
            return missing(stage, "its folder has no results.json yet")
        return None

    def why_not_shown(self, stage: str) -> str | None:
        """None when the stage ran and has results to show; else the note to show instead (not run,
        no results yet, or skipped with its reason)."""
        if (why := self.why_missing(stage)) is not None:
            return why
        if (skip := self.skipped(stage)) is not None:
            return missing(stage, f"skipped: {skip}")
        return None


