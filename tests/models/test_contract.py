"""The LMM contract every model adapter passes, with one set of tolerances: mmfv-tiny (random), the
tiny random OpenFlamingo, and a tiny random model of every discovered HF family (a new spec file is
picked up here by itself). Every head set a model has is checked (OpenFlamingo, IDEFICS and Mllama
add "cross"); text-only families (Llama, Qwen2/3, Gemma 3 text) run it on the same items without
images. What only one adapter does is tested in test_tiny.py, test_openflamingo.py and
test_hf.py."""

from __future__ import annotations

import contextlib
import types
from typing import Iterator

import pytest
import torch

from mmfv import cma, hooks
from mmfv import prompts as P
from mmfv.models import specs
from mmfv.models.base import LMM
from tests.models import cases

TOL = cases.TOL  # max |Δ| between two paths that compute the same logits or IEs
CHANGED = 1e-3  # a patch that must matter changes a logit by more than this

# per adapter: sizes (n_layers, hidden, head_dim, self heads), head sets, what runs once per image
EXPECT = {
    "mmfv-tiny": ((2, 32, 8, 4), ("self",), lambda lmm: lmm.module.model.patch_embed),
    "openflamingo": ((4, 64, 16, 4), ("self", "cross"), lambda lmm: lmm.module.vision_encoder),
}
HF_EXPECT = ((2, 64, 16, 4), ("self",), None)  # None: count the HF adapter's per-image vision calls


@pytest.fixture(scope="module", params=cases.NAMES)
def case(request):
    name = request.param
    lmm = cases.model(name)
    items = cases.data(name)
    prompts = cases.mixed_prompts(items)
    sizes, head_sets, vision = EXPECT.get(name, HF_EXPECT)
    if name in cases.HF and specs.get(name).cross_layers:
        head_sets = ("self", "cross")
    return types.SimpleNamespace(name=name, lmm=lmm, items=items, prompts=prompts, batch=lmm.encode(prompts), sizes=sizes, head_sets=head_sets, vision=vision)


def test_sizes_head_sets_and_modules(case):
    lmm = case.lmm
    assert (lmm.n_layers, lmm.hidden_size, lmm.head_dim, lmm.n_heads) == case.sizes
    assert tuple(lmm.head_sets) == case.head_sets
    for name, hs in lmm.head_sets.items():
        assert lmm.o_proj(hs.n_layers - 1, name).in_features == hs.n_heads * hs.head_dim, name
    assert all(any(m is lmm.decoder_layer(i) for m in lmm.module.modules()) for i in range(lmm.n_layers))
    assert lmm.head_output_gate(0, "self") == 1.0
    with pytest.raises(KeyError):
        lmm.o_proj(0, "nope")


@torch.no_grad()
def test_left_padding_does_not_change_logits(case):
    lmm, items = case.lmm, case.items
    short, long = P.build("clean", items["left"], items, 1, 1, 0)[0], P.build("clean", items["left"], items, 3, 1, 0)[0]
    alone = lmm.last_logits(lmm.encode([short]))
    padded = lmm.last_logits(lmm.encode([short, long]))[0:1]
    assert (alone - padded).abs().max() <= TOL


@torch.no_grad()
def test_head_read_replace_round_trip_is_bit_exact(case):
    lmm, batch = case.lmm, case.batch
    B = batch.size
    for name, hs in lmm.head_sets.items():
        with hooks.read_heads(lmm, head_set=name) as store:
            ref = lmm.forward(batch)
        assert store[0].shape == (B, hs.n_heads, hs.head_dim), name
        patches = {l: (torch.arange(B).repeat_interleave(hs.n_heads), torch.arange(hs.n_heads).repeat(B), store[l].reshape(-1, hs.head_dim)) for l in store}
        with hooks.patch_heads(lmm, patches, head_set=name):
            out = lmm.forward(batch)
        assert torch.equal(ref, out), name


@torch.no_grad()
def test_patching_the_last_position_changes_nothing_earlier(case):
    lmm, batch = case.lmm, case.batch
    ref = lmm.forward(batch)
    B = batch.size
    for name, hs in lmm.head_sets.items():
        with hooks.patch_heads(lmm, {0: (torch.arange(B), torch.zeros(B, dtype=torch.long), torch.full((B, hs.head_dim), 5.0))}, head_set=name):
            out = lmm.forward(batch)
        assert torch.equal(ref[:, :-1], out[:, :-1]), name
        assert (ref[:, -1] - out[:, -1]).abs().max() > CHANGED, name  # and the last position did change


