"""HF last-token layer stepping (models/hf_steps.py): which families it serves, and that it refuses
what it cannot prove exact. That stepping equals ``last`` is in test_contract.py for every family."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmfv.models.hf_steps import steps
from tests.models import cases

BETWEEN_LAYERS = {"idefics"}  # gated cross-attention runs between decoder layers: no stepping


@pytest.mark.parametrize("family", cases.HF)
@torch.no_grad()
def test_every_family_steps_but_those_with_work_between_layers(family):
    lmm = cases.model(family)
    pre = lmm.prefix(lmm.encode(cases.mixed_prompts(cases.data(family))))
    st = lmm.last_steps(pre)
    assert (st is None) == (family in BETWEEN_LAYERS)
    if st is None:
        return
    for mode in ("repeat", "shared"):  # the reference cache (a copy per row) steps alike
        lmm.cache_mode = mode
        try:
            h = st.embed().repeat_interleave(2, 0)
            for l in range(lmm.n_layers):
                h = st.layer(l, h, 2)
            assert (st.logits(h) - lmm.last(pre, 2)).abs().max() <= cases.TOL, mode
        finally:
            lmm.cache_mode = "shared"


@torch.no_grad()
def test_a_head_that_does_not_give_the_logits_means_no_stepping(monkeypatch):
    """The final norm and LM head stepping finds must reproduce the forward's logits, or no stepping."""
    lmm = cases.model("llama")
    pre = lmm.prefix(lmm.encode(cases.mixed_prompts(cases.data("llama"))))
    assert steps(lmm, pre) is not None
    other = nn.Linear(lmm.hidden_size, lmm.module.get_output_embeddings().out_features, bias=False)
    monkeypatch.setattr(lmm.module, "get_output_embeddings", lambda: other)
    assert steps(lmm, pre) is None
    assert lmm.last_steps(pre) is None
