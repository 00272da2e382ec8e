"""Prompt builders: clean, corrupted and zero-shot; the Flamingo template; determinism; errors."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from mmfv import prompts as P
from mmfv import relations as R
from mmfv.data import scenes as S


@pytest.fixture(scope="module")
def scenes():
    return S.generate_split("test", 150, seed=0)


@pytest.fixture(scope="module")
def pools(scenes):
    return {r: P.items_from_scenes(scenes, r) for r in R.SPATIAL}


def _is_real(it: P.Item) -> None:
    """The item's answer is the object standing in its relation to its query, in its own scene."""
    sc = it.image
    assert isinstance(sc, S.Scene) and sc.id == it.image_id
    assert it.query == sc.query.name
    assert sc.answer(it.relation) == it.answer
    o = sc.neighbours[it.relation]
    dr, dc = R.offset(it.relation)
    assert (o.row - sc.query.row, o.col - sc.query.col) == (dr, dc)


def _fake(image_id: str, query: str, answer: str, relation: str) -> P.Item:
    return P.Item(image_id, query, answer, relation, Image.new("RGB", (4, 4)))


# ---------------------------------------------------------------- items

@pytest.mark.parametrize("rel", R.SPATIAL)
def test_items_from_scenes(scenes, pools, rel):
    items = pools[rel]
    assert [it.image_id for it in items] == [s.id for s in scenes if s.has(rel)]
    assert len(items) > 10
    for it in items:
        _is_real(it)
        assert it.relation == rel
        assert set(it.candidates) == {o.name for o in it.image.objects} and it.answer in it.candidates
        assert it.load_image() is it.image.image


def test_item_from_scene(scenes, pools):
    sc = next(s for s in scenes if s.has("below_left"))
    it = P.item_from_scene(sc, "below_left")
    assert it == next(i for i in pools["below_left"] if i.image_id == sc.id)
    lacking = next(s for s in scenes if not s.has("right"))
    with pytest.raises(S.MissingRelationError, match="right"):
        P.item_from_scene(lacking, "right")
    with pytest.raises(R.UnknownRelationError):
        P.item_from_scene(sc, "up")
    with pytest.raises(R.UnknownRelationError):
        P.items_from_scenes(scenes, "up")


def test_item_images_from_path_and_pil(tmp_path, scenes):
    arr = np.asarray(scenes[0].image)
    scenes[0].image.save(tmp_path / "a.png")
    from_path = P.Item("a", "q", "a", "left", tmp_path / "a.png").load_image()
    from_str = P.Item("a", "q", "a", "left", str(tmp_path / "a.png")).load_image()
    from_pil = P.Item("a", "q", "a", "left", scenes[0].image).load_image()
    for im in (from_path, from_str, from_pil):
        assert im.mode == "RGB" and np.array_equal(np.asarray(im), arr)


# ---------------------------------------------------------------- clean

@pytest.mark.parametrize("rel", R.SPATIAL)
@pytest.mark.parametrize("k", [1, 4, 8])
def test_clean(pools, rel, k):
    ps = P.build("clean", pools[rel], pools, k, 25, seed=k)
    assert len(ps) == 25
    for p in ps:
        assert p.kind == "clean" and p.k == k and len(p.demos) == k
        assert p.relation == rel == p.query.relation and p.answer == p.query.answer
        assert all(d.relation == rel for d in p.demos)
        ids = [d.image_id for d in p.demos]
        assert p.query.image_id not in ids and len(set(ids)) == k
        for it in p.items:
            _is_real(it)


def test_clean_never_uses_the_query_image_even_when_it_is_most_of_the_pool(pools):
    pool = pools["left"][:3]
    q = pool[0]
    for seed in range(20):
        p = P.clean(q, pool, 2, random.Random(seed))
        assert sorted(d.image_id for d in p.demos) == sorted(it.image_id for it in pool[1:])


def test_clean_refuses_other_relations_in_its_pool(pools):
    with pytest.raises(P.PromptError, match="'right'"):
        P.clean(pools["left"][0], pools["left"][1:5] + pools["right"][:1], 2, random.Random(0))


