"""Cached injection: prepared prompt batches (prefix KV cache + last-token residuals) reused by content,
within a memory budget; a K-vector call equals K one-vector calls."""

from __future__ import annotations

import pytest
import torch

from mmfv import injection
from mmfv import prompts as P
from mmfv.data import synthetic
from mmfv.relations import CARDINAL as RELS
from mmfv.testing.tiny import SCENE, random_tiny

TOL = 1e-5  # logits of two paths that compute the same thing


@pytest.fixture(scope="module")
def setup():
    lmm = random_tiny(seed=2)
    data = synthetic.items("test", 40, RELS, seed=0, config=SCENE)
    zs = P.build("zero-shot", data["left"], data, 0, 6, 0)
    clean = P.build("clean", data["above"], data, 2, 3, 0)
    return lmm, zs, clean


def test_stems_prepare_each_batch_once(setup, monkeypatch):
    lmm, zs, clean = setup
    stems = injection.Stems(lmm)
    encoded = []
    real = lmm.encode
    monkeypatch.setattr(lmm, "encode", lambda ps: encoded.append(len(ps)) or real(ps))
    a = stems.get(zs[:3])
    assert stems.get(list(zs[:3])) is a  # same content, another list object: the same stem
    b = stems.get(zs[3:])
    assert b is not a and encoded == [3, 3] and stems.prepared == 2 and len(stems) == 2
    assert stems.bytes == a.nbytes() + b.nbytes() > 0
    assert sorted(a.residuals) == list(range(lmm.n_layers)) and a.residuals[0].shape == (3, lmm.hidden_size)
    stems.clear()
    assert len(stems) == 0 and stems.bytes == 0


def test_stems_stay_within_their_budget(setup):
    lmm, zs, clean = setup
    one = injection.Stems(lmm).get(zs[:2]).nbytes()
    stems = injection.Stems(lmm, max_bytes=int(one * 1.5))
    first = stems.get(zs[:2])
    stems.get(zs[2:4])  # does not fit beside the first: the least recently used goes
    assert len(stems) == 1 and stems.bytes <= stems.max_bytes
    assert stems.get(zs[:2]) is not first and stems.prepared == 3
    tiny = injection.Stems(lmm, max_bytes=1)
    tiny.get(zs[:2])
    assert len(tiny) == 0 and tiny.bytes == 0  # too big to keep: used once, never stored


def test_prompts_key_is_the_encoded_content(setup):
    lmm, zs, clean = setup
    assert injection.prompts_key(lmm, zs[:2]) == injection.prompts_key(lmm, list(zs[:2]))
    assert injection.prompts_key(lmm, zs[:2]) != injection.prompts_key(lmm, zs[1:3])
    assert injection.prompts_key(lmm, zs[:2]) != injection.prompts_key(lmm, zs[1::-1])  # order matters (rows)


@torch.no_grad()
def test_k_vectors_in_one_call_equal_one_call_each(setup):
    lmm, zs, clean = setup
    stem = injection.Stems(lmm).get(clean + zs[:2])
    vecs = torch.randn(3, lmm.hidden_size, generator=torch.Generator().manual_seed(0))
    B = stem.batch.size
    for layer in range(lmm.n_layers):
        many = stem.logits(lmm, layer, vecs, scale=0.5).view(B, 3, -1)
        each = torch.stack([stem.logits(lmm, layer, v, scale=0.5) for v in vecs], 1)
        assert (many - each).abs().max() <= TOL, layer
