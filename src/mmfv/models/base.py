"""The protocol every model offers to the method code (cma, vectors, evaluate, finetune, compose).

The method code never names an architecture: it sees an :class:`LMM` — how to encode prompts into a
:class:`Batch` (images encoded once and cached), run it, find each layer's attention output
projection (whose *input* holds the per-head outputs) and decoder-layer output (the residual
stream), the sizes L, H, head_dim, D, and how to score answers. Adapters: models/tiny (ours),
models/openflamingo (the paper's model) and models/hf.py (any HF vision-language model described by
a spec).
"""

from __future__ import annotations

import abc
import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

import torch
from torch import nn

from mmfv.prompts import Item, Prompt, Template


class FeatureCache:
    """LRU cache of per-image encodings keyed by image id: the vision side runs once per image however
    many prompts (and patched runs) reuse it. Shared by every adapter."""

    def __init__(self, max_items: int = 4096) -> None:
        self._d: OrderedDict[Any, Any] = OrderedDict()
        self.max_items = max_items

    def missing(self, items: Iterable[Item]) -> dict[str, Item]:
        """The items whose image is not cached, one per image id, in first-seen order."""
        need: dict[str, Item] = {}
        for it in items:
            if it.image_id not in self._d and it.image_id not in need:
                need[it.image_id] = it
        return need

    def put(self, key: Any, value: Any) -> None:
        self._d[key] = value
        self._d.move_to_end(key)
        if len(self._d) > self.max_items:
            self._d.popitem(last=False)

    def get(self, key: Any, default: Any = None) -> Any:
        """The cached value (marked as just used), or ``default``."""
        if key not in self._d:
            return default
        self._d.move_to_end(key)
        return self._d[key]

    def __getitem__(self, key: Any) -> Any:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def __contains__(self, key: Any) -> bool:
        return key in self._d

    def __len__(self) -> int:
        return len(self._d)

    def clear(self) -> None:
        self._d.clear()


_MISSING = object()


@dataclass
class Batch:
    """Encoded prompts, left-padded so the last prompt token is at position T-1 in every row.

    ``inputs`` are the model's keyword arguments; ``answer_ids`` (B,) the first answer token of
    each prompt (what P(y0) scores).
    """

    inputs: dict[str, Any]
    answer_ids: torch.Tensor  # (B,)
    prompts: list[Prompt]

    @property
    def size(self) -> int:
        return len(self.prompts)

    @property
    def length(self) -> int:
        return int(self.inputs["input_ids"].shape[1])


@dataclass
class Prefix:
    """The KV cache of all positions but the last, and what is needed to run the last one."""

    cache: Any
    last_inputs: dict[str, Any]  # model kwargs for the last position alone (batch of 1 row per prompt)
    size: int