# ---------------------------------------------------------------- corrupted

@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("rel", R.SPATIAL)
def test_corrupted_never_shows_the_query_relation(pools, rel, seed):
    use = {r: pools[r] for r in (R.CARDINAL if rel in R.CARDINAL else R.SPATIAL)}
    others = [r for r in use if r != rel]
    for k in (1, 5, 10):
        for p in P.build("corrupted", pools[rel], use, k, 6, seed):
            assert p.kind == "corrupted" and p.k == k and p.relation == rel
            rels = [d.relation for d in p.demos]
            assert rel not in rels
            assert set(rels) <= set(others)
            counts = Counter(rels)
            # relations are cycled: each appears about equally often
            assert max(counts.values()) - min(counts.get(r, 0) for r in others) <= 1
            ids = [d.image_id for d in p.demos]
            assert len(set(ids)) == k and p.query.image_id not in ids
            for d in p.demos:
                _is_real(d)
            _is_real(p.query)


def test_corrupted_demos_are_shuffled(pools):
    use = {r: pools[r] for r in R.CARDINAL}
    orders = {tuple(d.relation for d in p.demos) for p in P.build("corrupted", pools["left"], use, 6, 40, 0)}
    assert len(orders) > 5
    # the whole list is shuffled, not cycle by cycle: a relation may repeat among the first three
    assert any(len(set(o[:3])) < 3 for o in orders)


def test_corrupted_with_only_the_query_relation(pools):
    q = pools["above"][0]
    with pytest.raises(P.PromptError, match="another relation"):
        P.corrupted(q, {"above": pools["above"]}, 3, random.Random(0))
    with pytest.raises(P.PromptError, match="another relation"):
        P.corrupted(q, {"above": pools["above"], "below": []}, 3, random.Random(0))
    assert P.corrupted(q, {"above": pools["above"]}, 0, random.Random(0)).demos == ()


def test_corrupted_runs_out_of_items(pools):
    q = pools["above"][0]
    small = {"above": pools["above"], "left": pools["left"][:2]}
    with pytest.raises(P.PromptError, match="lower k"):
        P.corrupted(q, small, 3, random.Random(0))


# ---------------------------------------------------------------- zero-shot

def test_zero_shot(pools):
    ps = P.build("zero-shot", pools["right"], pools, 5, 10, 0)  # k is ignored: no demonstrations
    for p in ps:
        assert p.kind == "zero-shot" and p.demos == () and p.k == 0 and p.items == (p.query,)
        assert P.FLAMINGO.render(p) == f"<image>Q: {p.query.query}. A:"
    assert P.zero_shot(pools["left"][0]).demos == ()


# ---------------------------------------------------------------- template

def test_flamingo_format_exactly():
    d = _fake("a", "cat", "dog", "left")
    q = _fake("b", "red circle", "blue bar", "left")
    p = P.Prompt((d,), q, "clean")
    assert P.FLAMINGO.render(p) == "<image>Q: cat. A: dog.<|endofchunk|><image>Q: red circle. A:"
    assert P.FLAMINGO.answer_text(p) == " blue bar"
    assert p.segments() == [("cat", "dog"), ("red circle", "")]


@pytest.mark.parametrize("kind", P.KINDS)
@pytest.mark.parametrize("k", [0, 1, 3, 8])
def test_render_places_one_image_token_per_item(pools, kind, k):
    (p,) = P.build(kind, pools["below"], pools, k, 1, seed=k)
    n = 0 if kind == "zero-shot" else k
    text = P.FLAMINGO.render(p)
    assert text.count("<image>") == n + 1 == len(p.images())
    assert text.count("<|endofchunk|>") == n
    parts = text.split("<image>")
    assert parts[0] == ""
    for part, d in zip(parts[1:-1], p.demos):
        assert part == f"Q: {d.query}. A: {d.answer}.<|endofchunk|>"
    assert parts[-1] == f"Q: {p.query.query}. A:"
    # images come in the order of the image tokens
    for im, it in zip(p.images(), p.items):
        assert np.array_equal(np.asarray(im), np.asarray(it.image.image))
    assert p.image_ids == [it.image_id for it in p.items]


