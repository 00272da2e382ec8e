"""OpenFlamingo behind the LMM protocol: head sets (self and gated cross-attention), encode, run, score.

Load by name with :meth:`OpenFlamingoLMM.load`: ``tiny-random`` (a small random model for tests and
dry runs, built by :mod:`mmfv.testing`) or a folder (layout in :mod:`.folder`).

As open_flamingo's factory does, the tokenizer gets the special tokens ``<|endofchunk|>`` and
``<image>`` (and ``<PAD>`` when it has no pad token), see :func:`add_flamingo_tokens`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from mmfv.models.base import LMM, Batch, FeatureCache, HeadSet, LastSteps, Prefix
from mmfv.models.openflamingo.modeling import OpenFlamingo
from mmfv.models.openflamingo.vision import ClipImageProcessor, VisionConfig
from mmfv.prompts import FLAMINGO, Prompt

FLAMINGO_TOKENS = ("<|endofchunk|>", "<image>")


def add_flamingo_tokens(tokenizer: Any) -> Any:
    """Add ``<|endofchunk|>``, ``<image>`` (and ``<PAD>`` if there is no pad token), in
    open_flamingo's order, so the ids match the released embeddings. Idempotent."""
    have = set(tokenizer.get_vocab())
    missing = [t for t in FLAMINGO_TOKENS if t not in have]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": list(FLAMINGO_TOKENS)})
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": "<PAD>"})
    return tokenizer


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


# --------------------------------------------------------------------------------------------------
# The LMM
# --------------------------------------------------------------------------------------------------


