"""Fine-tuning: the model stays frozen byte for byte, selection never sees test, epochs resume."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from mmfv import evaluate
from mmfv import finetune as FT
from mmfv import prompts as P
from mmfv.data import synthetic
from mmfv.relations import CARDINAL as RELS
from mmfv.testing.tiny import SCENE, random_tiny


@pytest.fixture(scope="module")
def setup():
    lmm = random_tiny(seed=4)
    tr = synthetic.items("train", 80, RELS, seed=0, config=SCENE)
    va = synthetic.items("val", 40, RELS, seed=0, config=SCENE)
    train = P.build("zero-shot", tr["left"], tr, 0, 32, 0)
    val = P.build("zero-shot", va["left"], va, 0, 16, 0)
    return lmm, train, val


SET = FT.FinetuneSettings(epochs=4, batch_size=8, seed=0)


def test_model_stays_frozen_and_vector_learns(setup):
    lmm, train, val = setup
    before = FT.weights_digest(lmm)
    init = torch.zeros(lmm.hidden_size)
    res = FT.finetune(lmm, init, 1, train, val, SET)
    assert FT.weights_digest(lmm) == before
    assert not torch.equal(res.vector, init)
    assert res.curve[-1]["train_loss"] < res.curve[0]["train_loss"]
    assert 1 <= res.best_epoch <= SET.epochs
    assert res.best_val_acc == max(c["val_acc"] for c in res.curve)


@pytest.mark.parametrize("layer", [0, 1])
def test_cached_injection_trains_the_same_vector(setup, layer):
    """Cached fine-tuning (prefix and residuals prepared once, only layers > l per step) against the
    reference (a hook on a full forward): the same final vector to 1e-5, the same losses (5 decimals),
    val accuracies and chosen epoch; the model stays frozen."""
    lmm, train, val = setup
    before = FT.weights_digest(lmm)
    init = torch.randn(lmm.hidden_size, generator=torch.Generator().manual_seed(1))
    ref = FT.finetune(lmm, init, layer, train, val, SET)
    got = FT.finetune(lmm, init, layer, train, val, dataclasses.replace(SET, cached=True))
    assert FT.weights_digest(lmm) == before
    assert (got.vector - ref.vector).abs().max() <= 1e-5
    assert not torch.equal(ref.vector, init)  # it trained
    assert got.curve == ref.curve and got.best_epoch == ref.best_epoch


def test_cached_checkpoints_are_their_own(setup, tmp_path, monkeypatch):
    """A cached run resumes from its own checkpoints exactly; the reference path refuses them (and the
    reference path's fingerprint is what it was before the cached path existed)."""
    lmm, train, val = setup
    cached = dataclasses.replace(SET, cached=True)
    full = FT.finetune(lmm, torch.zeros(lmm.hidden_size), 1, train, val, cached)
    ck = tmp_path / "ft.safetensors"
    real, calls = evaluate.accuracy, {"n": 0}

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(evaluate, "accuracy", dying)
    with pytest.raises(KeyboardInterrupt):
        FT.finetune(lmm, torch.zeros(lmm.hidden_size), 1, train, val, cached, checkpoint=ck)
    monkeypatch.setattr(evaluate, "accuracy", real)
    resumed = FT.finetune(lmm, torch.zeros(lmm.hidden_size), 1, train, val, cached, checkpoint=ck)
    assert torch.equal(resumed.vector, full.vector) and resumed.curve == full.curve
    with pytest.raises(ValueError, match="belongs to other work"):
        FT.finetune(lmm, torch.zeros(lmm.hidden_size), 1, train, val, SET, checkpoint=ck)
    ref_ck = tmp_path / "ref.safetensors"
    FT.finetune(lmm, torch.zeros(lmm.hidden_size), 1, train, val, SET, checkpoint=ref_ck)
    from safetensors import safe_open

    with safe_open(str(ref_ck), "pt") as f:
        assert "cached" not in json.loads(f.metadata()["fingerprint"])["settings"]


def test_selection_sees_only_train_and_val(setup, monkeypatch):
    lmm, train, val = setup
    seen: set[str] = set()
    real = lmm.encode

    def spy(prompts):
        seen.update(i for p in prompts for i in p.image_ids)
        return real(prompts)

    monkeypatch.setattr(lmm, "encode", spy)
    FT.finetune(lmm, torch.zeros(lmm.hidden_size), 0, train, val, SET)
    FT.finetune(lmm, torch.zeros(lmm.hidden_size), 0, train, val, dataclasses.replace(SET, cached=True))
    allowed = {i for p in train + val for i in p.image_ids}
    assert seen and seen <= allowed
    assert not any(i.startswith("test-") for i in seen)


def test_resume_after_interruption_is_identical(setup, tmp_path, monkeypatch):
    lmm, train, val = setup
    full = FT.finetune(lmm, torch.zeros(lmm.hidden_size), 1, train, val, SET)
    ck = tmp_path / "ft.pt"
    real, calls = evaluate.accuracy, {"n": 0}

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(evaluate, "accuracy", dying)
    with pytest.raises(KeyboardInterrupt):
        FT.finetune(lmm, torch.zeros(lmm.hidden_size), 1, train, val, SET, checkpoint=ck)
    monkeypatch.setattr(evaluate, "accuracy", real)
    from mmfv.execution import Checkpoint

    assert Checkpoint(ck, {}).path.exists()
    with pytest.raises(ValueError, match="belongs to other work"):  # a checkpoint of other work is refused, never mixed in
        Checkpoint(ck, {"other": 1}).load()
    resumed = FT.finetune(lmm, torch.zeros(lmm.hidden_size), 1, train, val, SET, checkpoint=ck)
    assert torch.equal(resumed.vector, full.vector) and resumed.curve == full.curve


def test_checkpoint_payload_is_never_unpickled(setup, tmp_path):
    """A crafted pickle in place of a checkpoint is refused as unreadable; its code never runs."""
    import pickle

    lmm, train, val = setup
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    ck = tmp_path / "ft.safetensors"
    ck.write_bytes(pickle.dumps({"fingerprint": Evil()}))
    with pytest.raises(ValueError, match="unreadable"):
        FT.finetune(lmm, torch.zeros(lmm.hidden_size), 1, train, val, SET, checkpoint=ck)
    assert not marker.exists()


def test_bad_input(setup):
    lmm, train, val = setup
    z = torch.zeros(lmm.hidden_size)
    with pytest.raises(ValueError, match="out of range"):
        FT.finetune(lmm, z, lmm.n_layers, train, val, SET)
    with pytest.raises(ValueError, match="at least"):
        FT.finetune(lmm, z, 0, train[:3], val, SET)
    with pytest.raises(ValueError, match="never on test"):
        FT.finetune(lmm, z, 0, train, [], SET)
    with pytest.raises(ValueError, match="hidden size"):
        FT.finetune(lmm, torch.zeros(7), 0, train, val, SET)
