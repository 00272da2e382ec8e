"""Retained ability: scoring with and without an injected vector, the targets, the summary."""

from __future__ import annotations

import pytest
import torch

from mmfv import evaluate, retain
from mmfv.data import synthetic
from mmfv.testing import random_tiny
from mmfv.testing.tiny import SCENE


@pytest.fixture(scope="module")
def lmm():
    return random_tiny(seed=3)


@pytest.fixture(scope="module")
def sets():
    test = synthetic.items("test", 40, ("above", "left"), seed=0, config=SCENE)
    return retain.prompt_sets(test, ["above", "left"], 2, 6, 0)


def test_sets_are_zero_shot_and_clean_icl(sets):
    assert set(sets) == {("above", "zero-shot"), ("above", "icl"), ("left", "zero-shot"), ("left", "icl")}
    assert all(p.kind == "zero-shot" and not p.demos for p in sets[("left", "zero-shot")])
    assert all(p.kind == "clean" and len(p.demos) == 2 and p.relation == "above" for p in sets[("above", "icl")])


def test_zero_vector_changes_nothing_and_a_large_one_does(lmm, sets):
    base = retain.scores(lmm, sets, None, 4)
    zero = retain.Injection("above", "extracted", torch.zeros(lmm.hidden_size), 1)
    assert retain.scores(lmm, sets, zero, 4) == base
    big = retain.Injection("above", "extracted", torch.randn(lmm.hidden_size, generator=torch.Generator().manual_seed(0)) * 1e3, 1)
    got = retain.scores(lmm, sets, big, 4)
    ref = {k: evaluate.accuracy(lmm, p, big.vector, 1, 4)["acc"] for k, p in sets.items()}
    assert got == ref  # the same numbers as the eval path
    preds = evaluate.predictions(lmm, sets[("left", "icl")], 4, evaluate.with_vector(lmm, big.vector, 1))[0]
    plain = evaluate.predictions(lmm, sets[("left", "icl")], 4)[0]
    assert not torch.equal(preds, plain)  # the injection reaches the model


def test_targets_are_other_relations_and_own_icl():
    i = retain.Injection("left", "tuned", torch.zeros(4), 0)
    assert retain.targets(i, ["above", "left", "right"]) == [("above", "zero-shot"), ("above", "icl"), ("right", "zero-shot"), ("right", "icl"), ("left", "icl")]
    d = retain.Injection("above_left", "composed", torch.zeros(4), 0)
    assert retain.targets(d, ["above", "left"])[-1] == ("above_left", "icl") and len(retain.targets(d, ["above", "left"])) == 5


def test_summary_names_the_largest_drop_in_plain_words():
    rows = [{"vector": "above", "kind": "extracted", "layer": 3, "target": "left", "prompts": "icl", "base": 0.97, "with": 0.41},
            {"vector": "above", "kind": "extracted", "layer": 3, "target": "right", "prompts": "zero-shot", "base": 0.5, "with": 0.48},
            {"vector": "above", "kind": "extracted", "layer": 3, "target": "above", "prompts": "icl", "base": 0.9, "with": 0.95}]
    s = retain.summary(rows, 4)
    assert s[0] == "Injecting above's extracted vector (layer 3) drops left's 4-shot ICL from 0.97 to 0.41."
    assert "1 of 3" in s[-1] and "+0.05" in s[1]
    assert retain.summary(rows[1:], 4) == ["No injected vector lowers any accuracy by more than 0.05."]


def test_cached_injection_agrees_with_the_reference(lmm, sets):
    from mmfv.injection import Stems

    g = torch.Generator().manual_seed(1)
    for layer in range(lmm.n_layers):
        inj = retain.Injection("above", "tuned", torch.randn(lmm.hidden_size, generator=g) * 20, layer)
        stems = Stems(lmm)
        assert retain.scores(lmm, sets, inj, 4, stems=stems) == retain.scores(lmm, sets, inj, 4)
        assert stems.prepared == sum(-(-len(p) // 4) for p in sets.values())  # each batch of each set prepared once