class OpenFlamingoLMM(LMM):
    """OpenFlamingo as an :class:`LMM`.

    Head sets: "self" = GPT-NeoX self-attention (``attention.dense`` input, L layers × H heads of
    ``attention.head_size``); "cross" = the gated cross-attention blocks (``attn.to_out`` input; one
    layer per block, in decoder order: cross layer c sits before decoder layer
    ``cross_layer_indices[c]``). Resampled image features are cached per image id (LRU).
    """

    protocols = ("mmfv", "fu2025")

    def use_protocol(self, protocol: str) -> bool:
        """``fu2025``: the paper's OpenFlamingo text (``<image>Q:x. A:y.<|endofchunk|>`` joined by newlines,
        the answer token read right after ``A:``), :data:`mmfv.prompts.FU2025`."""
        from mmfv.prompts import FU2025

        self.template = FU2025 if protocol == "fu2025" else FLAMINGO
        return protocol in self.protocols

    def __init__(self, model: OpenFlamingo, tokenizer: Any, model_id: str = "openflamingo", processor: ClipImageProcessor | None = None, cache_images: int = 4096, card: dict | None = None) -> None:
        self.module = model.eval()
        self.tok = tokenizer
        self.model_id = model_id
        self.template = FLAMINGO
        self.card = card or {}
        if processor is None:
            vcfg = getattr(model.vision_encoder, "cfg", None)
            if not isinstance(vcfg, VisionConfig):
                raise ValueError("pass an image processor for a vision encoder that is not a ClipVisionEncoder")
            processor = ClipImageProcessor.for_vision(vcfg)
        self.processor = processor
        self._feat_cache = FeatureCache(cache_images)  # image id -> (num_latents, vis_dim)
        fc = model.flamingo_config
        img = tokenizer.convert_tokens_to_ids(self.template.image_token)
        if img != fc.media_token_id:
            raise ValueError(f"the tokenizer's {self.template.image_token} is id {img} but the model's media token is {fc.media_token_id}")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if self.pad_id is None:
            raise ValueError("the tokenizer has neither a pad nor an end-of-text token to pad with")

    # --- loading ------------------------------------------------------------------------------
    @classmethod
    def load(cls, name: str | Path, dtype: torch.dtype | str | None = None, device: str | torch.device | None = None) -> "OpenFlamingoLMM":
        """``tiny-random`` (built by mmfv.testing) or an OpenFlamingo folder (layout in :mod:`.folder`)."""
        if str(name) == "tiny-random":
            from mmfv.testing.openflamingo import tiny_random

            return tiny_random()
        from mmfv.models.openflamingo.folder import from_folder

        return from_folder(name, dtype=dtype, device=device)

    # --- sizes and modules --------------------------------------------------------------------
    @property
    def config(self):
        return self.module.lang_encoder.config

    @property
    def n_layers(self) -> int:
        return len(self.module.decoder_layers)

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    def _attention(self, layer: int) -> nn.Module:
        return self.module.decoder_layers[layer].decoder_layer.attention

    @property
    def head_dim(self) -> int:
        a = self._attention(0)
        hd = getattr(a, "head_dim", None) or getattr(a, "head_size", None)
        if hd is None:
            raise AttributeError("the decoder's attention module exposes neither head_dim nor head_size")
        return int(hd)

    def _cross(self, c: int) -> nn.Module:
        idx = self.module.cross_layer_indices
        if not 0 <= c < len(idx):
            raise IndexError(f"cross layer {c} is out of range: the model has {len(idx)} cross-attention layers")
        return self.module.decoder_layers[idx[c]].gated_cross_attn_layer.attn

    @property
    def head_sets(self) -> dict[str, HeadSet]:
        sets = {"self": HeadSet("self", self.n_layers, self.o_proj(0).in_features // self.head_dim, self.head_dim)}
        if self.module.cross_layer_indices:
            x = self._cross(0)
            sets["cross"] = HeadSet("cross", len(self.module.cross_layer_indices), x.heads, x.dim_head)
        return sets

    def o_proj(self, layer: int, head_set: str = "self") -> nn.Linear:
        if head_set == "self":
            return self._attention(layer).dense
        if head_set == "cross":
            return self._cross(layer).to_out
        raise KeyError(f"OpenFlamingo has head sets 'self' and 'cross', not {head_set!r}")

    def decoder_layer(self, layer: int) -> nn.Module:
        return self.module.decoder_layers[layer]

    def scene_config(self):
        """Synthetic scenes for this model: the card's, else the default look (a real model takes any
        image; the processor resizes it)."""
        from mmfv.data.scenes import SceneConfig

        sc = self.card.get("scene_config")
        return SceneConfig(**sc) if sc else SceneConfig()

    def cross_layer_to_decoder_layer(self, c: int) -> int:
        """The decoder layer whose input cross layer ``c`` transforms."""
        return self.module.cross_layer_indices[c]

    def decoder_layer_of(self, layer: int, head_set: str = "self") -> int | None:
        """Self layer l is decoder layer l; cross layer c sits inside decoder layer ``cross_layer_indices[c]``
        (before its self-attention), so a cross patch leaves that decoder layer's input unchanged too."""
        return self.cross_layer_to_decoder_layer(layer) if head_set == "cross" else super().decoder_layer_of(layer, head_set)

    def head_output_gate(self, layer: int, head_set: str = "self") -> float:
        """The factor between ``o_proj`` output and what reaches the residual stream: 1 for "self",
        tanh(attn_gate) for "cross" (a cross head writes tanh(gate)·W_O[:, h]·a into the residual)."""
        if head_set == "self":
            return 1.0
        idx = self.cross_layer_to_decoder_layer(layer)
        return float(self.module.decoder_layers[idx].gated_cross_attn_layer.attn_gate.detach().float().tanh())

    # --- encoding -----------------------------------------------------------------------------
    def image_features(self, prompts: Sequence[Prompt], chunk: int = 32) -> list[torch.Tensor]:
        """Per prompt, (n_images, num_latents, vis_dim): vision encoder + perceiver, once per image."""
        need = self._feat_cache.missing(it for p in prompts for it in p.items)
        if need:
            ids, items = list(need), list(need.values())
            dev = _device_of(self.module)
            dtype = next(self.module.perceiver.parameters()).dtype
            with torch.no_grad():
                for s in range(0, len(items), chunk):
                    px = self.processor([it.load_image() for it in items[s : s + chunk]]).to(dev, dtype)
                    for iid, f in zip(ids[s : s + chunk], self.module.encode_images(px)):
                        self._feat_cache.put(iid, f)
        return [torch.stack([self._feat_cache[it.image_id] for it in p.items]) for p in prompts]

    def encode(self, prompts: Sequence[Prompt]) -> Batch:
        if not prompts:
            raise ValueError("no prompts to encode")
        seqs = [self.tok(self.template.render(p))["input_ids"] for p in prompts]
        media_id = self.module.flamingo_config.media_token_id
        for p, s in zip(prompts, seqs):
            if s.count(media_id) != len(p.items):
                raise ValueError(f"prompt has {len(p.items)} images but tokenizes to {s.count(media_id)} {self.template.image_token} tokens")
        T = max(len(s) for s in seqs)
        limit = getattr(self.config, "max_position_embeddings", None)
        if limit and T > limit:
            raise ValueError(f"prompt of {T} tokens exceeds the language model's context of {limit}: lower k")
        dev = _device_of(self.module)
        ids = torch.full((len(seqs), T), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), T), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, T - len(s) :] = torch.tensor(s)
            mask[i, T - len(s) :] = 1
        feats = self.image_features(prompts)
        M = max(f.shape[0] for f in feats)
        media = feats[0].new_zeros(len(feats), M, *feats[0].shape[1:])
        for i, f in enumerate(feats):
            media[i, : f.shape[0]] = f
        answers = torch.tensor([self.answer_token_id(p.answer) for p in prompts], device=dev)
        return Batch({"input_ids": ids.to(dev), "attention_mask": mask.to(dev), "media": media}, answers, list(prompts))

    def answer_token_id(self, answer_text: str) -> int:
        text = answer_text if answer_text[:1].isspace() else self.template.answer_prefix + answer_text
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"answer {answer_text!r} tokenizes to nothing")
        return int(ids[0])

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    # --- running ------------------------------------------------------------------------------
    @staticmethod
    def _positions(mask: torch.Tensor) -> torch.Tensor:
        return (mask.cumsum(-1) - 1).clamp(min=0)

    def _run(self, ids: torch.Tensor, mask: torch.Tensor, media: torch.Tensor):
        return self.module(input_ids=ids, attention_mask=mask, media=media, position_ids=self._positions(mask), use_cache=False)

    def forward(self, batch: Batch) -> torch.Tensor:
        inp = batch.inputs
        return self._run(inp["input_ids"], inp["attention_mask"], inp["media"]).logits

    def last_logits(self, batch: Batch) -> torch.Tensor:
        """Logits (B, V) of the last position only (the LM head skips the others)."""
        inp = batch.inputs
        mask = inp["attention_mask"]
        return self.module(input_ids=inp["input_ids"], attention_mask=mask, media=inp["media"], position_ids=self._positions(mask), use_cache=False,
                           logits_to_keep=1).logits[:, -1]

    def prefix(self, batch: Batch) -> Prefix:
        inp = batch.inputs
        ids, mask, media = inp["input_ids"], inp["attention_mask"], inp["media"]
        if ids.shape[1] < 2:
            raise ValueError("a prompt of one token has no prefix to cache")
        pos = self._positions(mask)
        tt = self.module.text_time(ids)  # over the whole row: the last token's image count included
        out = self.module(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], media=media, text_time=tt[:, :-1], position_ids=pos[:, :-1], use_cache=True)
        kv = [(layer.keys, layer.values) for layer in out.cache.layers]
        last = {"input_ids": ids[:, -1:], "attention_mask": mask, "position_ids": pos[:, -1:], "text_time": tt[:, -1:], "media": media}
        return Prefix(kv, last, batch.size)

    def last(self, prefix: Prefix, repeats: int) -> torch.Tensor:
        from transformers import DynamicCache

        rep = (lambda t: t.repeat_interleave(repeats, dim=0)) if repeats > 1 else (lambda t: t)  # noqa: E731
        # A fresh cache object per call: updating it concatenates into new tensors, so the prefix's
        # own tensors are never modified and last() can run any number of times.
        cache = DynamicCache(ddp_cache_data=[(rep(k), rep(v)) for k, v in prefix.cache])
        li = prefix.last_inputs
        # Media stay one row per prompt: the cross-attention shares them across the repeated rows.
        out = self.module(
            input_ids=rep(li["input_ids"]), attention_mask=rep(li["attention_mask"]), media=li["media"],
            text_time=rep(li["text_time"]), position_ids=rep(li["position_ids"]), cache=cache, use_cache=True,
        )
        return out.logits[:, -1]

    def last_steps(self, prefix: Prefix) -> LastSteps:
        from mmfv.models.openflamingo.steps import FlamingoSteps

        return FlamingoSteps(self.module, prefix)

    def forward_with_suffix(self, batch: Batch, suffix_ids: list[int]) -> torch.Tensor:
        inp = batch.inputs
        ids, mask = inp["input_ids"], inp["attention_mask"]
        if suffix_ids:
            s = torch.tensor([suffix_ids], device=ids.device).expand(batch.size, -1)
            ids, mask = torch.cat([ids, s], 1), torch.cat([mask, torch.ones_like(s)], 1)
        return self._run(ids, mask, inp["media"]).logits
