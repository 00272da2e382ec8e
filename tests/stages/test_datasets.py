"""`mmfv run` end to end on real-format data: a GQA scene-graph file, a VSR JSONL and a task JSONL
(small generated images, object names the random tiny model can read), with the report showing each
dataset; the paper's protocol as a preset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from mmfv import config as C
from mmfv import runner

NAMES = [f"{c} {s}" for s in ("circle", "square", "triangle", "diamond", "plus", "cross", "ring", "bar") for c in ("red", "green", "blue", "yellow", "magenta")]
SMALL = {
    "icl": {"shots": [0, 1, 2], "n": 8},
    "cma": {"n_mean": 8, "n_cma": 6, "shots": 2, "top_k": 3, "batch_size": 2},
    "eval": {"n": 8, "head_counts": [1, 2]},
    "finetune": {"sizes": [8], "headline_size": 8, "epochs": 2, "shots": [1], "n": 8, "batch_size": 8},
    "run": {"batch_size": 16, "threads": 1},
}


def _px(model_dir: Path) -> int:
    sc = json.loads((model_dir / "card.json").read_text())["scene_config"]
    return sc["grid"] * sc["cell_px"]


def _images(folder: Path, names: list[str], px: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, n in enumerate(names):
        Image.new("RGB", (px, px), (40 * (i % 6), 90, 200)).save(folder / n)


def gqa_fixture(root: Path, px: int, n_images: int = 90) -> tuple[Path, Path]:
    graphs = {}
    for i in range(n_images):
        a, b, c = (NAMES[(i + j) % len(NAMES)] for j in range(3))
        q = f"{i}0"
        graphs[str(5000 + i)] = {"width": 100, "height": 100, "objects": {
            q: {"name": a, "x": 40, "y": 40, "w": 20, "h": 20, "relations": []},
            f"{i}1": {"name": b, "x": 5, "y": 40, "w": 20, "h": 20, "relations": [{"name": "to the left of", "object": q}]},
            f"{i}2": {"name": c, "x": 75, "y": 40, "w": 20, "h": 20, "relations": [{"name": "to the right of", "object": q}]},
        }}
    root.mkdir(parents=True, exist_ok=True)
    path = root / "val_sceneGraphs.json"
    path.write_text(json.dumps(graphs))
    _images(root / "images", [f"{k}.jpg" for k in graphs], px)
    return path, root / "images"


def vsr_fixture(root: Path, px: int, n_images: int = 90) -> tuple[Path, Path]:
    rows = []
    for i in range(n_images):
        image = f"{i:012d}.jpg"
        a, b, c = (NAMES[(i + j) % len(NAMES)] for j in range(3))
        rows += [{"image": image, "caption": f"The {a} is left of the {b}.", "label": 1, "relation": "left of", "reference_frame": None},
                 {"image": image, "caption": f"The {c} is right of the {b}.", "label": 1, "relation": "right of", "reference_frame": None}]
    root.mkdir(parents=True, exist_ok=True)
    path = root / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _images(root / "images", sorted({r["image"] for r in rows}), px)
    return path, root / "images"


def tasks_fixture(root: Path, px: int, n: int = 90) -> Path:
    lines = []
    for i in range(n):
        a, b, c = (NAMES[(i + j) % len(NAMES)] for j in range(3))
        lines += [{"query": a, "answer": b, "relation": "bigger_than", "image": f"img{i}.png", "candidates": [a, b, c]},
                  {"query": a, "answer": c, "relation": "older_than", "image": f"img{i}.png", "candidates": [a, b, c]}]
    _images(root, [f"img{i}.png" for i in range(n)], px)
    path = root / "tasks.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def run_on(model_dir: Path, out: Path, data: dict, **extra) -> dict:
    cfg = C.from_dict({**SMALL, **extra, "model": {"name": str(model_dir)}, "data": data})
    runner.run(cfg, out, quiet=True)
    return {p.parent.name: json.loads(p.read_text()) for p in out.glob("*/results.json")}


@pytest.mark.parametrize("dataset", ["gqa", "vsr", "tasks"])
def test_run_completes_on_real_format_data(dataset, tiny_model_dir, tmp_path):
    px = _px(tiny_model_dir)
    if dataset == "gqa":
        path, images = gqa_fixture(tmp_path / "gqa", px)
        data = {"dataset": "gqa", "files": [str(path)], "image_dir": str(images), "relations": ["left", "right"]}
    elif dataset == "vsr":
        path, images = vsr_fixture(tmp_path / "vsr", px)
        data = {"dataset": "vsr", "files": [str(path)], "image_dir": str(images), "relations": ["left", "right"]}
    else:
        path = tasks_fixture(tmp_path / "tasks", px)
        data = {"dataset": "tasks", "files": [str(path)], "relations": []}
    res = run_on(tiny_model_dir, tmp_path / "out", data)
    d = res["data"]
    assert d["dataset"] == dataset and sum(d["items"]["test"].values()) > 0
    rels = d["relations"]
    assert set(res["eval"]["relations"]) == set(rels) and set(res["finetune"]["relations"]) == set(rels)
    assert "skipped" in res["compose"]  # no diagonal relations in real data: skipped with a reason, not an error
    if dataset == "vsr":
        assert all(0 < v <= 0.5 for v in d["chance"].values())  # two names per caption, pooled per image
    if dataset == "tasks":
        assert rels == ["bigger_than", "older_than"] and all(v == pytest.approx(1 / 3, abs=1e-3) for v in d["chance"].values())
    page = (tmp_path / "out" / "report" / "report.html").read_text()
    assert f"Dataset <b>{dataset}</b>" in page and "skipped: composition needs the diagonal relations" in page


def test_bad_data_config_is_one_line(tmp_path):
    for data, key in [({"dataset": "gqa", "relations": ["left"]}, "data.files"),
                      ({"dataset": "vsr", "files": ["x.jsonl"], "relations": ["left"]}, "data.image_dir"),
                      ({"dataset": "tasks", "files": ["t.jsonl"], "relations": "agentic"}, "data.relations"),
                      ({"dataset": "synthetic", "files": ["t.jsonl"]}, "data.files"),
                      ({"dataset": "synthetic", "relations": []}, "data.relations")]:
        with pytest.raises(C.ConfigError, match=key.replace(".", r"\.")) as e:
            C.from_dict({"data": data})
        assert "\n" not in str(e.value)


def test_missing_task_file_fails_before_writing_results(tiny_model_dir, tmp_path):
    cfg = C.from_dict({**SMALL, "model": {"name": str(tiny_model_dir)}, "data": {"dataset": "tasks", "files": [str(tmp_path / "nope.jsonl")]}})
    with pytest.raises((ValueError, OSError), match="nope.jsonl"):
        runner.run(cfg, tmp_path / "out", quiet=True)
    assert not list((tmp_path / "out").glob("*/results.json"))


def test_fu2025_preset_sets_the_papers_values_unless_given():
    cfg = C.from_dict({"run": {"protocol": "fu2025"}})
    assert (cfg.cma.shots, cfg.cma.only_correct, cfg.cma.fv_bias, cfg.data.direction, cfg.data.gqa_filters) == (4, True, True, "fu2025", "fu2025")
    mine = C.from_dict({"run": {"protocol": "fu2025"}, "cma": {"shots": 3}})
    assert mine.cma.shots == 3 and mine.cma.only_correct
    assert C.Config().cma.shots == 5 and not C.Config().cma.fv_bias


def test_fu2025_run_on_synthetic_pairs_cma_prompts_with_correct_clean_ones(tiny_model_dir, tmp_path):
    """Under fu2025 the CMA prompts are the shuffled versions of clean prompts the model answered
    correctly (the paper's filter); the run goes through to the report."""
    small = {**SMALL, "data": {"eval_scenes": 60, "train_scenes": 80, "val_scenes": 40, "test_scenes": 60},
             "cma": {**SMALL["cma"], "only_correct": False}, "run": {**SMALL["run"], "protocol": "fu2025"}}
    cfg = C.from_dict({**small, "model": {"name": str(tiny_model_dir)}})
    assert cfg.cma.shots == 2 and cfg.cma.fv_bias  # given keys win; the rest follow the paper
    runner.run(cfg, tmp_path / "out", quiet=True, until="vectors")
    cma = json.loads((tmp_path / "out" / "cma" / "results.json").read_text())
    assert all(v["n_cma"] == 6 for v in cma["relations"].values())