@torch.no_grad()
def test_prefix_then_last_equals_full_forward(case):
    lmm, batch = case.lmm, case.batch
    full = lmm.forward(batch)[:, -1]
    pre = lmm.prefix(batch)
    fast = lmm.last(pre, repeats=3).view(batch.size, 3, -1)
    assert (fast - full[:, None]).abs().max() <= TOL
    assert (lmm.last(pre, 1) - full).abs().max() <= TOL  # the prefix cache is reusable (never mutated)


@torch.no_grad()
def test_patched_heads_agree_between_full_forward_and_fast_path(case):
    """What the fast CMA engine relies on: a patch at the last position gives the same logits either
    way, row-major repeats patching different heads."""
    lmm, batch = case.lmm, case.batch
    B, R = batch.size, 2
    for name, hs in lmm.head_sets.items():
        layer = hs.n_layers - 1
        val = torch.full((hs.head_dim,), 3.0)
        want = []
        for h in range(R):
            with hooks.patch_heads(lmm, {layer: (torch.arange(B), torch.full((B,), h), val.expand(B, -1))}, head_set=name):
                want.append(lmm.forward(batch)[:, -1])
        want = torch.stack(want, 1)  # (B, R, V)
        pre = lmm.prefix(batch)
        with hooks.patch_heads(lmm, {layer: (torch.arange(B * R), torch.arange(R).repeat(B), val.expand(B * R, -1))}, head_set=name):
            got = lmm.last(pre, R).view(B, R, -1)
        assert (got - want).abs().max() <= TOL, name


def test_fast_cma_equals_the_reference_engine(case):
    """CMA's two engines on the model itself: per-head IE from the KV-cached last-token batches equals
    one full pass per head, for every head set."""
    lmm, items = case.lmm, case.items
    corrupted = P.build("corrupted", items["left"], items, 2, 2, 5)
    for name, hs in lmm.head_sets.items():
        means, used = cma.mean_activations(lmm, case.prompts, batch_size=8, head_set=name)
        assert used == len(case.prompts) and means.shape == (hs.n_layers, hs.n_heads, hs.head_dim), name
        fast = cma.ie_fast(lmm, corrupted, means, heads_per_batch=3, head_set=name)
        ref = torch.stack([cma.ie_reference(lmm, p, means, head_set=name) for p in corrupted])
        assert fast.shape == ref.shape == (len(corrupted), hs.n_layers, hs.n_heads), name
        assert ref.abs().max() > 0, name  # the heads do something (IEs of random cross heads can be ~1e-7)
        assert (fast - ref).abs().max() <= TOL, name


def test_skip_cma_equals_the_reference_engine(case):
    """The layer-skipping engine (rows join at their layer) against one full pass per head, every head set;
    adapters without layer stepping run the fast engine under that name."""
    lmm, items = case.lmm, case.items
    corrupted = P.build("corrupted", items["left"], items, 2, 2, 5)
    for name, hs in lmm.head_sets.items():
        means, _ = cma.mean_activations(lmm, case.prompts, batch_size=8, head_set=name)
        ref = torch.stack([cma.ie_reference(lmm, p, means, head_set=name) for p in corrupted])
        for hpb in (3, hs.n_layers * hs.n_heads):  # chunks that start mid-stack, and one chunk of every head
            skip = cma.ie_skip(lmm, corrupted, means, heads_per_batch=hpb, head_set=name)
            assert skip.shape == ref.shape and (skip - ref).abs().max() <= TOL, (name, hpb)


def _hf_cache_modes(case):
    if not hasattr(case.lmm, "cache_mode"):
        pytest.skip(f"{case.name} has no KV cache modes (HF adapter only)")
    assert case.lmm.cache_mode == "shared"  # the default


@contextlib.contextmanager
def _cache_mode(lmm, mode: str):
    lmm.cache_mode = mode
    try:
        yield
    finally:
        lmm.cache_mode = "shared"


