"""CMA: the fast engine equals the published reference algorithm; checkpoints resume exactly."""

from __future__ import annotations

import json

import pytest
import torch

from mmfv import cma, rsa
from mmfv import prompts as P
from mmfv.relations import CARDINAL as RELS
from mmfv.testing.tiny import SCENE, random_tiny
from mmfv.data import synthetic


@pytest.fixture(scope="module")
def setup():
    lmm = random_tiny(seed=1)
    data = synthetic.items("test", 80, RELS, seed=0, config=SCENE)
    clean = P.build("clean", data["left"], data, 3, 8, 0)
    corrupt = P.build("corrupted", data["left"], data, 3, 4, 1)
    return lmm, clean, corrupt


@pytest.mark.parametrize("engine", ["fast", "skip"])
def test_fast_engines_equal_reference(setup, engine):
    lmm, clean, corrupt = setup
    fast = cma.run_cma(lmm, clean, corrupt, engine=engine, batch_size=3, heads_per_batch=5)
    ref = cma.run_cma(lmm, clean, corrupt, engine="reference")
    assert fast.ie.shape == (4, lmm.n_layers, lmm.n_heads) and fast.engine == engine
    assert (fast.ie - ref.ie).abs().max() <= 1e-5
    assert (fast.aie - ref.aie).abs().max() <= 1e-5
    assert ref.ie.abs().max() > 1e-4  # effects are not all zero: the comparison means something


def test_skip_runs_fewer_layer_rows_than_fast(setup):
    """The skip engine's saving, counted: a row patching layer l runs decoder layers l..L-1 only."""
    lmm, clean, corrupt = setup
    means, _ = cma.mean_activations(lmm, clean)
    rows = {"n": 0}
    hs = [lmm.decoder_layer(l).register_forward_pre_hook(lambda m, a: rows.__setitem__("n", rows["n"] + a[0].shape[0])) for l in range(lmm.n_layers)]
    try:
        counts = {}
        for engine in ("fast", "skip"):
            rows["n"] = 0
            getattr(cma, f"ie_{engine}")(lmm, corrupt, means, heads_per_batch=64)
            counts[engine] = rows["n"]
    finally:
        for h in hs:
            h.remove()
    N, L, H = len(corrupt), lmm.n_layers, lmm.n_heads
    # fast: the prefix pass, the unpatched token and L*H rows through all L layers; skip: layer l's H rows through L-l layers
    assert counts["fast"] == N * L * (1 + 1 + L * H)
    assert counts["skip"] == N * L * (1 + 1) + N * H * sum(L - l for l in range(L))


def test_means_only_correct_and_counts(setup):
    lmm, clean, _ = setup
    m_all, n_all = cma.mean_activations(lmm, clean)
    assert m_all.shape == (lmm.n_layers, lmm.n_heads, lmm.head_dim) and n_all == len(clean)
    batch = lmm.encode(clean)
    n_ok = int((lmm.predict(batch) == batch.answer_ids).sum())
    if n_ok == 0:
        with pytest.raises(cma.ActivationError, match="no prompt qualified"):
            cma.mean_activations(lmm, clean, only_correct=True)
    else:
        _, n = cma.mean_activations(lmm, clean, only_correct=True)
        assert n == n_ok


def test_checkpoint_resume_is_identical(setup, tmp_path, monkeypatch):
    lmm, clean, corrupt = setup
    ck = tmp_path / "ck.pt"
    full = cma.run_cma(lmm, clean, corrupt, batch_size=1)
    calls = {"n": 0}
    real = cma.ie_fast

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(cma, "ie_fast", dying)
    with pytest.raises(KeyboardInterrupt):
        cma.run_cma(lmm, clean, corrupt, batch_size=1, checkpoint=ck)
    monkeypatch.setattr(cma, "ie_fast", real)
    from safetensors import safe_open

    with safe_open(str(ck), "pt") as f:  # the checkpoint is safetensors + JSON, never a pickle
        assert json.loads(f.metadata()["state"])["done"] == 2
    resumed = cma.run_cma(lmm, clean, corrupt, batch_size=1, checkpoint=ck)
    assert torch.equal(resumed.ie, full.ie)
    with pytest.raises(ValueError, match="belongs to other work"):
        cma.run_cma(lmm, clean, corrupt[:3], batch_size=1, checkpoint=ck)


def test_top_heads_and_errors(setup):
    lmm, clean, corrupt = setup
    res = cma.run_cma(lmm, clean, corrupt)
    top = res.top_heads(3)
    flat = sorted(res.aie.flatten().tolist(), reverse=True)
    assert [float(res.aie[l, h]) for l, h in top] == pytest.approx(flat[:3])
    assert 0 <= res.top_share(3) <= 1
    with pytest.raises(ValueError, match="out of range"):
        res.top_heads(lmm.n_layers * lmm.n_heads + 1)
    with pytest.raises(ValueError, match="unknown CMA engine"):
        cma.run_cma(lmm, clean, corrupt, engine="turbo")
    with pytest.raises(ValueError, match="corrupted"):
        cma.run_cma(lmm, clean, clean)


def test_nan_activations_are_refused(setup):
    lmm, clean, _ = setup
    h = lmm.o_proj(0).register_forward_pre_hook(lambda m, a: (a[0] * float("nan"),))
    try:
        with pytest.raises(cma.ActivationError, match="non-finite"):
            cma.mean_activations(lmm, clean[:2])
    finally:
        h.remove()


def test_attribution_patching_correlates(setup):
    lmm, clean, corrupt = setup
    res = cma.run_cma(lmm, clean, corrupt)
    est = cma.attribution_patching(lmm, corrupt, res.means)
    assert est.shape == res.ie.shape
    assert rsa.spearman(est.mean(0).flatten(), res.aie.flatten()) > 0.3


def test_fast_equals_reference_on_shipped_mmfv_tiny():
    from mmfv.models import load_model
    from mmfv.settings import DataSettings

    lmm = load_model("tiny")
    items = DataSettings(eval_scenes=200).items(lmm, "eval", RELS)
    clean = P.build("clean", items["above"], items, 5, 16, 0)
    corrupt = P.build("corrupted", items["above"], items, 5, 3, 1)
    fast = cma.run_cma(lmm, clean, corrupt, engine="fast", batch_size=2)
    skip = cma.run_cma(lmm, clean, corrupt, engine="skip", batch_size=2, means=(fast.means, fast.n_mean))
    ref = cma.run_cma(lmm, clean, corrupt, engine="reference", means=(fast.means, fast.n_mean))
    assert (fast.ie - ref.ie).abs().max() <= 1e-5
    assert (skip.ie - ref.ie).abs().max() <= 1e-5
    assert ref.aie.max() > 1e-3  # effects are real, not numerically zero
