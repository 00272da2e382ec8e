"""LoRA and soft-prompt baselines: adapters leave the model exactly as it was, start from it, train,
count their parameters; the soft prompt's hook agrees with explicit placeholder tokens."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("peft")

from mmfv import baselines as B  # noqa: E402
from mmfv import prompts as P  # noqa: E402
from mmfv.data import synthetic  # noqa: E402
from mmfv.finetune import FinetuneSettings, weights_digest  # noqa: E402
from mmfv.testing import random_tiny  # noqa: E402
from mmfv.testing.tiny import SCENE  # noqa: E402


@pytest.fixture(scope="module")
def setup():
    lmm = random_tiny(seed=4)
    items = synthetic.items("train", 60, ("left",), seed=0, config=SCENE)
    val = synthetic.items("val", 30, ("left",), seed=0, config=SCENE)
    return lmm, P.build("zero-shot", items["left"], items, 0, 16, 0), P.build("zero-shot", val["left"], val, 0, 8, 0)


def test_lora_starts_at_the_model_trains_and_is_removed(setup):
    lmm, tr, val = setup
    lmm.freeze()  # as the adapters leave it (kernels with and without autograd round differently)
    before, batch = weights_digest(lmm), lmm.encode(tr)
    plain = lmm.last_logits(batch).detach()
    n_lin = sum(len(lmm.attention_projections(l)) for l in range(lmm.n_layers))  # q, k, v, o per layer
    assert n_lin == 4 * lmm.n_layers
    with B.lora(lmm, 2) as params:
        assert sum(p.numel() for p in params) == n_lin * 2 * (lmm.hidden_size + lmm.hidden_size)
        assert torch.allclose(lmm.last_logits(batch), plain, atol=1e-6)  # B = 0: unchanged at the start (the LoRA layer adds its zero in float)
        res = B.train(lmm, params, tr, val, FinetuneSettings(epochs=2, lr=5e-2, batch_size=8))
        assert not torch.allclose(lmm.last_logits(batch), plain)
        assert res.n_params == sum(p.numel() for p in params) and len(res.curve) == 2 and res.best_epoch in (1, 2)
    assert weights_digest(lmm) == before and torch.equal(lmm.last_logits(batch), plain)
    assert type(lmm.o_proj(0)) is torch.nn.Linear


def test_soft_prompt_hook_agrees_with_explicit_placeholders(setup):
    lmm, tr, val = setup
    lmm.freeze()
    batch = lmm.encode(tr[:4])
    plain = lmm.last_logits(batch).detach()
    fill = int(batch.inputs["input_ids"][0, -1])  # what prepend writes: every row's last token (the same text token here)
    assert (batch.inputs["input_ids"][:, -1] == fill).all()
    same = lmm.input_embeddings().weight[fill].detach().expand(3, -1)
    reference = lmm.last_logits(lmm.prepend(batch, 3)).detach()
    with B.soft_prompt(lmm, 3, init=same) as (soft,):
        assert soft.shape == (3, lmm.hidden_size)
        assert torch.allclose(lmm.last_logits(lmm.encode(tr[:4])), reference, atol=1e-5)
    with B.soft_prompt(lmm, 3) as params:
        assert lmm.encode(tr[:4]).length == batch.length + 3
        res = B.train(lmm, params, tr, val, FinetuneSettings(epochs=1, batch_size=8))
        assert res.n_params == 3 * lmm.hidden_size
    assert "encode" not in vars(lmm) and torch.equal(lmm.last_logits(lmm.encode(tr[:4])), plain)


def test_bad_sizes():
    lmm = random_tiny(seed=4)
    with pytest.raises(ValueError, match="rank"), B.lora(lmm, 0):
        pass
    with pytest.raises(ValueError, match="virtual tokens"), B.soft_prompt(lmm, 0):
        pass


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "mllama"])
def test_adapters_of_hf_families(family):
    """Virtual tokens through prepend (position ids, mrope, token types, cross-attention rows) and the
    embedding hook agree with explicit placeholders; LoRA finds every attention block and goes away."""
    from mmfv.testing import hf_tiny

    lmm = hf_tiny(family)
    lmm.freeze()
    cfg = lmm.scene_config() if hasattr(lmm, "scene_config") else None
    items = synthetic.items("test", 30, ("left",), seed=0, config=cfg)
    prompts = P.build("clean", items["left"], items, 1, 4, 0)
    batch = lmm.encode(prompts)
    plain = lmm.last_logits(batch).detach()
    fill = batch.inputs["input_ids"][:, -1]
    assert (fill == fill[0]).all()
    reference = lmm.last_logits(lmm.prepend(batch, 2)).detach()
    assert not torch.allclose(reference, plain, atol=1e-3)  # the placeholders are attended
    with B.soft_prompt(lmm, 2, init=lmm.input_embeddings()(fill[:1]).detach().expand(2, -1)):
        assert torch.allclose(lmm.last_logits(lmm.encode(prompts)), reference, atol=1e-4)
    before = weights_digest(lmm)
    n = sum(len(lmm.attention_projections(l, hs.name)) for hs in lmm.head_sets.values() for l in range(hs.n_layers))
    with B.lora(lmm, 1) as params:
        assert len(params) == 2 * n and torch.allclose(lmm.last_logits(batch), plain, atol=1e-5)
    assert weights_digest(lmm) == before and torch.allclose(lmm.last_logits(batch), plain, atol=1e-5)