def test_shared_prefix_cache_gives_the_ies_of_the_repeated_reference(case):
    """HF adapters: the fast engine's rows sharing one prefix KV cache (default) give the IEs of the
    row-repeated cache (``cache="repeat"``, the reference), for every head set."""
    _hf_cache_modes(case)
    lmm, items = case.lmm, case.items
    corrupted = P.build("corrupted", items["left"], items, 2, 2, 5)
    for name, hs in lmm.head_sets.items():
        means, _ = cma.mean_activations(lmm, case.prompts, batch_size=8, head_set=name)
        shared = cma.ie_fast(lmm, corrupted, means, heads_per_batch=5, head_set=name)
        with _cache_mode(lmm, "repeat"):
            ref = cma.ie_fast(lmm, corrupted, means, heads_per_batch=5, head_set=name)
        assert ref.abs().max() > 0 and (shared - ref).abs().max() <= TOL, name


@torch.no_grad()
def test_shared_prefix_cache_does_not_grow_with_repeats(case, monkeypatch):
    """HF adapters: whatever ``repeats``, the attention reads the prefix keys/values from the prefix
    cache's own storage (no copy), and the cache handed to the forward holds the prefix's bytes plus
    one key/value row per last-token row; the repeated reference grows with ``repeats``."""
    _hf_cache_modes(case)
    from mmfv.models import hf, hf_cache

    lmm, batch = case.lmm, case.batch
    pre = lmm.prefix(batch)
    base = hf_cache.kv_bytes(pre.cache)
    storages = {t.untyped_storage().data_ptr() for layer in pre.cache.layers for t in (layer.keys, layer.values) if t is not None and t.numel()}
    seen, read = [], []
    real_cache, real_attention = hf.last_cache, hf_cache.shared_attention

    @contextlib.contextmanager
    def spy_cache(*args):
        with real_cache(*args) as cache:
            yield cache
        seen.append(cache)

    def spy_attention(module, query, key, value, *args, **kwargs):
        if hf_cache._active[-1].pending is not None or key.shape[0] < query.shape[0]:  # keys shared by the rows
            read.append(key.untyped_storage().data_ptr() in storages)
        return real_attention(module, query, key, value, *args, **kwargs)

    monkeypatch.setattr(hf, "last_cache", spy_cache)
    monkeypatch.setattr(hf_cache, "shared_attention", spy_attention)
    hf_cache.ALL_ATTENTION_FUNCTIONS.register(hf_cache.NAME, spy_attention)
    try:
        own = []
        for R in (1, 6):
            lmm.last(pre, R)
            run = seen[-1].mmfv_shared_run
            assert hf_cache.kv_bytes(seen[-1]) - run.own_bytes == base, R
            own.append(run.own_bytes)
            with _cache_mode(lmm, "repeat"):
                lmm.last(pre, R)
            assert hf_cache.kv_bytes(seen[-1]) >= R * base, R  # the reference's copies: what the measure sees grow
        assert own[1] == 6 * own[0] and own[0] * (batch.length - 1) <= 2 * base  # one row of own keys per last-token row
        assert read and all(read)  # every shared attention read the prefix cache itself
    finally:
        hf_cache.ALL_ATTENTION_FUNCTIONS.register(hf_cache.NAME, real_attention)


@torch.no_grad()
def test_last_token_layer_by_layer_equals_last(case):
    """LastSteps (where an adapter has them) runs the same computation as ``last``; last_logits is the
    full forward's last position."""
    lmm, batch = case.lmm, case.batch
    assert (lmm.last_logits(batch) - lmm.forward(batch)[:, -1]).abs().max() <= TOL
    pre = lmm.prefix(batch)
    steps = lmm.last_steps(pre)
    if steps is None:
        pytest.skip(f"{case.name} runs the last token only as a whole")
    for R in (1, 3):
        h = steps.embed().repeat_interleave(R, 0)
        for l in range(lmm.n_layers):
            h = steps.layer(l, h, R)
        assert (steps.logits(h) - lmm.last(pre, R)).abs().max() <= TOL, R


