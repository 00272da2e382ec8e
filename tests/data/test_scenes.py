"""Synthetic scenes: determinism, disjoint splits, geometry checked in the rendered pixels."""

from __future__ import annotations

import numpy as np
import pytest

from mmfv import relations as R
from mmfv.data import scenes as S

CFGS = [S.SceneConfig(), S.SceneConfig(grid=4, cell_px=8), S.SceneConfig(grid=5, cell_px=12, jitter=2)]


def test_same_seed_same_bytes(tmp_path):
    a, b = S.generate_split("test", 30, seed=4), S.generate_split("test", 30, seed=4)
    assert S.digest(a) == S.digest(b)
    S.save(a, tmp_path / "a")
    S.save(b, tmp_path / "b")
    for f in sorted((tmp_path / "a").iterdir()):
        assert f.read_bytes() == (tmp_path / "b" / f.name).read_bytes()
    assert S.digest(S.generate_split("test", 30, seed=5)) != S.digest(a)


def test_splits_disjoint_and_novel_objects():
    splits = S.generate({s: 150 for s in S.SPLITS}, seed=1)
    sigs = [{sc.signature() for sc in v} for v in splits.values()]
    assert sum(len(s) for s in sigs) == len(set().union(*sigs))
    for name, scenes in splits.items():
        for sc in scenes:
            names = [o.name for o in sc.objects]
            assert len(names) == len(set(names))
            neigh = [o.name for o in sc.neighbours.values() if o]
            if name == "novel_objects":
                assert all(n in S.HELD_OUT for n in neigh)
            else:
                assert not set(names) & set(S.HELD_OUT)


def _centroid(img: np.ndarray, cfg: S.SceneConfig, row: int, col: int) -> tuple[float, float]:
    c = cfg.cell_px
    cell = img[row * c : (row + 1) * c, col * c : (col + 1) * c]
    ys, xs = np.nonzero((cell != np.array(S.BACKGROUND)).any(-1))
    assert len(xs), "object not drawn"
    return col * c + xs.mean(), row * c + ys.mean()


@pytest.mark.parametrize("cfg", CFGS)
def test_geometry_from_pixels(cfg):
    for sc in S.generate_split("eval", 25, seed=2, config=cfg):
        img = np.asarray(sc.image)
        q = sc.query
        assert 1 <= q.row < cfg.grid - 1 and 1 <= q.col < cfg.grid - 1
        qx, qy = _centroid(img, cfg, q.row, q.col)
        for rel, o in sc.neighbours.items():
            if o is None:
                continue
            x, y = _centroid(img, cfg, o.row, o.col)
            assert abs(x - o.x) < 1.6 and abs(y - o.y) < 1.6
            dr, dc = R.offset(rel)
            # a neighbour's drawn centre is a whole cell away along each offset axis, < half a cell on the other
            half = cfg.cell_px / 2
            direction = lambda d: 0 if abs(d) < half else int(np.sign(d))  # noqa: E731
            assert (direction(y - qy), direction(x - qx)) == (dr, dc), (sc.id, rel)


def test_vocabulary_distinct_when_drawn():
    assert len(S.TRAIN_OBJECTS) >= 24 and not set(S.TRAIN_OBJECTS) & set(S.HELD_OUT)
    cfg = S.SceneConfig(grid=3, cell_px=8)
    imgs = {}
    for name in S.OBJECTS:
        sc = S.Scene("x", "test", cfg, (S.SceneObject(name, 1, 1, 12, 12),), 0)
        imgs[name] = np.asarray(sc.image).tobytes()
    assert len(set(imgs.values())) == len(S.OBJECTS)


def test_save_load_round_trip_and_refuse_overwrite(tmp_path):
    scenes = S.generate_split("val", 10, seed=0)
    S.save(scenes, tmp_path / "s")
    back = S.load(tmp_path / "s")
    assert [b.to_json() for b in back] == [s.to_json() for s in scenes]
    assert all(np.array_equal(np.asarray(a.image), np.asarray(b.image)) for a, b in zip(scenes, back))
    with pytest.raises(FileExistsError, match="--force"):
        S.save(scenes, tmp_path / "s")
    S.save(scenes, tmp_path / "s", force=True)


@pytest.mark.parametrize("n", [0, -3])
def test_bad_sizes(n):
    with pytest.raises(ValueError, match="positive"):
        S.generate_split("test", n)


def test_missing_relation_and_unwritable(tmp_path):
    sc = next(s for s in S.generate_split("test", 50) if not s.has("left"))
    with pytest.raises(S.MissingRelationError, match="no object left"):
        sc.answer("left")
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError):
        S.save(S.generate_split("test", 2), tmp_path / "file" / "out")
    assert not list(tmp_path.glob(".*partial*"))
