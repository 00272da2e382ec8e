"""Figures: returned, not written unless asked, byte-stable, notebook-safe, axes that follow the data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
import pytest
import torch

from mmfv import plots

SRC = str(Path(plots.__file__).resolve().parents[1])


def _aie(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(4, 5, generator=g) * 0.02  # (L, H)
    a[0, 4], a[3, 0] = 0.3, 0.2  # top heads in corner cells
    return a


def _draw_all(folder: Path | None, formats=("png",)) -> dict[str, Figure]:
    p = (lambda name: folder / f"{name}.png") if folder else (lambda name: None)
    return {
        "heatmap": plots.aie_heatmap(_aie(), [(0, 4), (3, 0)], "AIE", p("heatmap"), formats=formats),
        "grid": plots.heatmap_grid({"left": _aie(0), "right": _aie(1), "above": _aie(2)}, {"left": [(0, 4)], "right": [(3, 0)]},
                                   path=p("grid"), formats=formats),
        "curves": plots.curves({"left": [0.2, 0.5, 0.6]}, [0, 1, 2], "k", "acc", "ICL", p("curves"), hlines={"chance": 0.25},
                               bands={"left": ([0.1, 0.4, 0.5], [0.3, 0.6, 0.7])}, formats=formats),
        "bars": plots.bars({"above_left": {"chance": 0.25, "composed": 0.6}}, "acc", "compose", p("bars"), formats=formats),
    }


def test_helpers_return_figures_and_write_nothing_without_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    figs = _draw_all(None)
    assert all(isinstance(f, Figure) for f in figs.values())
    assert all(f.mmfv_path is None for f in figs.values())
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(TypeError, match="not saved"):
        os.fspath(figs["curves"])


def test_a_path_writes_png_and_formats_add_svg_and_pdf(tmp_path):
    figs = _draw_all(tmp_path / "png")
    for name, fig in figs.items():
        assert fig.mmfv_path == tmp_path / "png" / f"{name}.png"
        assert fig.mmfv_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert Path(fig) == fig.mmfv_path  # transitional: callers that took the returned path
    figs = _draw_all(tmp_path / "all", formats=("png", "svg", "pdf"))
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == sorted(f"{n}.{x}" for n in figs for x in ("png", "svg", "pdf"))
    assert (tmp_path / "all" / "bars.pdf").read_bytes()[:5] == b"%PDF-"
    assert b"<svg" in (tmp_path / "all" / "bars.svg").read_bytes()[:2000]


def test_save_checks_formats_and_suffix(tmp_path):
    fig = plots.curves({"a": [0.1, 0.2]}, [0, 1], "x", "y", "t")
    assert plots.save(fig, tmp_path / "f.pdf", formats=("pdf",)) == tmp_path / "f.pdf"
    assert fig.mmfv_path == tmp_path / "f.pdf"
    with pytest.raises(ValueError, match="suffix .pdf"):
        plots.save(fig, tmp_path / "g.pdf")
    with pytest.raises(ValueError, match="formats"):
        plots.save(fig, tmp_path / "g.png", formats=("png", "jpg"))
    assert not (tmp_path / "g.png").exists()


def test_equal_input_gives_equal_bytes(tmp_path):
    _draw_all(tmp_path / "a", formats=("png", "svg", "pdf"))
    _draw_all(tmp_path / "b", formats=("png", "svg", "pdf"))
    for f in sorted((tmp_path / "a").iterdir()):
        assert f.read_bytes() == (tmp_path / "b" / f.name).read_bytes(), f.name
    assert b"CreationDate" not in (tmp_path / "a" / "bars.pdf").read_bytes()


def test_importing_plots_keeps_the_notebook_backend():
    code = "import matplotlib; b = matplotlib.get_backend(); import mmfv, mmfv.plots; print(b, matplotlib.get_backend())"
    env = {**os.environ, "MPLBACKEND": "svg", "PYTHONPATH": SRC}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out == ["svg", "svg"]


def test_plots_never_import_pyplot():
    code = "import sys, torch; from mmfv import plots; plots.curves({'a': [0.1]}, [0], 'x', 'y', 't'); print('matplotlib.pyplot' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": SRC}, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_y_axis_follows_the_data():
    fig = plots.curves({"a": [0.40, 0.45], "b": [0.42, 0.50]}, [0, 1], "x", "y", "t", hlines={"chance": 0.35})
    lo, hi = fig.axes[0].get_ylim()
    assert 0.30 < lo < 0.35 and 0.50 < hi < 0.55  # not 0–1: the data, the reference line and a margin
    fig = plots.curves({"a": [0.4, 0.5]}, [0, 1], "x", "y", "t", bands={"a": ([0.2, 0.3], [0.6, 0.9])})
    lo, hi = fig.axes[0].get_ylim()
    assert lo < 0.2 and hi > 0.9
    lo, hi = plots.bars({"g": {"a": 0.3, "b": 0.4}}, "y", "t").axes[0].get_ylim()
    assert lo == 0.0 and 0.4 < hi < 0.5  # bars keep their zero baseline
    lo, hi = plots.bars({"g": {"a": -0.2, "b": 0.4}}, "y", "t").axes[0].get_ylim()
    assert lo < -0.2 and hi > 0.4


def test_equal_series_stay_visible_and_the_legend_says_they_coincide():
    """A series drawn over an equal one (two relations with one learning curve) differs in marker and
    dash, so both show; its legend entry names the series it covers."""
    fig = plots.curves({"left": [0.9, 0.8], "right": [0.9, 0.8], "up": [0.5, 0.6]}, [1, 2], "epoch", "acc", "curves")
    lines = fig.axes[0].get_lines()
    assert len({(l.get_marker(), str(l.get_linestyle())) for l in lines}) == 3
    assert len({l.get_color() for l in lines}) == 3
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["left", "right (= left)", "up"]


def test_reference_lines_are_in_the_legend_not_text_on_the_axes():
    fig = plots.curves({"left": [0.2, 0.5]}, [0, 1], "x", "y", "t", hlines={"chance": 0.25, "zero-shot": 0.3})
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["left", "chance", "zero-shot"]
    assert len(fig.axes[0].texts) == 0 and fig.axes[0].get_legend() is None


def test_heatmap_colour_scale_and_boxes():
    aie = _aie()
    fig = plots.aie_heatmap(aie, [(0, 4), (3, 0), (1, 1)], "AIE", vmax=0.6)
    ax = fig.axes[0]
    assert ax.images[0].get_clim() == (-0.6, 0.6)
    boxes = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert len(boxes) == 2  # (1, 1) has |AIE| < 0.1 · vmax: no box
    assert all(not b.get_clip_on() for b in boxes)  # edge cells keep their whole box
    fig = plots.aie_heatmap(aie, [(0, 4)], "AIE", ci=torch.full((4, 5), 0.01))
    assert len(fig.axes[0].texts) == 20 and fig.axes[0].texts[0].get_text() == "±0.01"
    with pytest.raises(ValueError, match="ci has shape"):
        plots.aie_heatmap(aie, [], "AIE", ci=torch.zeros(2, 2))


def test_heatmap_grid_shares_one_colour_scale():
    aies = {"left": _aie(0), "right": _aie(1) * 3}
    fig = plots.heatmap_grid(aies, {"left": [(0, 4)]})
    images = [ax.images[0] for ax in fig.axes if ax.images]
    v = float(aies["right"].abs().max())
    assert len(images) == 2 and all(im.get_clim() == pytest.approx((-v, v)) for im in images)
    assert sum(1 for ax in fig.axes if ax.get_label() == "<colorbar>") == 1
    assert plots.heatmap_grid(aies, {}, vmax=2.0).axes[0].images[0].get_clim() == (-2.0, 2.0)
