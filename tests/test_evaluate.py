"""Accuracy with a vector: cached injection (mmfv.injection.Stems) gives the accuracies of the
reference path (hooks.add_to_layer on a full forward), prediction for prediction."""

from __future__ import annotations

import pytest
import torch

from mmfv import evaluate, injection
from mmfv import prompts as P
from mmfv.data import synthetic
from mmfv.relations import CARDINAL as RELS
from mmfv.testing.tiny import SCENE, random_tiny


def _check(lmm, prompts, vectors, batch_size) -> tuple[list[float], int]:
    """Sweeps and per-prompt correctness, both paths; returns the last sweep and how many predictions
    the vectors changed (so that the comparison means something)."""
    stems = injection.Stems(lmm)
    plain, ans = evaluate.predictions(lmm, prompts, batch_size)
    changed = 0
    for v in vectors:
        ref = evaluate.layer_sweep(lmm, prompts, v, batch_size)
        got = evaluate.layer_sweep(lmm, prompts, v, batch_size, stems=stems)
        assert got == ref
        for layer in range(lmm.n_layers):  # prompt for prompt, not only the counts
            want = evaluate.predictions(lmm, prompts, batch_size, evaluate.with_vector(lmm, v, layer))[0]
            assert torch.equal(evaluate._correct_cached(lmm, prompts, v, layer, batch_size, evaluate.LOCAL, stems), want == ans)
            changed += int((want != plain).sum())
    for layer in range(lmm.n_layers):  # several vectors in one cached pass: the accuracies of one at a time
        assert evaluate.accuracies(lmm, prompts, vectors, layer, batch_size, stems=stems) == [
            evaluate.accuracy(lmm, prompts, v, layer, batch_size)["acc"] for v in vectors]
    assert stems.prepared == -(-len(prompts) // batch_size)  # each batch prepared once for every vector and layer
    return ref, changed


def test_cached_accuracies_equal_the_reference_on_a_random_model():
    lmm = random_tiny(seed=3)
    data = synthetic.items("val", 60, RELS, seed=0, config=SCENE)
    prompts = P.build("zero-shot", data["right"], data, 0, 24, 0)
    g = torch.Generator().manual_seed(0)
    vectors = [torch.randn(lmm.hidden_size, generator=g) * s for s in (1.0, 5.0)]
    _, changed = _check(lmm, prompts, vectors, batch_size=10)
    assert changed > 10


def test_cached_accuracies_equal_the_reference_on_shipped_mmfv_tiny():
    """The shipped model with a function vector-like direction: the answer embeddings' mean."""
    from mmfv.models import load_model
    from mmfv.settings import DataSettings

    lmm = load_model("tiny")
    items = DataSettings(val_scenes=60).items(lmm, "val", RELS)
    prompts = P.build("zero-shot", items["left"], items, 0, 40, 0)
    b = lmm.encode(prompts)
    direction = lmm.module.model.embed_tokens.weight[b.answer_ids].mean(0).detach()
    accs, changed = _check(lmm, prompts, [direction * 4.0], batch_size=16)
    assert changed > 10
    assert max(accs) > evaluate.accuracy(lmm, prompts)["acc"]  # it helps somewhere: the comparison means something


def test_accuracies_in_passes_of_at_most_rows(monkeypatch):
    lmm = random_tiny(seed=3)
    data = synthetic.items("val", 60, RELS, seed=0, config=SCENE)
    prompts = P.build("zero-shot", data["right"], data, 0, 12, 0)
    g = torch.Generator().manual_seed(1)
    vectors = [torch.randn(lmm.hidden_size, generator=g) * 3 for _ in range(5)]
    want = evaluate.accuracies(lmm, prompts, vectors, 1, 6)  # the reference: one at a time
    monkeypatch.setattr(evaluate, "ROWS", 12)  # 6 prompts x 2 vectors a pass
    assert evaluate.accuracies(lmm, prompts, vectors, 1, 6, stems=injection.Stems(lmm)) == want
    with pytest.raises(ValueError, match="shape"):
        evaluate.accuracies(lmm, prompts, [torch.zeros(3)], 1, 6, stems=injection.Stems(lmm))


def test_accuracy_without_a_vector_ignores_stems():
    lmm = random_tiny(seed=3)
    data = synthetic.items("val", 30, RELS, seed=0, config=SCENE)
    prompts = P.build("zero-shot", data["above"], data, 0, 8, 0)
    stems = injection.Stems(lmm)
    assert evaluate.accuracy(lmm, prompts, stems=stems) == evaluate.accuracy(lmm, prompts) and stems.prepared == 0
    with pytest.raises(ValueError, match="batch_size"):
        evaluate.accuracy(lmm, prompts, torch.zeros(lmm.hidden_size), 0, batch_size=0, stems=stems)
