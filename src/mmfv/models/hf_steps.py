"""The last token of an HF model one decoder layer at a time (:class:`~mmfv.models.base.LastSteps`).

Why: a vector added after layer ℓ needs layers ℓ+1..L−1 only, and a head patched at layer l needs
layers l..L−1 only (cached injection, the ``skip`` CMA engine); an HF forward always runs them all.

How, without naming an architecture: :func:`steps` runs the last-token forward (``HFLMM.last``) twice, with 1 and 2 rows per prompt, and records what each decoder layer is called with
(hidden states, masks, position embeddings, the cache, ...). Comparing the two records tells, for
every tensor, which dimension holds the rows (it doubles) — so any number of rows per prompt can be
made by repeating along it — and which inputs are the same for every row. Then a layer is called on
its own with those inputs, the hidden states replaced, inside the same cache context as ``last``.

It is used only when the records prove it exact for this model: each layer's hidden input is the
previous layer's output (nothing runs between layers, as it does in Idefics' gated cross-attention),
every input is a row repeat or a constant, and the final norm and LM head (found beside the layers)
give the forward's logits. Otherwise :func:`steps` returns None and callers run whole forwards.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers.cache_utils import Cache

from mmfv.models.base import LastSteps, Prefix
from mmfv.models.hf_cache import last_cache
from mmfv.models.specs.spec import attr_path

if TYPE_CHECKING:
    from mmfv.models.hf import HFLMM


class _Rows:
    """A tensor input whose dimension ``dim`` holds the rows (one per prompt in ``value``)."""

    def __init__(self, value: torch.Tensor, dim: int) -> None:
        self.value, self.dim = value, dim


_CACHE, _HIDDEN = object(), object()  # where the per-call cache and the hidden states go


class _NotSteppable(Exception):
    pass


def _record(lmm: "HFLMM", prefix: Prefix, repeats: int) -> tuple[list[tuple[tuple, dict]], list[Any], torch.Tensor]:
    """One last-token forward (``lmm.last``) of ``repeats`` rows per prompt: each decoder layer's
    (args, kwargs) and output, and the logits (N*repeats, V)."""
    layers = [lmm.decoder_layer(l) for l in range(lmm.n_layers)]
    ins: list[Any] = [None] * len(layers)
    outs: list[Any] = [None] * len(layers)

    def pre(l: int):
        def hook(mod, args, kwargs):
            ins[l] = (args, dict(kwargs))

        return hook

    def post(l: int):
        def hook(mod, args, output):
            outs[l] = output

        return hook

    handles = [m.register_forward_pre_hook(pre(l), with_kwargs=True) for l, m in enumerate(layers)]
    handles += [m.register_forward_hook(post(l)) for l, m in enumerate(layers)]
    try:
        with torch.no_grad():
            logits = lmm.last(prefix, repeats)
    finally:
        for h in handles:
            h.remove()
    if any(x is None for x in ins) or any(x is None for x in outs):
        raise _NotSteppable("a decoder layer did not run on the last token")
    return ins, outs, logits


def _hidden_of(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def _hidden_in(args: tuple, kwargs: dict) -> Any:
    """A decoder layer's hidden-state input: its first positional argument, else ``hidden_states``."""
    return args[0] if args else kwargs.get("hidden_states")


def _template(one: Any, two: Any) -> Any:
    """What a layer input is for any number of rows: a constant, a :class:`_Rows`, or the cache."""
    if isinstance(one, Cache) and isinstance(two, Cache):
        return _CACHE
    if isinstance(one, torch.Tensor) and isinstance(two, torch.Tensor):
        if one.shape == two.shape:
            if not torch.equal(one, two):
                raise _NotSteppable("an input differs between row counts")
            return one
        dims = [d for d in range(one.dim()) if two.shape[d] == 2 * one.shape[d]] if one.dim() == two.dim() else []
        for d in dims:
            if all(two.shape[e] == one.shape[e] for e in range(one.dim()) if e != d) and torch.equal(one.repeat_interleave(2, d), two):
                return _Rows(one, d)
        raise _NotSteppable(f"an input of shape {tuple(one.shape)} is not a row repeat ({tuple(two.shape)} with 2 rows per prompt)")
    if isinstance(one, (tuple, list)) and isinstance(two, (tuple, list)) and len(one) == len(two):
        return type(one)(_template(a, b) for a, b in zip(one, two))
    if isinstance(one, dict) and isinstance(two, dict) and one.keys() == two.keys():
        return {k: _template(one[k], two[k]) for k in one}
    if one is two or (not isinstance(one, torch.Tensor) and type(one) is type(two) and _same(one, two)):
        return one
    raise _NotSteppable(f"an input of type {type(one).__name__} differs between row counts")


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - objects without a usable ==: not provably the same
        return False


