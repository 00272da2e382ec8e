"""Checks every model adapter must pass, shared by the tiny, OpenFlamingo and HF-family tests."""

from __future__ import annotations

import torch

from mmfv import hooks
from mmfv.models.base import LMM, Batch
from mmfv.prompts import Prompt


def vector_gets_gradient_with_weights_frozen(lmm: LMM, batch: Batch, layer: int = 0) -> None:
    """An FV added at ``layer`` receives a gradient; no weight gets one or changes by a bit."""
    lmm.freeze()
    before = {k: v.clone() for k, v in lmm.module.state_dict().items()}
    vec = torch.zeros(lmm.hidden_size, requires_grad=True)
    with hooks.add_to_layer(lmm, layer, vec):
        loss = torch.nn.functional.cross_entropy(lmm.forward(batch)[:, -1], batch.answer_ids)
    loss.backward()
    assert vec.grad is not None and vec.grad.abs().sum() > 0
    assert all(p.grad is None for p in lmm.module.parameters())
    assert all(torch.equal(before[k], v) for k, v in lmm.module.state_dict().items())


def images_encoded_once(lmm: LMM, prompts: list[Prompt], encoder: torch.nn.Module) -> None:
    """``encoder`` (the adapter's vision module) sees each distinct image once; a second encode reuses all."""
    calls: list[int] = []
    h = encoder.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    try:
        lmm._feat_cache.clear()
        lmm.encode(prompts)
        first = sum(calls)
        lmm.encode(prompts)
        assert sum(calls) == first  # the second encode reuses every image
        assert first == len({i for p in prompts for i in p.image_ids})
    finally:
        h.remove()
