"""Novel-object items: synthetic answers are all held-out classes; real data keeps the test items
whose answer no eval/train/val item has."""

from __future__ import annotations

from types import SimpleNamespace

from mmfv.data import novel
from mmfv.data import scenes as S
from mmfv.prompts import Item
from mmfv.testing import random_tiny


def _it(answer: str, rel: str = "left", img: str = "i") -> Item:
    return Item(img, "q", answer, rel)


def test_held_out_keeps_only_unseen_answers():
    test = {"left": [_it("cat"), _it("dog")], "above": [_it("cow", "above"), _it("cat", "above")]}
    seen = [{"left": [_it("dog")]}, {"above": [_it("cat", "above")]}]
    got = novel.held_out(test, seen)
    assert got["left"] == []  # cat and dog are both answers elsewhere
    assert [i.answer for i in got["above"]] == ["cow"]


def test_synthetic_novel_answers_are_held_out_classes():
    lmm = random_tiny()
    data = SimpleNamespace(dataset="synthetic", seed=0)
    items, how = novel.items(data, lmm, ("above", "left"), 30)
    assert "novel_objects" in how and all(items[r] for r in ("above", "left"))
    assert {i.answer for its in items.values() for i in its} <= set(S.HELD_OUT)
    assert all(i.query in S.TRAIN_OBJECTS for its in items.values() for i in its)
