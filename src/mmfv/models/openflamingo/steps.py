"""OpenFlamingo's last token one decoder layer at a time (:class:`mmfv.models.base.LastSteps`).

Each call makes what GPT-NeoX's own forward hands its layers — the causal mask, the rotary
position embeddings, the layer's KV cache and the Flamingo media and text times — for the last
token alone, so a layer here computes what it computes inside :meth:`OpenFlamingoLMM.last`.
"""

from __future__ import annotations

from typing import Any

import torch

from mmfv.models.base import LastSteps, Prefix


class _LayerCache:
    """One layer's cached keys and values, updated as a transformers cache is (appended to, here
    into new tensors: the prefix's own are never modified)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.keys, self.values = keys, values

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat([self.keys, keys], dim=-2), torch.cat([self.values, values], dim=-2)


class FlamingoSteps(LastSteps):
    """The last token of each prompt of a :class:`Prefix`, layer by layer (GPT-NeoX language model)."""

    def __init__(self, model: Any, prefix: Prefix) -> None:
        from transformers import DynamicCache
        from transformers.masking_utils import create_causal_mask

        li = prefix.last_inputs
        lang = model.lang_encoder
        base = lang.base_model
        self.size = prefix.size
        self._layers = model.decoder_layers
        self._kv = prefix.cache  # per layer (k, v), each (N, heads, P, d)
        emb = base.emb_dropout(lang.get_input_embeddings()(li["input_ids"]))  # (N, 1, D)
        self._x = emb[:, 0]
        self._pos = li["position_ids"]  # (N, 1)
        self._mask = create_causal_mask(config=base.config, inputs_embeds=emb, attention_mask=li["attention_mask"],
                                        cache=DynamicCache(ddp_cache_data=list(self._kv)), position_ids=self._pos)
        self._rot = base.rotary_emb(emb, position_ids=self._pos)  # (cos, sin), each (N, 1, rotary dims)
        self._tt, self._media = li["text_time"], li["media"]
        self._norm, self._head = base.final_layer_norm, lang.get_output_embeddings()

    def embed(self) -> torch.Tensor:
        return self._x

    def layer(self, layer: int, hidden: torch.Tensor, repeats: int = 1) -> torch.Tensor:
        def rep(t: Any) -> Any:
            return t.repeat_interleave(repeats, dim=0) if repeats > 1 and isinstance(t, torch.Tensor) else t

        k, v = self._kv[layer]
        out = self._layers[layer](
            hidden[:, None], attention_mask=rep(self._mask), position_ids=rep(self._pos), layer_past=_LayerCache(rep(k), rep(v)), use_cache=True,
            position_embeddings=tuple(rep(t) for t in self._rot), flamingo_media=self._media, flamingo_text_time=rep(self._tt),
        )
        out = out[0] if isinstance(out, tuple) else out
        return out[:, 0]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._head(self._norm(hidden))
