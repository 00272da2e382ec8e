"""The shared split tail: fractions, leak-free assignment, the per-image cap, min_items errors."""

from __future__ import annotations

import pytest

from mmfv import prompts as P
from mmfv.data import splits as S


def its(n: int, relation: str = "holding") -> list[P.Item]:
    return [P.Item(f"img{i}", f"q{i}", f"a{i}", relation) for i in range(n)]


def test_split_items_are_disjoint_and_cover_everything():
    by = {"holding": its(200), "riding": its(200, "riding")}
    per = S.split_items(by, seed=3)
    assert set(per) == set(S.SPLITS)
    for r in by:
        assert sorted(it.image_id for s in per for it in per[s][r]) == sorted(it.image_id for it in by[r])
    for s in per:  # one image id, one split, whatever the relation
        assert {it.image_id for it in per[s]["holding"]} == {it.image_id for it in per[s]["riding"]}
    shares = {s: len(per[s]["holding"]) / 200 for s in per}
    assert all(abs(shares[s] - S.DEFAULT_FRACTIONS[s]) < 0.1 for s in per)


def test_fractions_errors():
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        S.fractions_of({"dev": 0.5})
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        S.fractions_of({"train": True})
    with pytest.raises(ValueError, match="sum to at most 1"):
        S.fractions_of({"train": 0.6, "test": 0.6})
    assert S.fractions_of({"test": 0.5, "eval": 0.5}) == (("eval", 0.5), ("test", 0.5))


def test_pick_split_min_items():
    built = {"holding": its(40)}
    fr = S.fractions_of({"train": 1.0})
    assert len(S.pick_split(built, "train", 0, fr, "X", "hint", min_items=40)["holding"]) == 40
    with pytest.raises(ValueError, match=r"'holding': only 40 X items in split 'train' \(need 41\) .*hint$"):
        S.pick_split(built, "train", 0, fr, "X", "hint", min_items=41)
    with pytest.raises(ValueError, match="has fraction 0"):
        S.pick_split(built, "val", 0, fr, "X", "hint")


def test_keep_per_image_is_stable():
    found = [(S.stable_key("1", str(i)), P.Item("1", f"q{i}", "a", "r")) for i in range(5)]
    one = S.keep_per_image(found, 1)
    assert len(one) == 1 and one == S.keep_per_image(list(reversed(found)), 1)
    assert len(S.keep_per_image(found, None)) == 5


def test_check_images(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    S.check_images([tmp_path / "a.png"], None)
    with pytest.raises(FileNotFoundError, match="1 of 2 images are missing, first: .*b.png"):
        S.check_images([tmp_path / "a.png", tmp_path / "b.png"], None)
    with pytest.raises(FileNotFoundError, match="image folder"):
        S.check_images([], tmp_path / "nope")
    with pytest.raises(ValueError, match="got the string"):
        S.as_tuple("left", "relations")
