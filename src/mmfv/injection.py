"""Cached injection: vectors added after ONE decoder layer ℓ at the last position, on prompts prepared once.

Adding a vector to the residual stream after layer ℓ at the last prompt position changes nothing at
earlier positions (attention is causal) and nothing in layers ≤ ℓ. So each prompt batch is prepared
once — its encoding, the KV cache of positions < T−1 (:meth:`LMM.prefix`) and the last token's
unpatched residual after every layer (:meth:`LMM.last_residuals`) — and every evaluation or training
step then runs layers ℓ+1..L−1 on the last token alone (:meth:`LMM.last_from`), whatever ℓ and the
vector are. Adapters without layer-by-layer stepping still save the prefix pass.

The uncached path (``hooks.add_to_layer`` around a full forward) is the reference; tests hold the
two equal. They agree to float rounding (logits within ~1e-5), not bit for bit: the cached path
computes the last token's attention over the cache instead of inside the full prompt's.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from mmfv.models.base import LMM, Batch, Prefix
from mmfv.prompts import Prompt

DEFAULT_MAX_BYTES = 1 << 30
"""Memory for prepared batches (1 GiB, on the model's device); beyond it the least recently used are
dropped and prepared again when needed."""


@dataclass
class Stem:
    """One prompt batch prepared for vectors added at the last position of any layer."""

    batch: Batch
    prefix: Prefix
    residuals: dict[int, torch.Tensor]  # layer -> (B, D) residual after that layer, last position, nothing added

    def logits(self, lmm: LMM, layer: int, vector: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """Logits (B*K, V) at the last position with ``scale * vector`` added after ``layer``: a (D,)
        vector gives B rows; (K, D) gives K rows per prompt, row-major (prompt 0's K first), all
        sharing the prompt's cache. Gradients flow into ``vector``."""
        res = self.residuals[layer]  # (B, D)
        v = scale * vector.to(res.dtype).to(res.device)
        if v.dim() == 1:
            return lmm.last_from(self.prefix, layer, res + v)
        K = v.shape[0]
        hidden = (res[:, None] + v[None]).reshape(-1, res.shape[-1])  # (B*K, D)
        return lmm.last_from(self.prefix, layer, hidden, repeats=K)

    def nbytes(self) -> int:
        return _nbytes(self.prefix.cache) + _nbytes(self.prefix.last_inputs) + _nbytes(self.batch.inputs) + _nbytes(self.residuals)


@torch.no_grad()
def prepare(lmm: LMM, batch: Batch) -> Stem:
    """The prefix KV cache of ``batch`` and its last-position residual after every layer."""
    pre = lmm.prefix(batch)
    return Stem(batch, pre, lmm.last_residuals(pre))


def prompts_key(lmm: LMM, prompts: Sequence[Prompt]) -> str:
    """What identifies a prompt batch's encoding: each prompt's kind and items (image, query, answer,
    relation), in order, and its text as the model's template writes it."""
    h = hashlib.sha256()
    for p in prompts:
        h.update(json.dumps([p.kind, [[it.image_id, it.query, it.answer, it.relation] for it in p.items], lmm.template.render(p)]).encode())
    return h.hexdigest()


class Stems:
    """Prepared prompt batches, by content, least recently used dropped beyond ``max_bytes``.

    ``get(prompts)`` returns the :class:`Stem` of that exact batch, preparing it on first use; callers
    that evaluate many vectors or layers on the same prompts share one :class:`Stems`."""

    def __init__(self, lmm: LMM, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.lmm = lmm
        self.max_bytes = max_bytes
        self._d: OrderedDict[str, tuple[Stem, int]] = OrderedDict()
        self.bytes = 0
        self.prepared = 0  # batches prepared so far (a re-preparation after a drop counts again)
        self._keys: dict[tuple[int, ...], tuple[tuple[Prompt, ...], str]] = {}  # prompt objects' ids -> (them, content key)

    def get(self, prompts: Sequence[Prompt]) -> Stem:
        key = self._key(prompts)
        hit = self._d.get(key)
        if hit is not None:
            self._d.move_to_end(key)
            return hit[0]
        stem = prepare(self.lmm, self.lmm.encode(prompts))
        self.prepared += 1
        size = stem.nbytes()
        while self._d and self.bytes + size > self.max_bytes:
            _, (_, old) = self._d.popitem(last=False)
            self.bytes -= old
        if size <= self.max_bytes:
            self._d[key] = (stem, size)
            self.bytes += size
        return stem

    def _key(self, prompts: Sequence[Prompt]) -> str:
        """:func:`prompts_key`, remembered for these very prompt objects (held, so their ids stay theirs):
        the same batches come back for every vector and layer."""
        ids = tuple(map(id, prompts))
        hit = self._keys.get(ids)
        if hit is None:
            if len(self._keys) >= 4096:
                self._keys.clear()
            hit = self._keys[ids] = (tuple(prompts), prompts_key(self.lmm, prompts))
        return hit[1]

    def __len__(self) -> int:
        return len(self._d)

    def clear(self) -> None:
        self._d.clear()
        self._keys.clear()
        self.bytes = 0


def _nbytes(obj: Any, seen: set[int] | None = None) -> int:
    """Bytes of the tensors reachable from ``obj`` (tensors, containers, cache objects), each once."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_nbytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v, seen) for v in obj)
    if hasattr(obj, "__dict__") and not isinstance(obj, (torch.nn.Module, type)):
        return sum(_nbytes(v, seen) for v in vars(obj).values())
    return 0
