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


def test_malformed_relation_in_a_query():
    for bad in ("Up Down", "left-of", ""):
        q = _fake("q", "cat", "dog", bad)
        for fn in (lambda: P.clean(q, [], 0, random.Random(0)), lambda: P.corrupted(q, {}, 0, random.Random(0)),
                   lambda: P.zero_shot(q)):
            with pytest.raises(R.UnknownRelationError, match=repr(bad)):
                fn()
    # any lower_case name is a relation: scene-graph predicates, the user's own tasks
    assert P.zero_shot(_fake("q", "man", "horse", "riding")).relation == "riding"
    assert P.zero_shot(_fake("q", "hot", "cold", "antonym")).relation == "antonym"


# ---------------------------------------------------------------- text-only items

def test_text_only_items_render_without_image_tokens():
    demos = tuple(P.Item(P.text_id(q), q, a, "antonym") for q, a in (("hot", "cold"), ("up", "down")))
    query = P.Item(P.text_id("big"), "big", "small", "antonym")
    p = P.Prompt(demos, query, "clean")
    assert not query.has_image and query.image_id == "text:big"
    assert P.FLAMINGO.render(p) == "Q: hot. A: cold.<|endofchunk|>Q: up. A: down.<|endofchunk|>Q: big. A:"
    assert P.FU2025.render(p) == "Q:hot. A:cold.<|endofchunk|>\nQ:up. A:down.<|endofchunk|>\nQ:big. A:"
    assert p.images() == []
    with pytest.raises(ValueError, match="text-only"):
        query.load_image()
    # a prompt mixing both keeps image tokens and images aligned
    mixed = P.Prompt((_fake("a", "cat", "dog", "antonym"),), query, "clean")
    assert P.FLAMINGO.render(mixed).count("<image>") == len(mixed.images()) == 1
    # demonstrations never share the query's text id: the query's own pair is not a demo
    pool = [P.Item(P.text_id(q), q, "x", "antonym") for q in ("big", "tall", "wide")]
    for seed in range(10):
        assert all(d.query != "big" for d in P.clean(query, pool, 2, random.Random(seed)).demos)


# ---------------------------------------------------------------- Fu et al. (2025)

def test_fu2025_openflamingo_prompt_is_byte_identical_to_the_papers_code():
    # Literal derived from fushuhao6/Multimodal-Function-Vector, dataset/utils.py, construct_question
    # (flamingo branch): each demo is f"<image>Q:{s}. A:{o}.<|endofchunk|>", the demos are joined by
    # "\n", a "\n" follows them, then f"<image>Q:{query_obj}. A:".
    p = P.Prompt((_fake("1", "man", "phone", "holding"), _fake("2", "woman", "hat", "holding")),
                 _fake("3", "boy", "ball", "holding"), "clean")
    assert P.FU2025.render(p) == "<image>Q:man. A:phone.<|endofchunk|>\n<image>Q:woman. A:hat.<|endofchunk|>\n<image>Q:boy. A:"
    # zero-shot (their output_zero_shot / num_context=0): no demos, no newline
    assert P.FU2025.render(P.zero_shot(p.query)) == "<image>Q:boy. A:"
    # utils/utils.py, get_answer_id: the answer is tokenized right after "A:", no space
    assert P.FU2025.answer_text(p) == "ball"


def test_fu2025_qwen_messages_match_the_papers_code():
    # dataset/utils.py, construct_question (qwen branch): system message, then one user turn of
    # image / "Q:s. A:o.\n" per demo, then the query image and "Q:q. A:".
    p = P.Prompt((_fake("1", "man", "phone", "holding"),), _fake("3", "boy", "ball", "holding"), "clean")
    assert P.fu2025_chat(p) == [
        {"role": "system", "content": [{"type": "text", "text": "Use the following template to answer the question:\nQ:object1. A:object2"}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q:man. A:phone.\n"},
                                     {"type": "image"}, {"type": "text", "text": "Q:boy. A:"}]},
    ]


def _anchors(p: P.Prompt) -> list[tuple[str, str]]:
    return sorted((d.image_id, d.query) for d in p.demos)