def _fill(t: Any, repeats: int, cache: Any) -> Any:
    if t is _CACHE:
        return cache
    if isinstance(t, _Rows):
        return t.value if repeats == 1 else t.value.repeat_interleave(repeats, t.dim)
    if isinstance(t, (tuple, list)):
        return type(t)(_fill(x, repeats, cache) for x in t)
    if isinstance(t, dict):
        return {k: _fill(v, repeats, cache) for k, v in t.items()}
    return t


class _HFSteps(LastSteps):
    """An HF model's last token layer by layer, from the recorded inputs of :func:`steps`."""

    def __init__(self, lmm: "HFLMM", prefix: Prefix, inputs: list[tuple[tuple, dict]], x0: torch.Tensor, head: tuple[nn.Module, nn.Module]) -> None:
        self.size = prefix.size
        self._lmm, self._prefix, self._inputs, self._x0 = lmm, prefix, inputs, x0
        self._norm, self._head = head

    def embed(self) -> torch.Tensor:
        return self._x0

    def layer(self, layer: int, hidden: torch.Tensor, repeats: int = 1) -> torch.Tensor:
        args_t, kwargs_t = self._inputs[layer]
        lmm = self._lmm
        with last_cache(lmm.module, self._prefix.cache, repeats, lmm.cache_mode) as cache:
            args, kwargs = _fill(args_t, repeats, cache), _fill(kwargs_t, repeats, cache)
            h = hidden[:, None].to(self._x0.dtype)  # (N*repeats, 1, D)
            if args and args[0] is _HIDDEN:
                args = (h, *args[1:])
            else:
                kwargs["hidden_states"] = h
            out = lmm.decoder_layer(layer)(*args, **kwargs)
        return _hidden_of(out)[:, -1]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._head(self._norm(hidden[:, None]))[:, -1]


def steps(lmm: "HFLMM", prefix: Prefix) -> LastSteps | None:
    """:class:`LastSteps` for ``prefix`` when the model allows it exactly (module doc), else None."""
    parent = attr_path(lmm.module, lmm.spec.layers.rsplit(".", 1)[0]) if "." in lmm.spec.layers else lmm.module
    norm, head = getattr(parent, "norm", None), lmm.module.get_output_embeddings()
    if not isinstance(norm, nn.Module) or not isinstance(head, nn.Module):
        return None
    try:
        ins1, outs1, logits1 = _record(lmm, prefix, 1)
        ins2, _, _ = _record(lmm, prefix, 2)
        inputs = []
        for l, ((a1, k1), (a2, k2)) in enumerate(zip(ins1, ins2)):
            h_in = _hidden_in(a1, k1)
            if not isinstance(h_in, torch.Tensor) or (l and not torch.equal(h_in, _hidden_of(outs1[l - 1]))):
                raise _NotSteppable(f"something runs between decoder layers {l - 1} and {l}")
            a1, a2 = (_HIDDEN, *a1[1:]) if a1 else a1, (_HIDDEN, *a2[1:]) if a2 else a2
            k1, k2 = {k: v for k, v in k1.items() if k != "hidden_states"}, {k: v for k, v in k2.items() if k != "hidden_states"}
            inputs.append((_template(a1, a2), _template(k1, k2)))
        x0 = _hidden_in(*ins1[0])[:, -1]
        with torch.no_grad():
            final = head(norm(_hidden_of(outs1[-1])[:, -1:]))[:, -1]
        if not torch.allclose(final.float(), logits1.float(), rtol=1e-4, atol=1e-5 * float(logits1.abs().max())):
            raise _NotSteppable("the final norm and LM head do not give the forward's logits")
    except _NotSteppable:
        return None
    return _HFSteps(lmm, prefix, inputs, x0, (norm, head))
