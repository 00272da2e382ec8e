"""Row and field helpers of models/hf.py: merging per-image vision features into one batch,
repeating a batch's rows (inputs and KV cache) for the fast CMA engine's last-position runs, the
forward's kwargs, and the positions a model computes itself."""

from __future__ import annotations

import copy
from typing import Any

import torch


class _Stop(Exception):
    pass


def forward_kwargs(inputs: dict[str, Any]) -> dict[str, Any]:
    """Forward kwargs (a fresh outer dict for mm_encoder_outputs, which forwards may fill in)."""
    out = dict(inputs)
    if isinstance(out.get("mm_encoder_outputs"), dict):
        out["mm_encoder_outputs"] = dict(out["mm_encoder_outputs"])
    return out


def model_positions(model: Any, stack: Any, kwargs: dict[str, Any]) -> torch.Tensor | None:
    """The position_ids ``model`` hands its decoder ``stack`` for ``kwargs`` (e.g. M-RoPE's), or None;
    the forward stops there."""
    box: dict[str, Any] = {}

    def pre(mod, args, kw):
        box["pos"] = kw.get("position_ids")
        raise _Stop

    h = stack.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        with torch.no_grad():
            model(**kwargs, use_cache=False)
    except _Stop:
        pass
    finally:
        h.remove()
    return box.get("pos")


def merge_features(values: list[Any]) -> Any:
    """Concatenate per-image feature fields in image order (tensor: dim 0; tuple/list of tensors:
    the sequences; list of sequences, e.g. per-layer deepstack features: field by field)."""
    v0 = values[0]
    if isinstance(v0, torch.Tensor):
        return torch.cat(values, 0)
    if isinstance(v0, (list, tuple)) and (not v0 or isinstance(v0[0], torch.Tensor)):
        return type(v0)(x for v in values for x in v)
    if isinstance(v0, (list, tuple)):
        return type(v0)(merge_features(list(col)) for col in zip(*values))
    raise TypeError(f"cannot merge image features of type {type(v0).__name__}")


def repeat_rows(v: Any, repeats: int, B: int, key: str) -> Any:
    """Repeat each prompt's rows ``repeats`` times, row-major (prompt 0's copies first)."""
    if not isinstance(v, torch.Tensor) or repeats == 1:
        return v
    if key == "position_ids" and v.dim() == 3:  # (n_axes, B, T) for M-RoPE
        return v.repeat_interleave(repeats, dim=1)
    if v.shape[0] == B:
        return v.repeat_interleave(repeats, dim=0)
    if v.shape[0] % B == 0:  # (B * k, ...) blocks of k per prompt (e.g. per-image embeddings)
        return v.view(B, -1, *v.shape[1:]).repeat_interleave(repeats, dim=0).flatten(0, 1)
    raise ValueError(f"cannot repeat input {key!r} of shape {tuple(v.shape)} for {B} prompts")


def repeat_cache(cache: Any, repeats: int) -> Any:
    """A copy of an HF cache with every row repeated; the original stays as it was."""
    new = copy.copy(cache)
    new.layers = [copy.copy(layer) for layer in cache.layers]
    if repeats > 1:
        for layer in new.layers:
            if getattr(layer, "keys", None) is not None and layer.keys.numel():
                layer.batch_repeat_interleave(repeats)
    return new
