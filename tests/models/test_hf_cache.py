"""The shared prefix KV cache of the HF fast path (models/hf_cache.py): what the contract tests
(test_contract.py: IEs equal the repeated reference's, storage does not grow with repeats) do not
reach on the tiny models: a sliding window shorter than the prompt, the model left as it was, bad modes."""

from __future__ import annotations

import contextlib

import pytest
import torch

from mmfv.models import hf_cache
from mmfv.models.hf import HFLMM
from tests.models import cases

TOL = cases.TOL


@contextlib.contextmanager
def _window(lmm, size: int):
    """The family's sliding-window layers see only the last ``size`` positions (config and modules)."""
    cfg = lmm.module.config.get_text_config()
    old = cfg.sliding_window
    mods = [m for m in lmm.module.modules() if getattr(m, "sliding_window", None) == old]
    assert mods, "no sliding-window attention module"
    cfg.sliding_window = size
    for m in mods:
        m.sliding_window = size
    try:
        yield
    finally:
        cfg.sliding_window = old
        for m in mods:
            m.sliding_window = old


@pytest.mark.parametrize("family", ["gemma3_text", "gemma3"])
@torch.no_grad()
def test_sliding_window_shorter_than_the_prompt(family):
    """Sliding layers keep only the window in their cache: the shared rows read the same keys, masked
    alike, as the repeated reference and the full forward."""
    lmm = cases.model(family)
    with _window(lmm, 8):
        batch = lmm.encode(cases.mixed_prompts(cases.data(family)))
        full = lmm.forward(batch)[:, -1]
        pre = lmm.prefix(batch)
        assert min(layer.keys.shape[-2] for layer in pre.cache.layers) == 7 < batch.length - 1  # the window did cut the cache
        shared = lmm.last(pre, 3).view(batch.size, 3, -1)
        lmm.cache_mode = "repeat"
        try:
            ref = lmm.last(pre, 3).view(batch.size, 3, -1)
        finally:
            lmm.cache_mode = "shared"
    assert (shared - ref).abs().max() <= TOL and (shared - full[:, None]).abs().max() <= TOL


@torch.no_grad()
def test_the_model_is_left_as_it_was_even_when_the_forward_fails():
    """The attention implementation is switched only inside ``last`` and restored after an error; the
    prefix cache is never changed."""
    lmm = cases.model("qwen2")
    configs = hf_cache._configs(lmm.module)
    before = [c._attn_implementation for c in configs]
    pre = lmm.prefix(lmm.encode(cases.mixed_prompts(cases.data("qwen2"))))
    keys = [layer.keys.clone() for layer in pre.cache.layers]
    lmm.last(pre, 4)
    inside = []

    def boom(mod, args, output):
        inside.append(mod.self_attn.config._attn_implementation)
        raise RuntimeError("boom")

    handle = lmm.decoder_layer(0).register_forward_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            lmm.last(pre, 2)
    finally:
        handle.remove()
    assert inside == [hf_cache.NAME]
    assert [c._attn_implementation for c in configs] == before and not hf_cache._active
    assert all(torch.equal(k, layer.keys) for k, layer in zip(keys, pre.cache.layers))


def test_a_bad_cache_mode_is_one_line():
    lmm = cases.model("llama")
    with pytest.raises(ValueError, match="cache 'copy': use 'shared'"):
        HFLMM(lmm.module, lmm.processor, lmm.spec, cache="copy")
