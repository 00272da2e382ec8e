"""Random function vectors for tests: one head each, from one seeded random means tensor."""

from __future__ import annotations

from typing import Any, Sequence

import torch


def random_vectors(lmm: Any, relations: Sequence[str], seed: int = 0) -> dict:
    """relation -> FunctionVector of ``lmm`` built from random means (L, H, d) drawn with ``seed``;
    relation i uses head (i mod L, i), so every vector is distinct and traceable to its head."""
    from mmfv import vectors as V

    means = torch.randn(lmm.n_layers, lmm.n_heads, lmm.head_dim, generator=torch.Generator().manual_seed(seed))  # (L, H, d)
    return {r: V.build(lmm, means, [(i % lmm.n_layers, i)], r) for i, r in enumerate(relations)}