def test_other_template(pools):
    t = P.Template(image_token="<img>", prefix="<s>", demo="User:{image}{query}?\nBot: {answer}{eoc}\n",
                   query="User:{image}{query}?\nBot:", eoc="<end>")
    (p,) = P.build("clean", pools["left"], pools, 2, 1, 0)
    text = t.render(p)
    d0, d1 = p.demos
    assert text == (f"<s>User:<img>{d0.query}?\nBot: {d0.answer}<end>\n"
                    f"User:<img>{d1.query}?\nBot: {d1.answer}<end>\nUser:<img>{p.query.query}?\nBot:")
    assert "<image>" not in text


# ---------------------------------------------------------------- build

@pytest.mark.parametrize("kind", P.KINDS)
def test_build_is_deterministic_in_seed(pools, kind):
    a = P.build(kind, pools["right"], pools, 3, 15, 7)
    b = P.build(kind, pools["right"], pools, 3, 15, 7)
    assert a == b
    assert [P.FLAMINGO.render(p) for p in a] == [P.FLAMINGO.render(p) for p in b]
    c = P.build(kind, pools["right"], pools, 3, 15, 8)
    assert [p.query.image_id for p in a] != [p.query.image_id for p in c]
    if kind != "zero-shot":
        assert [p.demos for p in a] != [p.demos for p in c]


def test_build_shares_queries_across_kinds_and_cycles(pools):
    qs = pools["above"]
    clean = P.build("clean", qs, pools, 2, 12, 3)
    corr = P.build("corrupted", qs, pools, 5, 12, 3)
    zs = P.build("zero-shot", qs, pools, 0, 12, 3)
    assert [p.query for p in clean] == [p.query for p in corr] == [p.query for p in zs]
    many = P.build("zero-shot", qs, pools, 0, len(qs) + 4, 3)
    ids = [p.query.image_id for p in many]
    assert set(ids[: len(qs)]) == {q.image_id for q in qs}  # every query once before any repeats
    assert ids[len(qs) :] == ids[:4]


def test_build_errors(pools):
    with pytest.raises(P.PromptError, match="unknown prompt kind"):
        P.build("dirty", pools["left"], pools, 1, 1, 0)
    for n in (0, -1):
        with pytest.raises(P.PromptError, match="positive"):
            P.build("clean", pools["left"], pools, 1, n, 0)
    with pytest.raises(P.PromptError, match="no query items"):
        P.build("clean", [], pools, 1, 1, 0)
    for kind in ("clean", "corrupted"):
        with pytest.raises(P.PromptError, match="k must be >= 0"):
            P.build(kind, pools["left"], pools, -1, 1, 0)
    with pytest.raises(P.PromptError, match="lower k"):
        P.build("clean", pools["left"], {"left": pools["left"][:4]}, 5, 1, 0)
    with pytest.raises(P.PromptError, match="lower k"):
        P.build("clean", pools["left"], {}, 1, 1, 0)


def test_k_larger_than_the_pool():
    q = _fake("q", "cat", "dog", "left")
    pool = [_fake(f"p{i}", "cat", "dog", "left") for i in range(3)]
    with pytest.raises(P.PromptError, match="k=4 .* only 3"):
        P.clean(q, pool, 4, random.Random(0))
    with pytest.raises(P.PromptError, match="only 2"):
        P.clean(q, [*pool[:2], q], 3, random.Random(0))  # the query's own image does not count
    assert P.clean(q, pool, 3, random.Random(0)).k == 3


def test_unknown_relation_in_a_query():
    q = _fake("q", "cat", "dog", "up")
    for fn in (lambda: P.clean(q, [], 0, random.Random(0)), lambda: P.corrupted(q, {}, 0, random.Random(0)),
               lambda: P.zero_shot(q)):
        with pytest.raises(R.UnknownRelationError, match="'up'"):
            fn()
    assert P.zero_shot(_fake("q", "man", "horse", "riding")).relation == "riding"
