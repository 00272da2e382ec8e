"""Composition and analogy arithmetic, with provenance."""

from __future__ import annotations

import pytest
import torch

from mmfv import compose as C
from mmfv import relations as R
from mmfv.testing import random_tiny, random_vectors


@pytest.fixture(scope="module")
def fvs():
    return random_vectors(random_tiny(seed=5), R.CARDINAL)


def test_composed_is_weighted_sum_with_provenance(fvs):
    c = C.composed(fvs, "above_left", 0.5, 2.0)
    assert torch.allclose(c.vector, 0.5 * fvs["above"].vector + 2.0 * fvs["left"].vector)
    assert c.relation == "(0.5*above + 2*left)"
    assert {tuple(h) for h in c.heads} == set(fvs["above"].heads) | set(fvs["left"].heads)
    assert [o["extra"]["operands"][0]["relation"] for o in c.extra["operands"]] == ["above", "left"]


def test_not_composable_and_missing(fvs):
    with pytest.raises(ValueError, match="not composable"):
        C.composed(fvs, "left")
    with pytest.raises(ValueError, match="missing left"):
        C.composed({"above": fvs["above"]}, "above_left")


def test_analogy_items_obey_offsets():
    items = C.analogy_items()
    assert ("left", "above_left", "right", "above_right") in items
    for a, b, c, d in items:
        assert a != b and a != c
        off = [R.offset(x) for x in (a, b, c, d)]
        assert (off[1][0] - off[0][0] + off[2][0], off[1][1] - off[0][1] + off[2][1]) == off[3]
    assert C.analogy_items(R.CARDINAL, R.CARDINAL) and all(x[3] in R.CARDINAL for x in C.analogy_items(R.CARDINAL, R.CARDINAL))


def test_analogy_vector(fvs):
    v = C.analogy_vector(fvs, "left", "above_left", "right")
    expect = (fvs["above"].vector + fvs["left"].vector) - fvs["left"].vector + fvs["right"].vector
    assert torch.allclose(v.vector, expect, atol=1e-6)


def test_compose_stage_chooses_on_val_and_reports_on_test(fvs, tmp_path, monkeypatch):
    """Every choice (composition layer, (a, b) grid point, tuned-composition layer, analogy layers)
    is made on val prompts; test prompts are only ever run at the chosen layers."""
    from mmfv import config as C
    from mmfv import evaluate
    from mmfv.stages import compose
    from mmfv.stages.base import Context

    lmm = random_tiny(seed=5)
    calls = []  # (split, layer) of every accuracy evaluation with a vector
    real = evaluate.accuracy

    def spy(lmm_, prompts, vector=None, layer=None, batch_size=64, ex=None, stems=None):
        splits = {i.split("-")[0] for p in prompts for i in p.image_ids}
        assert len(splits) == 1
        if vector is not None:
            calls.append((splits.pop(), layer))
        return real(lmm_, prompts, vector, layer, batch_size, ex, stems)

    for folder in ("vectors", "finetune/vectors"):
        for r, fv in fvs.items():
            fv.save(tmp_path / folder / f"{r}.safetensors")
    monkeypatch.setattr(evaluate, "accuracy", spy)
    cfg = C.from_dict({"data": {"val_scenes": 60, "test_scenes": 60}, "compose": {"grid": [1.0, 2.0], "shots": [1], "n": 6, "direct": False}})
    res = compose.run(Context(cfg, tmp_path, _lmm=lmm))
    chosen = {v["layer"] for v in res["relations"].values()} | {v["layer_tuned"] for v in res["relations"].values()}
    chosen |= {a["layer"] for a in res["analogies"].values()}
    assert {s for s, _ in calls} == {"val", "test"}
    assert {l for s, l in calls if s == "test"} <= chosen
    for v in res["relations"].values():  # the one-shot source example is a val item
        assert v["source_example"]["image"].startswith("val") and tuple(v["source_choice"]) in {(a, b) for a in (1.0, 2.0) for b in (1.0, 2.0)}
    for a in res["analogies"].values():
        assert a["layer"] == max(range(lmm.n_layers), key=lambda l: (a["val_by_layer"][l], -l))


def test_answer_kinds_sort_predictions_by_what_they_name():
    """Each prediction lands in one category; shares sum to 1."""
    import types

    from mmfv import prompts as P

    def prompt(image, query, answer):
        return types.SimpleNamespace(items=[P.Item(image, query, answer, "above_left", None)])

    nb = {("i1", "q"): {"above": "a", "left": "l", "right": "r", "above_left": "d"}, ("i2", "q"): {"above_left": "d"}}
    prompts = [prompt("i1", "q", "d")] * 5 + [prompt("i2", "q", "d")]
    tok = {"d": 1, "a": 2, "l": 3, "q": 4, "r": 5}.get
    got = C.answer_kinds("above_left", prompts, [1, 2, 3, 4, 5, 9], nb, tok)
    assert got == {"diagonal (correct)": round(1 / 6, 4), "vertical neighbour": round(1 / 6, 4), "horizontal neighbour": round(1 / 6, 4),
                   "query itself": round(1 / 6, 4), "other neighbour": round(1 / 6, 4), "elsewhere": round(1 / 6, 4)}
    with pytest.raises(ValueError):
        C.answer_kinds("above", prompts, [1] * 6, nb, tok)


def test_source_weights_cached_and_reference_agree_and_pick_the_most_probable_pair(fvs):
    """The one-shot source weights: the grid pair under which the source example's answer is most
    probable; cached injection and the hooked full forward give the same probabilities."""
    from mmfv import evaluate
    from mmfv import prompts as P
    from mmfv.data import scenes as S
    from mmfv.injection import Stems

    lmm = random_tiny(seed=5)
    scenes = S.generate({"val": 30}, seed=0, config=lmm.scene_config())["val"]
    val = {r: P.items_from_scenes(scenes, r) for r in R.SPATIAL}
    source = P.build("clean", val["above_left"], val, 1, 1, 1)[0]
    grid = [0.5, 1.0, 4.0]
    ref_pair, ref = C.source_weights(lmm, source, fvs, "above_left", 1, grid)
    got_pair, got = C.source_weights(lmm, source, fvs, "above_left", 1, grid, Stems(lmm))
    assert got_pair == ref_pair and set(got) == {f"{a:g},{b:g}" for a in grid for b in grid}
    assert max(abs(got[k] - ref[k]) for k in ref) <= 1e-5
    assert got[f"{got_pair[0]:g},{got_pair[1]:g}"] == max(got.values())
    # the recorded probability is the answer's under that pair's vector
    batch = lmm.encode([source])
    with torch.no_grad(), evaluate.with_vector(lmm, C.composed(fvs, "above_left", 4.0, 0.5).vector, 1)(1):
        p = float(lmm.last_logits(batch).softmax(-1)[0, batch.answer_ids[0]])
    assert abs(ref["4,0.5"] - round(p, 5)) <= 1e-5