class LastSteps(abc.ABC):
    """The last prompt token run one decoder layer at a time on a :class:`Prefix`'s KV cache.

    What exact speed-ups at the last position build on: a vector added after layer ℓ needs layers
    ℓ+1..L−1 only (:meth:`LMM.last_from`), and a head patched at layer l needs layers l..L−1 only
    (the ``skip`` CMA engine). Rows: ``repeats`` per prompt, row-major (prompt 0's copies first),
    every copy sharing its prompt's cache. An adapter offers this through :meth:`LMM.last_steps`.
    """

    size: int  # prompts N

    @abc.abstractmethod
    def embed(self) -> torch.Tensor:
        """(N, D): the last token's input to decoder layer 0."""

    @abc.abstractmethod
    def layer(self, layer: int, hidden: torch.Tensor, repeats: int = 1) -> torch.Tensor:
        """(N*repeats, D) -> (N*repeats, D): decoder layer ``layer`` (hooks on it fire) on the last
        token, whose input is ``hidden``, attending to its prompt's cached positions."""

    @abc.abstractmethod
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(M, D) output of the last decoder layer -> (M, V) logits (final norm and LM head)."""


@dataclass(frozen=True)
class HeadSet:
    """A family of attention heads: ``n_layers`` layers × ``n_heads`` heads of ``head_dim``.

    "self" is every model's decoder self-attention; Flamingo-style models add "cross".
    """

    name: str
    n_layers: int
    n_heads: int
    head_dim: int


class LMM(abc.ABC):
    """A large multimodal model as the method code sees it."""

    model_id: str
    template: Template
    module: nn.Module

    # --- sizes -------------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def n_layers(self) -> int: ...

    @property
    @abc.abstractmethod
    def hidden_size(self) -> int: ...

    @property
    def head_sets(self) -> dict[str, HeadSet]:
        """Head sets this model exposes; "self" always."""
        o = self.o_proj(0)
        hd = self.head_dim
        return {"self": HeadSet("self", self.n_layers, o.in_features // hd, hd)}

    @property
    @abc.abstractmethod
    def head_dim(self) -> int:
        """Per-head size, read from the attention module (never D // H)."""

    @property
    def n_heads(self) -> int:
        return self.head_sets["self"].n_heads

    # --- modules hooks attach to --------------------------------------------------------------
    @abc.abstractmethod
    def o_proj(self, layer: int, head_set: str = "self") -> nn.Linear:
        """The attention output projection of ``layer``; its input is the head outputs, head-major."""

    @abc.abstractmethod
    def decoder_layer(self, layer: int) -> nn.Module:
        """Decoder layer ``layer``; its output is the residual stream after it."""

    def head_output_gate(self, layer: int, head_set: str = "self") -> float | torch.Tensor:
        """Factor between ``o_proj``'s output and what reaches the residual stream: 1 for plain
        attention; gated (Flamingo-style) cross-attention returns its gate, a scalar or (D,)."""
        return 1.0

    def attention_projections(self, layer: int, head_set: str = "self") -> dict[str, nn.Linear]:
        """Full module name -> Linear of ``layer``'s attention block: the Linear children of the
        module that owns ``o_proj`` (query, key, value and output projections, fused or not).
        What adapter baselines (LoRA) train."""
        o = self.o_proj(layer, head_set)
        for name, m in self.module.named_modules():
            if any(c is o for c in m.children()):
                return {f"{name}.{cn}" if name else cn: c for cn, c in m.named_children() if isinstance(c, nn.Linear)}
        raise ValueError(f"{self.model_id}: the attention output projection of layer {layer} is not inside the model's modules")

    def input_embeddings(self) -> nn.Module:
        """The token embedding module; its output at :meth:`prepend`'s placeholders is what a soft prompt replaces."""
        return self.module.get_input_embeddings()

    def prepend(self, batch: Batch, n: int) -> Batch:
        """``batch`` with ``n`` placeholder positions before every prompt: attended, numbered first (the
        real tokens' positions move up by ``n``), holding a text token whose embedding a hook on
        :meth:`input_embeddings` replaces (soft prompts, virtual tokens). This default extends
        ``input_ids``, ``attention_mask``, precomputed ``position_ids`` (..., B, T) (the placeholders
        take 0..n−1, the prompt's move up by n) and any other per-token (B, T, …) rows (token types:
        the placeholders are text, like each row's last token); an adapter with other
        position-indexed inputs overrides it."""
        inp = dict(batch.inputs)
        ids, mask = inp["input_ids"], inp["attention_mask"]
        fill = ids[:, -1:].expand(-1, n)  # each row's last prompt token: a text token, never an image slot
        inp["input_ids"] = torch.cat([fill, ids], 1)
        inp["attention_mask"] = torch.cat([torch.ones_like(fill, dtype=mask.dtype), mask], 1)
        for k, v in batch.inputs.items():
            if k in ("input_ids", "attention_mask") or not isinstance(v, torch.Tensor):
                continue
            if k == "position_ids":
                inp[k] = torch.cat([torch.arange(n, dtype=v.dtype, device=v.device).expand(*v.shape[:-1], n), v + n], -1)
            elif v.dim() >= 2 and v.shape[:2] == ids.shape:  # (B, T, ...) per-token rows
                inp[k] = torch.cat([v[:, -1:].expand(-1, n, *v.shape[2:]), v], 1)
        return Batch(inp, batch.answer_ids, batch.prompts)

    # --- running ------------------------------------------------------------------------------
    @abc.abstractmethod
    def encode(self, prompts: Sequence[Prompt]) -> Batch:
        """Tokenize and left-pad ``prompts``; image features come from a per-image cache."""

    @abc.abstractmethod
    def forward(self, batch: Batch) -> torch.Tensor:
        """Logits (B, T, V) of the whole prompt."""

    @abc.abstractmethod
    def prefix(self, batch: Batch) -> Prefix:
        """Run positions < T-1 once and keep their KV cache (the fast CMA engine's first pass)."""

    @abc.abstractmethod
    def last(self, prefix: Prefix, repeats: int) -> torch.Tensor:
        """Logits (B*repeats, V) of the last position, each prompt's row repeated ``repeats`` times
        (row-major: prompt 0's copies first) and sharing its cache."""

    def last_steps(self, prefix: Prefix) -> LastSteps | None:
        """The last token layer by layer on ``prefix`` (see :class:`LastSteps`), or None: this adapter
        runs the last token only as a whole (:meth:`last`), and the methods below fall back to that."""
        return None

    def decoder_layer_of(self, layer: int, head_set: str = "self") -> int | None:
        """The decoder layer that holds head-set layer ``layer`` (a patch there leaves the input of this
        decoder layer unchanged), or None when unknown. Self-attention layer l is decoder layer l."""
        return layer if head_set == "self" else None

    @torch.no_grad()
    def last_residuals(self, prefix: Prefix, layers: Sequence[int] | None = None) -> dict[int, torch.Tensor]:
        """Residual stream (N, D) after each decoder layer in ``layers`` (default: all) at the last
        position, nothing patched: what a vector added there (``hooks.add_to_layer``) adds to."""
        layers = sorted(set(range(self.n_layers) if layers is None else layers))
        steps = self.last_steps(prefix)
        if steps is not None:
            out, h = {}, steps.embed()
            for l in range(layers[-1] + 1):
                h = steps.layer(l, h)
                if l in layers:
                    out[l] = h
            return out
        store: dict[int, torch.Tensor] = {}

        def grab(l: int):
            def hook(mod, args, output):
                h = output[0] if isinstance(output, tuple) else output  # (N, 1, D)
                store[l] = h[:, -1].detach().clone()

            return hook

        handles = [self.decoder_layer(l).register_forward_hook(grab(l)) for l in layers]
        try:
            self.last(prefix, 1)
        finally:
            for h in handles:
                h.remove()
        return store

    def last_from(self, prefix: Prefix, layer: int, hidden: torch.Tensor, repeats: int = 1) -> torch.Tensor:
        """Logits (N*repeats, V) of the last position when the residual after decoder layer ``layer``
        there is ``hidden`` (N*repeats, D), e.g. :meth:`last_residuals` plus a vector. Gradients flow
        into ``hidden``. With :meth:`last_steps` only layers after ``layer`` run; else the whole last
        token runs (:meth:`last`) with that layer's output replaced."""
        steps = self.last_steps(prefix)
        if steps is not None:
            h = hidden
            for l in range(layer + 1, self.n_layers):
                h = steps.layer(l, h, repeats)
            return steps.logits(h)
        fired = []

        def put(mod, args, output):
            h = output[0] if isinstance(output, tuple) else output  # (N*repeats, 1, D)
            new = torch.cat([h[:, :-1], hidden.to(h.dtype).to(h.device)[:, None]], dim=1)
            fired.append(1)
            return (new, *output[1:]) if isinstance(output, tuple) else new

        handle = self.decoder_layer(layer).register_forward_hook(put)
        try:
            logits = self.last(prefix, repeats)
        finally:
            handle.remove()
        if not fired:
            raise RuntimeError(f"{self.model_id}: decoder layer {layer} did not run on the last token")
        return logits

    @abc.abstractmethod
    def answer_token_id(self, answer_text: str) -> int:
        """First token of ``answer_text`` as the model writes it after the prompt."""

    @abc.abstractmethod
    def decode(self, ids: list[int]) -> str: ...

    protocols: tuple[str, ...] = ("mmfv",)
    """Prompt protocols whose reference text this adapter can write (see :meth:`use_protocol`)."""

    def use_protocol(self, protocol: str) -> bool:
        """Write prompts as ``protocol``'s reference code does (``fu2025``: the paper's text); returns
        False, changing nothing, when this model has no such form (mmfv-tiny reads only the template
        it was trained on)."""
        return protocol == "mmfv"

    @property
    def eos_texts(self) -> tuple[str, ...]:
        """Text pieces that end a generated answer (the template's full stop, end-of-chunk)."""
        return (".", self.template.eoc)

    # --- derived ------------------------------------------------------------------------------
    def last_logits(self, batch: Batch) -> torch.Tensor:
        """Logits (B, V) at the last prompt position."""
        return self.forward(batch)[:, -1]

    def answer_probs(self, batch: Batch) -> torch.Tensor:
        """P(y0) (B,): probability of each prompt's first answer token at the last position."""
        probs = self.last_logits(batch).float().softmax(-1)
        return probs.gather(1, batch.answer_ids[:, None].to(probs.device))[:, 0]

    def predict(self, batch: Batch) -> torch.Tensor:
        """Argmax first token (B,)."""
        return self.last_logits(batch).argmax(-1)

    def batches(self, prompts: Sequence[Prompt], batch_size: int) -> Iterator[Batch]:
        for i in range(0, len(prompts), batch_size):
            yield self.encode(prompts[i : i + batch_size])

    @torch.no_grad()
    def generate(self, prompts: Sequence[Prompt], max_new_tokens: int = 4) -> list[str]:
        """Greedy answers (text up to the template's full stop), for exact-match scoring."""
        out = []
        for p in prompts:
            batch = self.encode([p])
            ids: list[int] = []
            for _ in range(max_new_tokens):
                nxt = int(self.forward_with_suffix(batch, ids)[0, -1].argmax())
                ids.append(nxt)
                text = self.decode(ids)
                if any(e in text for e in self.eos_texts):
                    break
            text = self.decode(ids)
            for e in self.eos_texts:
                text = text.split(e)[0]
            out.append(text.strip())
        return out

    @abc.abstractmethod
    def forward_with_suffix(self, batch: Batch, suffix_ids: list[int]) -> torch.Tensor:
        """Logits (1, T+len(suffix), V) of a one-prompt batch continued by ``suffix_ids``."""

    def config_hash(self) -> str:
        """Short hash of the model's config and a sample of its weights (first and last value of every
        parameter): vectors remember which model they came from, and a retrained checkpoint of the
        same architecture is another model. Cheap at any size (two values per tensor)."""
        cfg = getattr(self.module, "config", None)
        d = cfg.to_dict() if hasattr(cfg, "to_dict") else {"repr": repr(self.module)}
        d = {k: v for k, v in d.items() if k not in ("_name_or_path", "transformers_version", "torch_dtype", "dtype")}
        h = hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode())
        ends = [(n, p.reshape(-1)[[0, -1]]) for n, p in sorted(self.module.named_parameters()) if p.numel() and not p.is_meta]
        if ends:
            vals = torch.stack([v.detach().float() for _, v in ends]).cpu()  # (P, 2)
            h.update(json.dumps([n for n, _ in ends]).encode())
            h.update(vals.numpy().tobytes())
        return h.hexdigest()[:16]

    def freeze(self) -> None:
        """Every weight frozen (fine-tuning trains only vectors)."""
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.module.eval()
