"""PNG figures: AIE heatmap with top heads boxed, layer-sweep and head-count curves, ICL curve."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import torch  # noqa: E402

from mmfv.io import write_bytes  # noqa: E402


def _save(fig, path: str | Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return write_bytes(path, buf.getvalue())


def aie_heatmap(aie: torch.Tensor, top: Sequence[tuple[int, int]], title: str, path: str | Path) -> Path:
    """Layers × heads AIE heatmap; the top heads are boxed."""
    L, H = aie.shape
    fig, ax = plt.subplots(figsize=(max(3.5, 0.45 * H + 1.5), max(3, 0.4 * L + 1)))
    v = float(aie.abs().max()) or 1.0
    im = ax.imshow(aie.numpy(), cmap="RdBu_r", vmin=-v, vmax=v, aspect="auto")
    for l, h in top:
        ax.add_patch(plt.Rectangle((h - 0.5, l - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=1.8))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(H))
    ax.set_yticks(range(L))
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label="AIE (Δ P(answer))")
    return _save(fig, path)


def curves(series: Mapping[str, Sequence[float]], x: Sequence[float], xlabel: str, ylabel: str, title: str, path: str | Path, hlines: Mapping[str, float] | None = None,
           bands: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None) -> Path:
    """Line plot of several named series over ``x`` (e.g. accuracy by layer per relation).

    ``bands[name] = (low, high)`` shades an interval (e.g. the 95% CI) around series ``name``."""
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for name, ys in series.items():
        (line,) = ax.plot(list(x)[: len(ys)], ys, marker="o", markersize=3, label=name)
        if bands and name in bands:
            lo, hi = bands[name]
            ax.fill_between(list(x)[: len(lo)], lo, hi, color=line.get_color(), alpha=0.15, linewidth=0)
    for name, y in (hlines or {}).items():
        ax.axhline(y, linestyle="--", linewidth=1, color="gray")
        ax.text(list(x)[0], y, f" {name}", va="bottom", fontsize=8, color="gray")
    if all(float(v).is_integer() for v in x):  # shots, epochs, head counts: no fractional ticks
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def bars(groups: Mapping[str, Mapping[str, float]], ylabel: str, title: str, path: str | Path) -> Path:
    """Grouped bar chart: ``groups[group][bar] = value``."""
    names = list(groups)
    bars_ = list(next(iter(groups.values())))
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(names) + 2), 3.5))
    w = 0.8 / len(bars_)
    for j, b in enumerate(bars_):
        ax.bar([i + j * w for i in range(len(names))], [groups[n].get(b, 0) for n in names], width=w, label=b)
    ax.set_xticks([i + 0.4 - w / 2 for i in range(len(names))])
    ax.set_xticklabels(names)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.05)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)
