"""mmfv-tiny's image key/value reuse (models/tiny/image_kv.py) against the full forward, the reference."""

from __future__ import annotations

import pytest
import torch

from mmfv import prompts as P
from mmfv.data import synthetic
from mmfv.models.tiny import adapter as A
from mmfv.testing.tiny import SCENE, random_tiny

RELS = ("above", "below", "left", "right")


@pytest.fixture(scope="module")
def lmm():
    return random_tiny(layers=3, image_attention="local")


@pytest.fixture(scope="module")
def data():
    return synthetic.items("test", 40, RELS, seed=0, config=SCENE)


def _mixed(data):
    """Rows of different lengths and image counts in one batch: 3-shot, corrupted 1-shot, zero-shot."""
    return (P.build("clean", data["left"], data, 3, 4, 0) + P.build("corrupted", data["above"], data, 1, 3, 1)
            + P.build("zero-shot", data["right"], data, 0, 2, 2))


def _both(lmm, fn):
    lmm.image_kv = False
    try:
        ref = fn()
    finally:
        lmm.image_kv = True
    return ref, fn()


@torch.no_grad()
def test_last_logits_equal_the_full_forward(lmm, data):
    batch = lmm.encode(_mixed(data))
    ref, fast = _both(lmm, lambda: lmm.last_logits(batch))
    scale = ref.abs().max()
    assert (fast - ref).abs().max() <= 1e-5 * scale
    assert torch.equal(fast.argmax(-1), ref.argmax(-1))


@torch.no_grad()
def test_prefix_cache_and_last_token_equal_the_full_forward(lmm, data):
    batch = lmm.encode(_mixed(data))
    ref, fast = _both(lmm, lambda: lmm.prefix(batch))
    for (rk, rv), (fk, fv) in zip(ref.cache, fast.cache):
        assert fk.shape == rk.shape
        assert (fk - rk).abs().max() <= 1e-5 * rk.abs().max() and (fv - rv).abs().max() <= 1e-5 * rv.abs().max()
    for k in ref.last_inputs:
        assert torch.equal(ref.last_inputs[k], fast.last_inputs[k])
    a, b = lmm.last(ref, 2), lmm.last(fast, 2)
    assert (a - b).abs().max() <= 1e-5 * a.abs().max()


def test_hooks_and_gradients_take_the_full_forward(lmm, data, monkeypatch):
    batch = lmm.encode(_mixed(data))
    calls = []
    real = A.text_forward
    monkeypatch.setattr(A, "text_forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.no_grad():
        lmm.last_logits(batch)
    assert calls == [1]  # plain scoring reuses the images
    seen = []
    h = lmm.o_proj(0).register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[1]))
    try:
        with torch.no_grad():
            lmm.last_logits(batch)
    finally:
        h.remove()
    assert calls == [1] and seen == [batch.length]  # a hook sees every position
    with torch.enable_grad():
        out = lmm.last_logits(batch)
    assert calls == [1] and out.requires_grad


def test_causal_image_attention_never_reuses_images(data, monkeypatch):
    lmm = random_tiny(image_attention="causal")
    monkeypatch.setattr(A, "text_forward", lambda *a, **k: pytest.fail("causal image attention: patches see earlier text"))
    with torch.no_grad():
        lmm.last_logits(lmm.encode(_mixed(data)))


@torch.no_grad()
def test_a_small_store_replaces_old_images_and_stays_exact(data):
    lmm = random_tiny(layers=3, image_attention="local")
    lmm._kv = A.KVStore(max_images=9)
    prompts = _mixed(data)
    for lo in range(0, len(prompts), 2):  # several small batches through a store smaller than their images
        batch = lmm.encode(prompts[lo:lo + 2])
        ref, fast = _both(lmm, lambda: lmm.last_logits(batch))
        assert (fast - ref).abs().max() <= 1e-5 * ref.abs().max()
    assert lmm._kv.buf.shape[2] == 9
    with pytest.raises(ValueError, match="exceeds the image key/value store"):
        lmm.last_logits(lmm.encode(prompts[:4]))


@torch.no_grad()
def test_shipped_model_scores_the_same():
    from mmfv.models import load_model

    lmm = load_model("tiny")
    test = synthetic.items("test", 80, RELS, seed=0, config=lmm.scene_config())
    batch = lmm.encode(P.build("clean", test["left"], test, 8, 16, 0))
    ref, fast = _both(lmm, lambda: lmm.last_logits(batch))
    assert (fast - ref).abs().max() <= 1e-4
    assert torch.equal(fast.argmax(-1), ref.argmax(-1))
