"""Read and patch head outputs; add vectors to the residual stream. Pure context managers.

Head outputs are the *input* of a layer's attention output projection (o_proj), at chosen
positions, split head-major into H slices of ``head_dim`` (read from the attention module).
Decoder layers may return a tensor or a tuple whose first element is the hidden states; both work.
Every hook checks on exit that it ran: a hook that matched nothing raises instead of silently
measuring nothing.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Mapping, Sequence

import torch

from mmfv.models.base import LMM


class HookError(RuntimeError):
    """A hook matched no module or never ran."""


def _check_layer(lmm: LMM, layer: int, head_set: str = "self") -> None:
    n = lmm.head_sets[head_set].n_layers if head_set in lmm.head_sets else None
    if n is None:
        raise HookError(f"model has no head set {head_set!r}: it has {', '.join(lmm.head_sets)}")
    if not 0 <= layer < n:
        raise HookError(f"layer {layer} is out of range: the model's {head_set} head set has layers 0..{n - 1}")


def _positions(pos, T: int, B: int, device) -> torch.Tensor:
    """Normalise a position spec (int, or (B,) tensor) to a (B,) index tensor."""
    if isinstance(pos, int):
        p = pos if pos >= 0 else T + pos
        return torch.full((B,), p, dtype=torch.long, device=device)
    return torch.as_tensor(pos, device=device).long() % T


class _Fired:
    def __init__(self, names: Sequence[str]) -> None:
        self.count = {n: 0 for n in names}

    def check(self) -> None:
        silent = [n for n, c in self.count.items() if c == 0]
        if silent:
            raise HookError(f"hook on {silent[0]} never ran ({len(silent)} silent): the module is not on the forward path")


@contextmanager
def read_heads(lmm: LMM, layers: Sequence[int] | None = None, position: int | torch.Tensor = -1, head_set: str = "self") -> Iterator[dict[int, torch.Tensor]]:
    """Capture head outputs at ``position``: ``store[layer]`` becomes (B, H, head_dim).

    Detached; with several forward calls in the context the last one wins.
    """
    hs = lmm.head_sets[head_set] if head_set in lmm.head_sets else None
    layers = list(range(lmm.n_layers if hs is None else hs.n_layers)) if layers is None else list(layers)
    for l in layers:
        _check_layer(lmm, l, head_set)
    store: dict[int, torch.Tensor] = {}
    fired = _Fired([f"{head_set} o_proj of layer {l}" for l in layers])
    handles = []

    def make(l: int, name: str):
        def pre(mod, args):
            x = args[0]  # (B, T, H*d)
            B, T, _ = x.shape
            idx = _positions(position, T, B, x.device)
            store[l] = x[torch.arange(B, device=x.device), idx].detach().view(B, hs.n_heads, hs.head_dim).clone()
            fired.count[name] += 1

        return pre

    try:
        for l in layers:
            name = f"{head_set} o_proj of layer {l}"
            handles.append(lmm.o_proj(l, head_set).register_forward_pre_hook(make(l, name)))
        yield store
        fired.check()
    finally:
        for h in handles:
            h.remove()


@contextmanager
def patch_heads(
    lmm: LMM,
    patches: Mapping[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    position: int | torch.Tensor = -1,
    head_set: str = "self",
) -> Iterator[None]:
    """Replace head outputs: ``patches[layer] = (rows (n,), heads (n,), values (n, head_dim))``.

    Row ``rows[i]`` of the batch gets head ``heads[i]`` of ``layer`` replaced by ``values[i]`` at
    ``position`` (an int for every row, or a (B,) tensor). Other rows/heads/positions are untouched.
    """
    hs = lmm.head_sets[head_set] if head_set in lmm.head_sets else None
    for l in patches:
        _check_layer(lmm, l, head_set)
    fired = _Fired([f"{head_set} o_proj of layer {l}" for l in patches])
    handles = []

    def make(l: int, name: str):
        rows, heads, values = patches[l]
        if len(heads) and (int(heads.max()) >= hs.n_heads or int(heads.min()) < 0):
            raise HookError(f"head index out of range for layer {l}: the model has {hs.n_heads} heads")

        def pre(mod, args):
            x = args[0]
            B, T, _ = x.shape
            idx = _positions(position, T, B, x.device)
            r = rows.to(x.device)
            x = x.clone()
            xv = x.view(B, T, hs.n_heads, hs.head_dim)
            xv[r, idx[r], heads.to(x.device)] = values.to(x.dtype).to(x.device)
            fired.count[name] += 1
            return (x, *args[1:])

        return pre

    try:
        for l in patches:
            name = f"{head_set} o_proj of layer {l}"
            handles.append(lmm.o_proj(l, head_set).register_forward_pre_hook(make(l, name)))
        yield
        fired.check()
    finally:
        for h in handles:
            h.remove()


@contextmanager
def add_to_layer(lmm: LMM, layer: int, vector: torch.Tensor, position: int | torch.Tensor | None = -1, scale: float = 1.0) -> Iterator[None]:
    """Add ``scale * vector`` (D,) or (B, D) to decoder layer ``layer``'s output.

    ``position``: an int (e.g. -1, the last prompt position), a (B,) tensor, or None for every
    position (used when generating). Gradients flow into ``vector``.
    """
    if not 0 <= layer < lmm.n_layers:
        raise HookError(f"layer {layer} is out of range: the model has layers 0..{lmm.n_layers - 1}")
    if vector.shape[-1] != lmm.hidden_size:
        raise HookError(f"vector has size {vector.shape[-1]} but the model's hidden size is {lmm.hidden_size}")
    fired = _Fired([f"decoder layer {layer}"])

    def hook(mod, args, output):
        h = output[0] if isinstance(output, tuple) else output  # (B, T, D)
        B, T, _ = h.shape
        v = scale * vector.to(h.dtype).to(h.device)
        if position is None:
            h = h + (v if v.dim() == 1 else v[:, None])
        else:
            idx = _positions(position, T, B, h.device)
            add = torch.zeros_like(h)
            add[torch.arange(B, device=h.device), idx] = v if v.dim() == 2 else v.expand(B, -1)
            h = h + add
        fired.count[f"decoder layer {layer}"] += 1
        return (h, *output[1:]) if isinstance(output, tuple) else h

    handle = lmm.decoder_layer(layer).register_forward_hook(hook)
    try:
        yield
        fired.check()
    finally:
        handle.remove()
