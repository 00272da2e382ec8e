"""Prompt builders: clean, corrupted and zero-shot; the Flamingo template; errors."""

from __future__ import annotations

import random

import pytest

from mmfv import prompts as P
from mmfv import relations as R
from mmfv.data import scenes as S


@pytest.fixture(scope="module")
def data():
    scenes = S.generate_split("test", 120, seed=0)
    return scenes, {r: P.items_from_scenes(scenes, r) for r in R.CARDINAL}


def test_clean(data):
    _, pools = data
    for p in P.build("clean", pools["left"], pools, 4, 30, 0):
        assert p.kind == "clean" and p.k == 4 and {d.relation for d in p.demos} == {"left"}
        assert p.query.image_id not in [d.image_id for d in p.demos]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("rel", R.CARDINAL)
def test_corrupted_never_shows_the_relation(data, rel, seed):
    scenes, pools = data
    by_id = {s.id: s for s in scenes}
    for p in P.build("corrupted", pools[rel], pools, 6, 10, seed):
        assert all(d.relation != rel for d in p.demos) and p.relation == rel
        for d in p.demos:  # every demo is real: its answer is that object in that scene
            assert by_id[d.image_id].answer(d.relation) == d.answer


def test_zero_shot_and_template(data):
    _, pools = data
    (z,) = P.build("zero-shot", pools["above"], pools, 0, 1, 0)
    assert z.k == 0 and P.FLAMINGO.render(z) == f"<image>Q: {z.query.query}. A:"
    (c,) = P.build("clean", pools["above"], pools, 3, 1, 0)
    text = P.FLAMINGO.render(c)
    assert text.count("<image>") == 4 and text.count("<|endofchunk|>") == 3
    d0 = c.demos[0]
    assert text.startswith(f"<image>Q: {d0.query}. A: {d0.answer}.<|endofchunk|><image>")
    assert P.FLAMINGO.answer_text(c) == " " + c.answer


def test_build_is_deterministic_and_shares_queries(data):
    _, pools = data
    a = P.build("clean", pools["right"], pools, 2, 12, 7)
    assert a == P.build("clean", pools["right"], pools, 2, 12, 7)
    b = P.build("corrupted", pools["right"], pools, 5, 12, 7)
    assert [p.query for p in a] == [p.query for p in b]


def test_errors(data):
    scenes, pools = data
    with pytest.raises(P.PromptError, match="only"):
        P.clean(pools["left"][0], pools["left"][:3], 5, random.Random(0))
    with pytest.raises(R.UnknownRelationError):
        P.items_from_scenes(scenes, "up")
    lacking = next(s for s in scenes if not s.has("below"))
    with pytest.raises(S.MissingRelationError):
        P.item_from_scene(lacking, "below")
    with pytest.raises(P.PromptError, match="positive"):
        P.build("clean", pools["left"], pools, 1, 0, 0)