def test_cached_injection_equals_a_hook_on_the_full_forward(case):
    """A vector added after layer l at the last position: logits and the vector's gradient from the
    prepared prefix and residual (only layers > l run) equal those of hooks.add_to_layer on a full pass."""
    lmm, batch = case.lmm, case.batch
    lmm.freeze()
    g = torch.Generator().manual_seed(0)
    vec = torch.randn(lmm.hidden_size, generator=g)
    pre = lmm.prefix(batch)
    res = lmm.last_residuals(pre)
    assert sorted(res) == list(range(lmm.n_layers)) and res[0].shape == (batch.size, lmm.hidden_size)
    for layer in range(lmm.n_layers):
        v1 = vec.clone().requires_grad_(True)
        with hooks.add_to_layer(lmm, layer, v1):
            want = lmm.forward(batch)[:, -1]
        torch.nn.functional.cross_entropy(want, batch.answer_ids).backward()
        v2 = vec.clone().requires_grad_(True)
        got = lmm.last_from(pre, layer, res[layer] + v2)
        torch.nn.functional.cross_entropy(got, batch.answer_ids).backward()
        assert (got - want).abs().max() <= TOL, layer
        assert (v2.grad - v1.grad).abs().max() <= TOL, layer
        two = lmm.last_from(pre, layer, (res[layer][:, None] + torch.stack([vec, -vec])[None]).flatten(0, 1), repeats=2)
        with torch.no_grad(), hooks.add_to_layer(lmm, layer, -vec):
            neg = lmm.forward(batch)[:, -1]
        assert (two.view(batch.size, 2, -1) - torch.stack([want, neg], 1)).abs().max() <= TOL, layer


@contextlib.contextmanager
def _vision_runs(lmm: LMM, vision) -> Iterator[list[int]]:
    """Images the vision side encodes while inside (a hook on ``vision(lmm)``, or the HF adapter's
    per-image ``_features``)."""
    calls: list[int] = []
    if vision is not None:
        h = vision(lmm).register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
        try:
            yield calls
        finally:
            h.remove()
        return
    orig = lmm._features
    lmm._features = lambda px: calls.append(1) or orig(px)
    try:
        yield calls
    finally:
        del lmm._features


@torch.no_grad()
def test_vision_runs_once_per_image(case):
    lmm, items = case.lmm, case.items
    prompts = P.build("clean", items["right"], items, 2, 2, 3)
    lmm._feat_cache.clear()
    with _vision_runs(lmm, case.vision) as calls:
        first = lmm.encode(prompts)
        n = sum(calls)
        again = lmm.encode(prompts)
    images = {it.image_id for p in prompts for it in p.items if it.has_image}  # none for a text-only model
    assert sum(calls) == n == len(images)  # the second encode reuses every image
    assert torch.equal(lmm.forward(first), lmm.forward(again))


def test_added_vector_gets_gradient_with_weights_frozen(case):
    """A vector added at a layer receives a gradient; no weight gets one or changes by a bit."""
    lmm, batch = case.lmm, case.batch
    lmm.freeze()
    before = {k: v.clone() for k, v in lmm.module.state_dict().items()}
    vec = torch.zeros(lmm.hidden_size, requires_grad=True)
    with hooks.add_to_layer(lmm, 0, vec):
        loss = torch.nn.functional.cross_entropy(lmm.forward(batch)[:, -1], batch.answer_ids)
    loss.backward()
    assert vec.grad is not None and vec.grad.abs().sum() > 0
    assert all(p.grad is None for p in lmm.module.parameters())
    assert all(torch.equal(before[k], v) for k, v in lmm.module.state_dict().items())


@torch.no_grad()
def test_answer_probs_generation_and_suffix(case):
    lmm, batch = case.lmm, case.batch
    p = lmm.answer_probs(batch)
    assert p.shape == (batch.size,) and bool(((p > 0) & (p < 1)).all())
    one = lmm.encode(batch.prompts[:1])
    ext = lmm.forward_with_suffix(one, [int(one.answer_ids[0]), int(one.answer_ids[0])])
    assert ext.shape[1] == one.length + 2 and (ext[:, : one.length] - lmm.forward(one)).abs().max() <= TOL
    texts = lmm.generate(batch.prompts[:2], max_new_tokens=2)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


def test_hooks_fail_loudly(case):
    lmm = case.lmm
    with pytest.raises(hooks.HookError, match="out of range"):
        with hooks.add_to_layer(lmm, lmm.n_layers + 5, torch.zeros(lmm.hidden_size)):
            pass
    with pytest.raises(hooks.HookError, match="never ran"):
        with hooks.read_heads(lmm, layers=[0]):
            pass  # no forward: the hook matched nothing
