"""Figures: AIE heatmaps (one relation, or all with one colour scale), curves and grouped bars.

Every helper builds a :class:`matplotlib.figure.Figure` without pyplot and without choosing a
backend, so importing mmfv never changes a notebook's backend; in a notebook the returned figure
displays itself. Files are written only when a path is given (:func:`save`): PNG at 150 dpi and,
on request, SVG/PDF beside it, atomically and byte-stable for equal input (no timestamps).
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator
import torch

from mmfv.io import write_bytes

FORMATS = ("png", "svg", "pdf")
DPI = 150
# timestamps and random ids off: equal figures give equal bytes
_METADATA = {"png": {"Software": None}, "svg": {"Date": None}, "pdf": {"CreationDate": None}}
_RC = {"svg.hashsalt": "mmfv", "svg.fonttype": "path", "pdf.fonttype": 42}
_REF_STYLES = [("0.35", "--"), ("0.1", ":"), ("0.55", "-.")]  # reference lines: grey, distinct dashes
# data series: each its own marker and dash as well as colour, so a series drawn over an equal one
# (two relations with the same learning curve) still shows, in the plot and in the legend
_SERIES_STYLES = [("o", "-"), ("s", (0, (5, 2))), ("^", (0, (1, 1.5))), ("D", (0, (6, 2, 1, 2))), ("v", "-"), ("P", (0, (5, 2))),
                  ("X", (0, (1, 1.5))), ("*", (0, (6, 2, 1, 2)))]


class PlotFigure(Figure):
    """A Figure that remembers where :func:`save` wrote it (``mmfv_path``).

    Transitional: ``os.fspath(fig)`` gives that path, so callers written when the helpers returned
    the PNG path (``Path(plots.curves(..., path))``) keep working until they use ``fig.mmfv_path``."""

    mmfv_path: Path | None = None

    def __fspath__(self) -> str:
        if self.mmfv_path is None:
            raise TypeError("this figure was not saved: pass a path to the plots helper or call plots.save(fig, path)")
        return str(self.mmfv_path)


def _figure(w: float, h: float) -> PlotFigure:
    return PlotFigure(figsize=(w, h), layout="constrained")


def _paths(path: Path, formats: Sequence[str]) -> list[Path]:
    fmts = [f.lower().lstrip(".") for f in formats]
    bad = [f for f in fmts if f not in FORMATS]
    if not fmts or bad:
        raise ValueError(f"plot formats {tuple(formats)!r}: use one or more of {FORMATS}")
    suffix = path.suffix.lower().lstrip(".")
    if suffix in FORMATS and suffix not in fmts:
        raise ValueError(f"{path}: the suffix .{suffix} is not among formats {tuple(fmts)}; pass formats including {suffix!r} or another file name")
    return [path.with_suffix(f".{f}") for f in dict.fromkeys(fmts)]


def save(fig: Figure, path: str | os.PathLike, formats: Sequence[str] = ("png",)) -> Path:
    """Write ``fig`` once per format in ``formats`` (the suffix of ``path`` replaced by each
    format's), atomically and without timestamps; returns the first file written (the PNG by
    default) and records it as ``fig.mmfv_path``."""
    paths = _paths(Path(path), formats)
    with matplotlib.rc_context(_RC):
        for p in paths:
            fmt = p.suffix[1:]
            buf = io.BytesIO()
            fig.savefig(buf, format=fmt, dpi=DPI, bbox_inches="tight", metadata=_METADATA[fmt])
            write_bytes(p, buf.getvalue())
    fig.mmfv_path = paths[0]
    return paths[0]


def _finish(fig: Figure, path: str | os.PathLike | None, formats: Sequence[str]) -> Figure:
    if path is not None:
        save(fig, path, formats)
    return fig


def _finite(values) -> list[float]:
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            out.append(f)
    return out


def _ylim(values: Sequence[float], floor: float | None = None) -> tuple[float, float]:
    """Axis limits around the data with an 8% margin (0.05 either side when the data is flat);
    ``floor`` (e.g. 0 for bars) is always inside."""
    vals = list(values) + ([floor] if floor is not None else [])
    if not vals:
        return 0.0, 1.0
    lo, hi = min(vals), max(vals)
    pad = 0.08 * (hi - lo) if hi > lo else 0.05 * max(1.0, abs(hi))
    return (floor if floor is not None and floor == lo else lo - pad), hi + pad


def _references(ax, hlines: Mapping[str, float] | None) -> list[Line2D]:
    """Labelled horizontal reference lines (chance, zero-shot, ICL …), listed in the legend."""
    lines = []
    for i, (name, y) in enumerate((hlines or {}).items()):
        color, dash = _REF_STYLES[i % len(_REF_STYLES)]
        lines.append(ax.axhline(float(y), color=color, linestyle=dash, linewidth=1.2, label=name, zorder=2.5))  # over bars, under lines
    return lines


def _legend(fig: Figure, ax, refs: Sequence[Line2D]) -> None:
    """The legend below the axes, outside the data, so it never covers a line or a bar; the data
    first, then the reference lines."""
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: any(handles[i] is r for r in refs))
    if order:
        fig.legend([handles[i] for i in order], [labels[i] for i in order], loc="outside lower center", ncols=min(len(order), 3),
                   fontsize=8, frameon=False)


def _heat(ax, aie: torch.Tensor, top: Sequence[tuple[int, int]], vmax: float, box_min: float, ci: torch.Tensor | None):
    """Draw one L×H heatmap on ``ax``; box the top heads whose |AIE| ≥ box_min·vmax."""
    L, H = aie.shape
    im = ax.imshow(aie.detach().float().cpu().numpy(), cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto", interpolation="nearest")
    for l, h in top:
        if abs(float(aie[l, h])) >= box_min * vmax:  # a box on a near-white cell is noise
            ax.add_patch(Rectangle((h - 0.42, l - 0.42), 0.84, 0.84, fill=False, edgecolor="black", linewidth=1.4, clip_on=False))
    if ci is not None:
        if tuple(ci.shape) != (L, H):
            raise ValueError(f"aie_heatmap: ci has shape {tuple(ci.shape)}, expected the AIE's {(L, H)} (95% half-widths per head)")
        size = max(4.0, min(7.0, 70 / max(L, H)))
        for l in range(L):
            for h in range(H):
                dark = abs(float(aie[l, h])) > 0.6 * vmax
                ax.text(h, l, f"±{float(ci[l, h]):.2g}", ha="center", va="center", fontsize=size, color="white" if dark else "0.2")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(MaxNLocator(nbins=12, integer=True))
    ax.set_xlim(-0.5, H - 0.5)
    ax.set_ylim(L - 0.5, -0.5)
    return im


def _vmax(aies: Sequence[torch.Tensor], vmax: float | None) -> float:
    if vmax is not None:
        if not vmax > 0:
            raise ValueError(f"vmax={vmax}: the colour scale's half-range must be positive")
        return float(vmax)
    return max((float(a.abs().max()) for a in aies), default=0.0) or 1.0


def aie_heatmap(aie: torch.Tensor, top: Sequence[tuple[int, int]], title: str, path: str | os.PathLike | None = None, *,
                vmax: float | None = None, ci: torch.Tensor | None = None, box_min: float = 0.1,
                formats: Sequence[str] = ("png",)) -> Figure:
    """Layers × heads AIE heatmap (aie: L×H) with the ``top`` (layer, head) pairs boxed.

    ``vmax``: half-range of the symmetric colour scale (pass one value to compare several
    heatmaps; default: this AIE's max |AIE|). Top heads with |AIE| < ``box_min``·vmax are not
    boxed. ``ci`` (L×H): 95% CI half-width per head, printed in each cell."""
    L, H = aie.shape
    v = _vmax([aie], vmax)
    fig = _figure(max(3.5, (0.45 if ci is None else 0.7) * H + 1.8), max(3.0, 0.4 * L + 1.2))
    ax = fig.add_subplot()
    im = _heat(ax, aie, top, v, box_min, ci)
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label="AIE (Δ P(answer))")
    return _finish(fig, path, formats)


def heatmap_grid(aies: Mapping[str, torch.Tensor], tops: Mapping[str, Sequence[tuple[int, int]]], vmax: float | None = None, *,
                 title: str = "", path: str | os.PathLike | None = None, box_min: float = 0.1, ncols: int = 4,
                 formats: Sequence[str] = ("png",)) -> Figure:
    """All relations' AIE heatmaps (``aies[relation]``: L×H) on one symmetric colour scale with
    one colour bar; ``tops[relation]`` are boxed as in :func:`aie_heatmap`."""
    if not aies:
        raise ValueError("heatmap_grid: no AIE given")
    names = list(aies)
    L, H = next(iter(aies.values())).shape
    v = _vmax(list(aies.values()), vmax)
    cols = min(ncols, len(names))
    rows = math.ceil(len(names) / cols)
    fig = _figure(cols * max(2.6, 0.3 * H + 1.0) + 1.0, rows * max(2.2, 0.28 * L + 0.9) + (0.3 if title else 0))
    axes = fig.subplots(rows, cols, squeeze=False)
    im, used = None, []
    for i, ax in enumerate(axes.flat):
        if i >= len(names):
            ax.remove()
            continue
        used.append(ax)
        im = _heat(ax, aies[names[i]], tops.get(names[i], ()), v, box_min, None)
        ax.set_title(names[i], fontsize=9)
        if i % cols:
            ax.set_ylabel("")
        if i < len(names) - cols:
            ax.set_xlabel("")
    fig.colorbar(im, ax=used, label="AIE (Δ P(answer))", shrink=0.8, fraction=0.025, pad=0.01)
    if title:
        fig.suptitle(title, fontsize=10)
    return _finish(fig, path, formats)


def curves(series: Mapping[str, Sequence[float]], x: Sequence[float], xlabel: str, ylabel: str, title: str, path: str | os.PathLike | None = None,
           hlines: Mapping[str, float] | None = None, bands: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None, *,
           formats: Sequence[str] = ("png",)) -> Figure:
    """Line plot of several named series over ``x`` (e.g. accuracy by layer per relation).

    ``bands[name] = (low, high)`` shades an interval (e.g. the 95% CI) around series ``name``;
    ``hlines[label] = y`` draws labelled reference lines (chance, zero-shot, best ICL …). The y axis
    follows the data, bands and reference lines."""
    fig = _figure(5.5, 3.9)
    ax = fig.add_subplot()
    xs = list(x)
    seen: list[float] = []
    drawn: dict[tuple, str] = {}
    for i, (name, ys) in enumerate(series.items()):
        marker, dash = _SERIES_STYLES[i % len(_SERIES_STYLES)]
        key = tuple(str(v) for v in ys)
        label = f"{name} (= {drawn[key]})" if key in drawn else name  # drawn over an equal series: say so
        drawn.setdefault(key, name)
        (line,) = ax.plot(xs[: len(ys)], ys, marker=marker, markersize=4, linestyle=dash, linewidth=1.5,
                          label=label, zorder=3, markerfacecolor="none" if i % 2 else None)
        seen += _finite(ys)
        if bands and name in bands:
            lo, hi = bands[name]
            ax.fill_between(xs[: len(lo)], lo, hi, color=line.get_color(), alpha=0.15, linewidth=0, zorder=2)
            seen += _finite(lo) + _finite(hi)
    refs = _references(ax, hlines)
    seen += [float(y) for y in (hlines or {}).values()]
    if xs and all(float(v).is_integer() for v in xs):  # shots, epochs, head counts: no fractional ticks
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(*_ylim(seen))
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    _legend(fig, ax, refs)
    return _finish(fig, path, formats)


def bars(groups: Mapping[str, Mapping[str, float]], ylabel: str, title: str, path: str | os.PathLike | None = None,
         hlines: Mapping[str, float] | None = None, *, formats: Sequence[str] = ("png",)) -> Figure:
    """Grouped bar chart: ``groups[group][bar] = value`` (a bar missing from a group is left out);
    ``hlines`` as in :func:`curves`. The y axis spans 0 and the data."""
    names = list(groups)
    bars_ = list(dict.fromkeys(b for g in groups.values() for b in g))
    fig = _figure(max(5.0, 1.2 * len(names) + 2), 3.9)
    ax = fig.add_subplot()
    w = 0.8 / max(1, len(bars_))
    seen: list[float] = []
    for j, b in enumerate(bars_):
        ys = [float(groups[n][b]) if b in groups[n] else math.nan for n in names]
        ax.bar([i + j * w for i in range(len(names))], ys, width=w, label=b, zorder=2)
        seen += _finite(ys)
    refs = _references(ax, hlines)
    seen += [float(y) for y in (hlines or {}).values()]
    ax.set_xticks([i + 0.4 - w / 2 for i in range(len(names))])
    ax.set_xticklabels(names)
    ax.set_ylabel(ylabel)
    ax.set_ylim(*_ylim(seen, floor=0.0))
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis="y", zorder=0)
    _legend(fig, ax, refs)
    return _finish(fig, path, formats)