@pytest.mark.parametrize("rel", R.CARDINAL)
def test_fu2025_corrupted_rotates_answers_on_the_clean_demos(pools, rel):
    use = {r: pools[r] for r in R.CARDINAL}
    clean = P.build("clean", pools[rel], use, 4, 12, 5, protocol="fu2025")
    corr = P.build("corrupted", pools[rel], use, 4, 12, 5, protocol="fu2025")
    orders = set()
    for c, x in zip(clean, corr):
        assert x.kind == "corrupted" and x.query == c.query and x.k == 4
        assert _anchors(x) == _anchors(c)  # same demo images and query objects
        # demo i of the clean prompt answers in relation i (above, below, left, right), then all are permuted
        by_image = {d.image_id: d.relation for d in x.demos}
        assert [by_image[d.image_id] for d in c.demos] == list(R.CARDINAL)
        for d in x.demos:
            _is_real(d)
        orders.add(tuple(d.relation for d in x.demos))
        assert rel in {d.relation for d in x.demos}  # with k = 4 the query's relation is shown once
    assert len(orders) > 3
    for c in clean:  # clean demos come from scenes with all four neighbours
        assert all(all(d.image.has(r) for r in R.CARDINAL) for d in c.demos)


def test_fu2025_corrupted_with_fewer_demos_and_errors(pools):
    use = {r: pools[r] for r in R.CARDINAL}
    for p in P.build("corrupted", pools["right"], use, 2, 6, 0, protocol="fu2025"):
        assert sorted(d.relation for d in p.demos) == ["above", "below"]  # zip(in_context, rel_cols)
    with pytest.raises(P.PromptError, match="k=5 is more"):
        P.build("corrupted", pools["right"], use, 5, 2, 0, protocol="fu2025")
    lacking = next(it for it in pools["left"] if not it.image.has("above"))
    base = P.Prompt((lacking,), pools["right"][0], "clean")
    with pytest.raises(P.PromptError, match="no 'above' answer"):
        P.corrupted_fu2025(base, use, random.Random(0))
    with pytest.raises(P.PromptError, match="unknown prompt protocol"):
        P.build("clean", pools["left"], use, 1, 1, 0, protocol="paper")
    with pytest.raises(P.PromptError, match="use corrupted"):
        P.corrupted_fu2025(base, use, random.Random(0), protocol="mmfv")
    single = P.corrupted(pools["left"][0], use, 3, random.Random(1), protocol="fu2025")
    assert single.k == 3 and sorted(d.relation for d in single.demos) == ["above", "below", "left"]


@pytest.mark.parametrize("seed", range(4))
def test_fu2025_gqa_round_robin_from_unused_images(pools, seed):
    use = {r: pools[r] for r in R.CARDINAL}
    clean = P.build("clean", pools["left"], use, 3, 10, seed, protocol="fu2025_gqa")
    assert clean == P.build("clean", pools["left"], use, 3, 10, seed)  # clean prompts are mmfv's
    shown_query_relation = False
    for c, x in zip(clean, P.build("corrupted", pools["left"], use, 3, 10, seed, protocol="fu2025_gqa")):
        assert x.query == c.query and x.k == 3
        used = {d.image_id for d in c.demos} | {c.query.image_id}
        ids = [d.image_id for d in x.demos]
        assert not set(ids) & used and len(set(ids)) == 3
        assert len({d.relation for d in x.demos}) == 3  # 3 steps of a permutation of 4 relations
        shown_query_relation |= "left" in {d.relation for d in x.demos}
        for d in x.demos:
            _is_real(d)
    assert shown_query_relation  # the paper's round robin includes the query's relation
    with pytest.raises(P.PromptError, match="found only"):
        P.build("corrupted", pools["left"][:3], {"left": pools["left"][:3]}, 2, 1, seed, protocol="fu2025_gqa")


def test_mmfv_stays_the_default_protocol(pools):
    use = {r: pools[r] for r in R.CARDINAL}
    for kind in P.KINDS:
        assert P.build(kind, pools["above"], use, 3, 8, 2) == P.build(kind, pools["above"], use, 3, 8, 2, protocol="mmfv")
    for p in P.build("corrupted", pools["above"], use, 5, 8, 2):
        assert "above" not in {d.relation for d in p.demos}
