"""Synthetic scenes: determinism, disjoint splits, geometry read back from the rendered pixels,
the object vocabulary, save/load, and the error paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mmfv import relations as R
from mmfv.data import scenes as S

BG = np.array(S.BACKGROUND, dtype=np.uint8)

GEOMETRY_CFGS = [
    S.SceneConfig(),
    S.SceneConfig(grid=5, cell_px=12, jitter=2),
    S.SceneConfig(grid=4, cell_px=8, jitter=1),
    S.SceneConfig(grid=7, cell_px=10, jitter=2, distractor_fill=0.6),
    S.SceneConfig(grid=3, cell_px=6, neighbour_fill=0.5, query_cells="center"),
]


def _ids(cfg: S.SceneConfig) -> str:
    return f"g{cfg.grid}-c{cfg.cell_px}-j{cfg.jitter}-{cfg.query_cells}"


def _alone(name: str, cfg: S.SceneConfig, jx: int = 0, jy: int = 0) -> np.ndarray:
    """Render one object alone in the middle cell of a 3x3 board."""
    c = cfg.cell_px + cfg.cell_px // 2
    sc = S.Scene("x", "test", S.SceneConfig(grid=3, cell_px=cfg.cell_px, jitter=cfg.jitter), (S.SceneObject(name, 1, 1, c + jx, c + jy),), 0)
    return np.asarray(sc.image)


def _cell(img: np.ndarray, cfg: S.SceneConfig, row: int, col: int) -> np.ndarray:
    c = cfg.cell_px
    return img[row * c : (row + 1) * c, col * c : (col + 1) * c]


def _drawn(img: np.ndarray, cfg: S.SceneConfig, row: int, col: int):
    """(centroid x, centroid y, set of colours) of the non-background pixels inside one cell."""
    cell = _cell(img, cfg, row, col)
    mask = (cell != BG).any(-1)
    ys, xs = np.nonzero(mask)
    colours = {tuple(int(v) for v in px) for px in cell[mask]}
    if not len(xs):
        return None, None, colours
    return col * cfg.cell_px + xs.mean(), row * cfg.cell_px + ys.mean(), colours


# ---------------------------------------------------------------- determinism

def test_same_seed_same_bytes_in_memory_and_on_disk(tmp_path):
    cfg = S.SceneConfig(grid=5, cell_px=12, jitter=2)
    a = S.generate_split("test", 40, seed=4, config=cfg)
    b = S.generate_split("test", 40, seed=4, config=cfg)
    assert a is not b and S.digest(a) == S.digest(b)
    S.save(a, tmp_path / "a")
    S.save(b, tmp_path / "b")
    files_a = sorted(p.name for p in (tmp_path / "a").iterdir())
    files_b = sorted(p.name for p in (tmp_path / "b").iterdir())
    assert files_a == files_b and len(files_a) == 41 and "metadata.jsonl" in files_a
    for name in files_a:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_all_splits_deterministic():
    sizes = {s: 30 for s in S.SPLITS}
    a, b = S.generate(sizes, seed=9), S.generate(sizes, seed=9)
    assert all(S.digest(a[s]) == S.digest(b[s]) for s in S.SPLITS)


def test_different_seed_or_config_differs():
    a = S.generate_split("test", 30, seed=4)
    b = S.generate_split("test", 30, seed=5)
    assert S.digest(a) != S.digest(b)
    assert [s.signature() for s in a] != [s.signature() for s in b]
    assert any(not np.array_equal(np.asarray(x.image), np.asarray(y.image)) for x, y in zip(a, b))
    c = S.generate_split("test", 30, seed=4, config=S.SceneConfig(jitter=1))
    assert S.digest(a) != S.digest(c)


def test_digest_sees_image_bytes_and_metadata():
    a = S.generate_split("test", 5, seed=0)
    d = S.digest(a)
    assert S.digest(a[:4]) != d and S.digest(a[::-1]) != d
    o = a[0].objects[0]
    moved = S.Scene(a[0].id, a[0].split, a[0].config, (S.SceneObject(o.name, o.row, o.col, o.x + 1, o.y), *a[0].objects[1:]), 0)
    assert S.digest([moved, *a[1:]]) != d


def test_digest_sees_pixels_alone(monkeypatch):
    a = S.generate_split("test", 3, seed=0)
    d = S.digest(a)
    real = S.render

    def one_pixel_off(scene):
        im = real(scene)
        im.putpixel((0, 0), (0, 0, 0))
        return im

    monkeypatch.setattr(S, "render", one_pixel_off)
    fresh = [S.Scene.from_json(s.to_json()) for s in a]  # same metadata, images not yet rendered
    assert [f.to_json() for f in fresh] == [s.to_json() for s in a]
    assert S.digest(fresh) != d


def test_same_digest_in_another_process():
    """No dependence on hash randomisation or anything else process-specific."""
    code = "from mmfv.data import scenes as S; print(S.digest([s for v in S.generate({k: 25 for k in S.SPLITS}, seed=3).values() for s in v]))"
    here = S.digest([s for v in S.generate({k: 25 for k in S.SPLITS}, seed=3).values() for s in v])
    for hs in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hs}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout.strip()
        assert out == here


def test_one_split_size_does_not_change_the_others():
    a = S.generate({"eval": 40, "train": 30, "test": 30}, seed=2)
    b = S.generate({"eval": 40, "train": 55, "test": 30}, seed=2)
    assert S.digest(a["eval"]) == S.digest(b["eval"]) and S.digest(a["test"]) == S.digest(b["test"])
    assert S.digest(a["train"]) == S.digest(b["train"][:30])
    # generate_split draws from the same per-split stream
    assert S.digest(S.generate_split("test", 30, seed=2)) == S.digest(a["test"])


# ---------------------------------------------------------------- splits

@pytest.fixture(scope="module")
def all_splits():
    return S.generate({s: 200 for s in S.SPLITS}, seed=1)


def test_splits_are_disjoint(all_splits):
    assert list(all_splits) == list(S.SPLITS)
    sigs = {name: [sc.signature() for sc in v] for name, v in all_splits.items()}
    for name, v in sigs.items():
        assert len(v) == 200 and len(set(v)) == 200, name
    for a, b in [(a, b) for i, a in enumerate(S.SPLITS) for b in S.SPLITS[i + 1 :]]:
        assert not set(sigs[a]) & set(sigs[b]), (a, b)
    for name, v in all_splits.items():
        assert all(sc.split == name for sc in v)
        assert len({sc.id for sc in v}) == 200 and all(sc.id.startswith(f"{name}-") for sc in v)


def test_novel_objects_split(all_splits):
    held = set(S.HELD_OUT)
    answers = set()
    for sc in all_splits["novel_objects"]:
        neigh = [o.name for o in sc.neighbours.values() if o is not None]
        answers |= set(neigh)
        assert all(n in held for n in neigh), sc.id
        assert sc.query.name not in held
    assert answers == held  # every held-out class does appear as an answer
    for name, v in all_splits.items():
        if name == "novel_objects":
            continue
        for sc in v:
            assert not {o.name for o in sc.objects} & held, (name, sc.id)
    train_answers = {o.name for sc in all_splits["train"] for o in sc.neighbours.values() if o is not None}
    assert train_answers == set(S.TRAIN_OBJECTS)


def test_collisions_are_redrawn_across_splits():
    """A config with only 32 possible scenes (the query alone): later splits must take what is left."""
    cfg = S.SceneConfig(grid=3, neighbour_fill=0.0, distractor_fill=0.0)
    out = S.generate({"eval": 20, "train": 12}, seed=0, config=cfg)
    sigs = [sc.signature() for v in out.values() for sc in v]
    assert len(sigs) == 32 == len(set(sigs)) == len(S.TRAIN_OBJECTS)


def test_too_few_distinct_scenes_fails_instead_of_hanging():
    cfg = S.SceneConfig(grid=3, neighbour_fill=0.0, distractor_fill=0.0)
    with pytest.raises(ValueError, match="distinct scenes"):
        S.generate({"eval": 20, "train": 13}, seed=0, config=cfg)


# ---------------------------------------------------------------- geometry, read from pixels

@pytest.mark.parametrize("cfg", GEOMETRY_CFGS, ids=_ids)
def test_geometry_from_pixels(cfg):
    seen_relations = set()
    jit = cfg.jitter
    near = 2 * jit + 1.5  # how far drawn centres may drift along an axis the relation does not move on
    far = cfg.cell_px - 2 * jit - 1.5  # how far they are at least along an axis it moves on
    assert far > 0
    for sc in S.generate_split("eval", 60, seed=2, config=cfg):
        img = np.asarray(sc.image)
        assert img.shape == (cfg.image_px, cfg.image_px, 3)
        names = [o.name for o in sc.objects]
        assert len(names) == len(set(names)), sc.id
        cells = {(o.row, o.col): o for o in sc.objects}
        assert len(cells) == len(sc.objects)
        q = sc.query
        if cfg.query_cells == "center":
            assert (q.row, q.col) == (cfg.grid // 2, cfg.grid // 2)
        for dr, dc in (R.offset(r) for r in R.SPATIAL):
            assert 0 <= q.row + dr < cfg.grid and 0 <= q.col + dc < cfg.grid, sc.id
        # every cell: an object drawn in its own colour around its metadata centre, or nothing at all
        for row in range(cfg.grid):
            for col in range(cfg.grid):
                x, y, colours = _drawn(img, cfg, row, col)
                o = cells.get((row, col))
                if o is None:
                    assert x is None, (sc.id, row, col)
                    continue
                assert x is not None, (sc.id, o)
                assert colours == {S.COLOURS[o.name.split(" ")[0]]}, (sc.id, o)
                assert abs(x - o.x) <= 1.5 and abs(y - o.y) <= 1.5, (sc.id, o, x, y)
        qx, qy, _ = _drawn(img, cfg, q.row, q.col)
        meta = sc.to_json()["relations"]
        for rel in R.SPATIAL:
            dr, dc = R.offset(rel)
            o = sc.neighbours[rel]
            if o is None:
                assert not sc.has(rel) and meta[rel] is None
                assert _drawn(img, cfg, q.row + dr, q.col + dc)[0] is None
                continue
            seen_relations.add(rel)
            assert sc.has(rel) and sc.answer(rel) == o.name == meta[rel]
            x, y, colours = _drawn(img, cfg, o.row, o.col)
            assert colours == {S.COLOURS[sc.answer(rel).split(" ")[0]]}
            for d, step in ((x - qx, dc), (y - qy, dr)):  # x grows right, y (rows) grows down
                if step == 0:
                    assert abs(d) <= near, (sc.id, rel, d)
                else:
                    assert np.sign(d) == step and abs(d) >= far, (sc.id, rel, d)
    assert seen_relations == set(R.SPATIAL)


def test_geometry_of_held_out_objects():
    cfg = S.SceneConfig(grid=5, cell_px=12, jitter=2)
    for sc in S.generate_split("novel_objects", 30, seed=5, config=cfg):
        img = np.asarray(sc.image)
        qx, qy, _ = _drawn(img, cfg, sc.query.row, sc.query.col)
        for rel, o in sc.neighbours.items():
            if o is None:
                continue
            x, y, colours = _drawn(img, cfg, o.row, o.col)
            assert colours == {S.COLOURS[o.name.split(" ")[0]]}
            dr, dc = R.offset(rel)
            assert round((x - qx) / cfg.cell_px) == dc and round((y - qy) / cfg.cell_px) == dr


# ---------------------------------------------------------------- vocabulary

def test_vocabulary():
    assert len(S.OBJECTS) == len(set(S.OBJECTS)) == len(S.SHAPES) * len(S.COLOURS)
    assert len(S.TRAIN_OBJECTS) >= 24
    assert len(S.HELD_OUT) == len(set(S.HELD_OUT)) == 8 and set(S.HELD_OUT) <= set(S.OBJECTS)
    assert not set(S.TRAIN_OBJECTS) & set(S.HELD_OUT)
    assert set(S.TRAIN_OBJECTS) | set(S.HELD_OUT) == set(S.OBJECTS)
    assert {h.split(" ", 1)[1] for h in S.HELD_OUT} == set(S.SHAPES)  # one held-out class per shape
    for name in S.OBJECTS:
        colour, shape = name.split(" ", 1)
        assert colour in S.COLOURS and shape in S.SHAPES


@pytest.mark.parametrize("cfg", [S.SceneConfig(), S.SceneConfig(cell_px=12, jitter=2)], ids=_ids)
def test_every_class_renders_differently(cfg):
    imgs = {name: _alone(name, cfg) for name in S.OBJECTS}
    for name, a in imgs.items():
        assert (a != BG).any(), name
    names = list(imgs)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not np.array_equal(imgs[a], imgs[b]), (a, b)


def _valid_configs():
    for cell_px in range(6, 17):
        for jitter in range(0, cell_px):
            try:
                yield S.SceneConfig(grid=3, cell_px=cell_px, jitter=jitter)
            except ValueError:
                break


def test_every_accepted_config_draws_every_class_distinctly_inside_its_cell():
    """A config SceneConfig accepts must never crash the renderer or make two classes look alike."""
    n = 0
    for cfg in _valid_configs():
        n += 1
        for j in sorted({-cfg.jitter, 0, cfg.jitter}):
            seen = {}
            for name in S.OBJECTS:
                a = _alone(name, cfg, j, j)
                mask = (a != BG).any(-1)
                ys, xs = np.nonzero(mask)
                assert len(xs), (cfg, name)
                lo, hi = cfg.cell_px, 2 * cfg.cell_px
                assert lo <= xs.min() and xs.max() < hi and lo <= ys.min() and ys.max() < hi, (cfg, name, j)
                key = a.tobytes()
                assert key not in seen, (cfg, j, name, seen.get(key))
                seen[key] = name
    assert n >= 25


@pytest.mark.parametrize(
    "kw",
    [dict(grid=2), dict(cell_px=5), dict(jitter=-1), dict(cell_px=10, jitter=3), dict(cell_px=6, jitter=1),
     dict(cell_px=8, jitter=2), dict(query_cells="corner"), dict(neighbour_fill=1.5), dict(distractor_fill=-0.1)],
)
def test_bad_configs(kw):
    with pytest.raises(ValueError):
        S.SceneConfig(**kw)


# ---------------------------------------------------------------- scenes, items, errors

def test_answer_has_and_iter_items():
    scenes = S.generate_split("test", 80, seed=0)
    for rel in R.SPATIAL:
        got = list(S.iter_items(scenes, rel))
        assert got == [s for s in scenes if s.neighbours[rel] is not None]
        assert 0 < len(got) < len(scenes)
    with pytest.raises(R.UnknownRelationError):
        S.iter_items(scenes, "up")
    with pytest.raises(R.UnknownRelationError):
        scenes[0].answer("up")


def test_missing_relation():
    sc = next(s for s in S.generate_split("test", 80) if not s.has("left"))
    with pytest.raises(S.MissingRelationError, match="no object left"):
        sc.answer("left")
    assert issubclass(S.MissingRelationError, ValueError)


@pytest.mark.parametrize("n", [0, -3, 2.5, "4", None])
def test_bad_sizes(n):
    with pytest.raises(ValueError, match="positive integer"):
        S.generate_split("test", n)
    with pytest.raises(ValueError, match="positive integer"):
        S.generate({"test": 5, "val": n})


def test_unknown_split():
    with pytest.raises(ValueError, match="novel_objects"):
        S.generate_split("holdout", 3)
    with pytest.raises(ValueError, match="unknown split"):
        S.generate({"holdout": 3})


# ---------------------------------------------------------------- save / load

def test_save_load_round_trip(tmp_path):
    scenes = S.generate_split("val", 12, seed=0, config=S.SceneConfig(grid=6, cell_px=12, jitter=3))
    out = S.save(scenes, tmp_path / "s")
    assert out == tmp_path / "s"
    back = S.load(out)
    assert [b.to_json() for b in back] == [s.to_json() for s in scenes]
    assert [b.signature() for b in back] == [s.signature() for s in scenes]
    assert S.digest(back) == S.digest(scenes)
    lines = (out / "metadata.jsonl").read_text().splitlines()
    assert len(lines) == 12
    for s, line in zip(scenes, lines):
        rec = json.loads(line)
        assert rec["id"] == s.id and rec["image"] == f"{s.id}.png"
        with Image.open(out / rec["image"]) as im:
            assert im.mode == "RGB" and np.array_equal(np.asarray(im), np.asarray(s.image))
    for b in back:
        for rel in R.SPATIAL:
            assert b.has(rel) == (b.neighbours[rel] is not None)
    assert not list(tmp_path.glob(".*partial*"))


def test_saved_folder_has_ordinary_permissions(tmp_path):
    S.save(S.generate_split("val", 2, seed=0), tmp_path / "s")
    (tmp_path / "plain").mkdir()
    assert (tmp_path / "s").stat().st_mode == (tmp_path / "plain").stat().st_mode


def test_refuses_to_overwrite_without_force(tmp_path):
    a = S.generate_split("test", 6, seed=0)
    b = S.generate_split("test", 6, seed=1)
    S.save(a, tmp_path / "s")
    before = {p.name: p.read_bytes() for p in (tmp_path / "s").iterdir()}
    with pytest.raises(FileExistsError, match="--force"):
        S.save(b, tmp_path / "s")
    assert {p.name: p.read_bytes() for p in (tmp_path / "s").iterdir()} == before
    S.save(b, tmp_path / "s", force=True)
    assert S.digest(S.load(tmp_path / "s")) == S.digest(b) != S.digest(a)
    for s in b:
        with Image.open(tmp_path / "s" / f"{s.id}.png") as im:
            assert np.array_equal(np.asarray(im), np.asarray(s.image))
    assert not list(tmp_path.glob(".*partial*"))


def test_load_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="metadata.jsonl"):
        S.load(tmp_path)


def _nothing_written(root):
    assert not [p for p in root.rglob("*") if ".partial-" in p.name]
    assert not list(root.rglob("metadata.jsonl"))
    assert not list(root.rglob("*.png"))


def test_unwritable_output(tmp_path):
    (tmp_path / "file").write_text("x")
    scenes = S.generate_split("test", 3)
    for out in (tmp_path / "file" / "out", tmp_path / "file" / "deeper" / "out"):
        with pytest.raises(OSError) as e:
            S.save(scenes, out)
        assert "\n" not in str(e.value) and "--out" in str(e.value)
    with pytest.raises(NotADirectoryError):
        S.save(scenes, tmp_path / "file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
    assert (tmp_path / "file").read_text() == "x"
    _nothing_written(tmp_path)


def test_failure_mid_write_leaves_nothing(tmp_path, monkeypatch):
    good = S.generate_split("test", 5, seed=0)
    S.save(good, tmp_path / "old")
    before = {p.name: p.read_bytes() for p in (tmp_path / "old").iterdir()}
    real, calls = S.render, []

    def flaky(scene):
        calls.append(scene.id)
        if len(calls) > 2:
            raise OSError("disk full")
        return real(scene)

    monkeypatch.setattr(S, "render", flaky)
    with pytest.raises(OSError, match="disk full"):
        S.save(S.generate_split("test", 5, seed=7), tmp_path / "new")
    assert not (tmp_path / "new").exists()
    calls.clear()
    with pytest.raises(OSError, match="disk full"):
        S.save(S.generate_split("test", 5, seed=8), tmp_path / "old", force=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "old").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]


def test_contact_sheet():
    scenes = S.generate_split("test", 6, seed=0)
    sheet = S.contact_sheet(scenes)
    assert sheet.mode == "RGB" and sheet.width > 4 * scenes[0].config.image_px * 3
