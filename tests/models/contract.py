"""Checks every model adapter must pass, shared by the tiny, OpenFlamingo and HF-family tests."""

from __future__ import annotations

import torch

from mmfv import hooks
from mmfv.models.base import LMM, Batch


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
