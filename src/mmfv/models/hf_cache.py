"""One shared prefix KV cache for the fast CMA path of models/hf.py: the last token of each prompt runs
as ``repeats`` rows (one per patched head), and every row attends to its prompt's prefix keys/values,
stored once, plus its own last-token key/value.

Why: repeating the prefix cache per row (``repeat_cache``, the ``reference`` mode) costs ``repeats``
copies of the cache and another copy in the cache update's concatenation; at 64 heads per batch one
SmolVLM-256M prompt's 17 MiB cache became ~1 GiB, and copying it dominated the last-token time.

How: during :func:`shared_last` the model's configs name the attention implementation
:data:`NAME` (registered with transformers; its masks are made as for "sdpa"). The cache passed to
the forward is :class:`SharedCache`: each layer's ``update`` keeps the rows' new keys/values aside
and returns the prompt's prefix keys/values, batch B (prompts). :func:`shared_attention` then sees
queries of B*R rows against keys of B rows: it scores every row's query against the shared prefix
(one batched matmul per prompt), scores it against its own new keys, and takes one softmax over both
parts (exact: the same scores, masked alike, normalised together). Attention whose keys already have
one row per query row (e.g. cross-attention over repeated image states) runs the original
implementation. Nothing here names an architecture.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Any, Iterator

import torch
from torch import nn
from transformers import PreTrainedConfig
from transformers.cache_utils import CacheLayerMixin
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

NAME = "mmfv_shared_prefix"
MODES = ("shared", "repeat")  # HFLMM(cache=...): "repeat" is the reference (row-repeated cache)



def cache_mode(mode: str) -> str:
    """``mode`` if it is one of :data:`MODES`, else a one-line error."""
    if mode not in MODES:
        raise ValueError(f"cache {mode!r}: use 'shared' (one prefix KV cache for every row) or 'repeat' (the reference, a copy per row)")
    return mode


_active: list["_Run"] = []  # the shared run in progress (at most one)


class _Run:
    """One :func:`shared_last` call: the rows' pending own keys/values and the configs' original
    attention implementations (by config id), restored afterwards."""

    def __init__(self, repeats: int, original: dict[int, str]) -> None:
        self.repeats = repeats
        self.original = original
        self.pending: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # (prefix keys, own keys, own values)
        self.own_bytes = 0  # the most bytes of the rows' own keys/values at one layer (each layer's are freed after it)


class SharedLayer(CacheLayerMixin):
    """A read-only view of one prefix cache layer: ``update`` returns the prefix keys/values (B rows)
    and hands the rows' new ones (B*R rows) to the attention through the run; the prefix is never changed."""

    def __init__(self, layer: Any, run: _Run) -> None:  # no super().__init__: keys/values are the prefix layer's
        self._layer = layer
        self._run = run

    keys = property(lambda self: self._layer.keys)
    values = property(lambda self: self._layer.values)
    is_initialized = property(lambda self: getattr(self._layer, "is_initialized", False))

    def __getattr__(self, name: str) -> Any:  # is_sliding, sliding_window, cumulative_length, device, ...
        if "_layer" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["_layer"], name)

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        raise RuntimeError("a shared prefix cache layer is never initialized anew")

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        if self._run.pending is not None:
            raise RuntimeError("shared prefix cache: a layer's new keys were never attended to (an attention module bypassed the interface)")
        k, v = self.keys, self.values
        if k is None or not self.is_initialized:  # nothing cached at this layer: the rows attend to themselves only
            k = key_states.new_zeros(key_states.shape[0] // self._run.repeats, key_states.shape[1], 0, key_states.shape[3])
            v = value_states.new_zeros(k.shape[0], value_states.shape[1], 0, value_states.shape[3])
        self._run.pending = (k, key_states, value_states)
        self._run.own_bytes = max(self._run.own_bytes, key_states.nbytes + value_states.nbytes)
        return k, v

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self._layer.get_mask_sizes(query_length)

    def get_seq_length(self) -> int:
        return self._layer.get_seq_length()

    def get_max_length(self) -> int:
        return self._layer.get_max_length()


class SharedCache:
    """Builds the forward's cache: a shallow copy of the prefix cache (same class and settings) whose
    layers are :class:`SharedLayer` views."""

    @staticmethod
    def of(cache: Any, run: _Run) -> Any:
        import copy

        new = copy.copy(cache)
        new.layers = [SharedLayer(layer, run) for layer in cache.layers]
        new.mmfv_shared_run = run
        return new


def _mask_part(mask: torch.Tensor, B: int, R: int, kvH: int, g: int, q: int, lo: int, hi: int) -> torch.Tensor:
    """Columns lo:hi of a (N or 1, 1 or H, q, K) mask, laid out (B, kvH, R, g, q, hi-lo) like the scores."""
    m = mask[..., lo:hi]
    m = m.expand(B * R, *m.shape[1:])
    h = m.shape[1]
    m = m.reshape(B, R, h, q, hi - lo)
    m = m.unsqueeze(3) if h == 1 else m.reshape(B, R, kvH, g, q, hi - lo)  # (B, R, kvH|1, g|1, q, K)
    return m.permute(0, 2, 1, 3, 4, 5)


def _apply(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return scores
    if mask.dtype == torch.bool:
        return scores.masked_fill(~mask, float("-inf"))
    return scores + mask


def shared_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor | None,
                     scaling: float | None = None, dropout: float = 0.0, softcap: float | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """Attention of queries (B*R, H, q, d) over shared prefix keys/values (B, kvH, P, d) and, when the
    keys came through a :class:`SharedLayer`, each row's own new keys/values (B*R, kvH, q, d).
    Returns (B*R, q, H, d) as transformers' attention functions do."""
    run = _active[-1] if _active else None
    pending = run.pending if run is not None else None
    if pending is not None and pending[0] is not key:
        raise RuntimeError("shared prefix cache: keys changed between the cache update and the attention")
    if run is None or (pending is None and key.shape[0] == query.shape[0]):  # one key row per query row: nothing shared
        return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, softcap=softcap, **kwargs)
    if kwargs.get("s_aux") is not None or (dropout and module.training):
        raise NotImplementedError("shared prefix cache: attention sinks (s_aux) and dropout are not supported; use HFLMM(cache='repeat')")
    run.pending = None
    N, H, q, d = query.shape
    B, kvH, P, _ = key.shape
    if N % B or H % kvH:
        raise RuntimeError(f"shared prefix cache: {N} query rows / {H} heads do not group over {B} prompts / {kvH} KV heads")
    R, g = N // B, H // kvH
    scale = scaling if scaling is not None else d**-0.5
    # query (N, H, q, d) -> (B, kvH, R*g*q, d): one matmul per prompt and KV head against its prefix
    qq = query.reshape(B, R, kvH, g, q, d).permute(0, 2, 1, 3, 4, 5).reshape(B, kvH, R * g * q, d)
    s_pre = (qq @ key.transpose(-1, -2)).mul_(scale).view(B, kvH, R, g, q, P)
    parts = [s_pre]
    if pending is not None:
        k_own, v_own = pending[1], pending[2]  # (N, kvH, q, d)
        ko = k_own.reshape(B, R, kvH, 1, q, d).permute(0, 2, 1, 3, 4, 5)  # (B, kvH, R, 1, q, d)
        qv = query.reshape(B, R, kvH, g, q, d).permute(0, 2, 1, 3, 4, 5)  # (B, kvH, R, g, q, d)
        parts.append((qv @ ko.transpose(-1, -2)).mul_(scale))  # (B, kvH, R, g, q, q)
    if softcap is not None:
        parts = [torch.tanh(s / softcap) * softcap for s in parts]
    if attention_mask is not None:
        K = attention_mask.shape[-1]
        if K != sum(s.shape[-1] for s in parts):
            raise RuntimeError(f"shared prefix cache: mask of {K} keys for {P} prefix + {q if pending is not None else 0} own keys")
        parts = [_apply(parts[0], _mask_part(attention_mask, B, R, kvH, g, q, 0, P))] + (
            [_apply(parts[1], _mask_part(attention_mask, B, R, kvH, g, q, P, K))] if len(parts) > 1 else [])
    w = torch.cat(parts, -1).softmax(-1, dtype=torch.float32).to(query.dtype)  # (B, kvH, R, g, q, P [+ q])
    out = (w[..., :P].reshape(B, kvH, R * g * q, P) @ value).view(B, kvH, R, g, q, d)
    if pending is not None:
        vo = v_own.reshape(B, R, kvH, 1, q, d).permute(0, 2, 1, 3, 4, 5)
        out = out + w[..., P:] @ vo
    return out.permute(0, 2, 1, 3, 4, 5).reshape(N, H, q, d).transpose(1, 2).contiguous(), None


ALL_ATTENTION_FUNCTIONS.register(NAME, shared_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)  # the model's own masks, bool, as for "sdpa"


_CONFIGS: "weakref.WeakKeyDictionary[nn.Module, list[PreTrainedConfig]]" = weakref.WeakKeyDictionary()


def _configs(model: nn.Module) -> list[PreTrainedConfig]:
    """Every config of ``model``'s modules and their sub-configs (found once per model: layer by
    layer stepping enters :func:`shared_last` once per decoder layer)."""
    if model not in _CONFIGS:
        _CONFIGS[model] = _find_configs(model)
    return _CONFIGS[model]


def _find_configs(model: nn.Module) -> list[PreTrainedConfig]:
    seen: dict[int, PreTrainedConfig] = {}
    for m in model.modules():
        c = getattr(m, "config", None)
        if isinstance(c, PreTrainedConfig):
            seen.setdefault(id(c), c)
            for sub in (getattr(c, k, None) for k in getattr(c, "sub_configs", {}) or {}):
                if isinstance(sub, PreTrainedConfig):
                    seen.setdefault(id(sub), sub)
    return list(seen.values())


@contextlib.contextmanager
def shared_last(model: nn.Module, cache: Any, repeats: int) -> Iterator[Any]:
    """Within: ``model``'s attention is :func:`shared_attention`; yields the cache to pass to its
    forward (the prefix ``cache`` shared by ``repeats`` rows per prompt, left as it was)."""
    if _active:
        raise RuntimeError("shared prefix cache: one shared last-token run at a time")
    configs = _configs(model)
    run = _Run(repeats, {id(c): c._attn_implementation_internal for c in configs})
    for c in configs:
        c._attn_implementation_internal = NAME
    _active.append(run)
    try:
        yield SharedCache.of(cache, run)
        if run.pending is not None:
            raise RuntimeError("shared prefix cache: a layer's new keys were never attended to")
    finally:
        _active.pop()
        for c in configs:
            c._attn_implementation_internal = run.original[id(c)]


def kv_bytes(cache: Any) -> int:
    """Bytes of the keys and values a cache holds (distinct storages counted once); for a shared cache
    after its forward, plus the most that one layer's own last-token rows took (freed after that layer)."""
    run = getattr(cache, "mmfv_shared_run", None)
    seen, total = set(), run.own_bytes if run is not None else 0
    for layer in cache.layers:
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor) and t.numel() and t.untyped_storage().data_ptr() not in seen:
                seen.add(t.untyped_storage().data_ptr())
                total += t.untyped_storage().nbytes()
    return total


@contextlib.contextmanager
def last_cache(model: nn.Module, cache: Any, repeats: int, mode: str) -> Iterator[Any]:
    """The cache for one last-token forward of ``repeats`` rows per prompt: ``"shared"`` (default,
    :func:`shared_last`) or ``"repeat"`` (the reference: a row-repeated copy, ``repeat_cache``)."""
    if mode == "repeat":
        from mmfv.models.hf_rows import repeat_cache

        yield repeat_cache(cache, repeats)
    elif mode == "shared":
        with shared_last(model, cache, repeats) as shared:
            yield shared
    else:
        cache_mode(mode)
