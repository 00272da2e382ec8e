"""Any Hugging Face vision-language (or text-only language) model behind the LMM protocol, driven by a family spec.

One adapter for every family: ``models/specs/<family>.py`` declares where things live (decoder
layers, attention output projections, cross-attention), the prompt template, and which extra
processor outputs the forward needs; nothing here names an architecture.

Images. Each image (by ``Item.image_id``) is processed once: the family's processor runs on that
image alone (models/hf_processor.py), which gives its pixel inputs and the text its placeholder
expands to. The vision tower then runs once per image and its output is cached (LRU). A batch's text is the rendered prompts with
each placeholder replaced by its image's expansion, tokenized in one call (as the processor itself
does), left-padded. Self-attention families receive the cached features through the forward's
``mm_encoder_outputs``; cross-attention families through their spec's ``vision`` hooks.

The fast path. :meth:`HFLMM.prefix` runs positions < T-1 once with the HF KV cache; :meth:`HFLMM.last` runs the
last token alone, its rows sharing that one cache (models/hf_cache.py; ``cache="repeat"``: the reference, a copy
per row). Positions are made once in :meth:`HFLMM.encode` (``position_ids`` in the batch): both paths see the same.

Text. Items without an image get no placeholder and no vision work, in any family; a text-only
family (``Spec.images`` False: Llama, Qwen2/3, Gemma 3 text) has the tokenizer as its processor and
refuses items with an image. Checkpoints come from a folder, the HF cache or a GGUF file
(:meth:`HFLMM.load` with ``gguf_file``; models/gguf.py checks the file first).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from mmfv.models.base import LMM, Batch, FeatureCache, HeadSet, LastSteps, Prefix
from mmfv.models.hf_cache import cache_mode, last_cache
from mmfv.models.hf_processor import chat_text, first_half, load_processor, process_one_image
from mmfv.models.hf_rows import merge_features as _merge
from mmfv.models.hf_rows import forward_kwargs, model_positions
from mmfv.models.hf_rows import repeat_rows as _repeat_rows
from mmfv.models.hf_steps import steps as steps_of
from mmfv.models.specs.spec import Spec, attr_path, has_path
from mmfv.prompts import Item, Prompt


@dataclass
class _Image:
    """One image, processed once: the text its placeholder becomes, small processor outputs, features."""

    text: str
    meta: dict[str, Any]  # processor outputs for this image alone, less pixel tensors
    features: Any  # vision-tower output (dict of fields, or a tensor for cross-attention families)


class HFLMM(LMM):
    """A Hugging Face vision-language model as an :class:`LMM`, described by a :class:`Spec`."""

    def __init__(self, model: nn.Module, processor: Any, spec: Spec, model_id: str = "hf", cache_images: int = 4096, cache: str = "shared") -> None:
        self.cache_mode = cache_mode(cache)  # the last-token path's KV cache (models/hf_cache.py): settable
        self.module = model.eval()
        self.processor = processor
        self.tok = processor.tokenizer if spec.images else processor
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token or self.tok.unk_token
        self.spec = spec
        self.template = spec.template
        self.model_id = model_id
        self._feat_cache = FeatureCache(cache_images)  # (image_id, one of several?) -> _Image
        self._text_kwargs: dict[str, Any] = {}
        self._answer_ids: dict[str, int] = {}
        self._layers = list(attr_path(model, spec.layers))
        self._self = [attr_path(l, spec.self_attn) for l in self._layers if has_path(l, spec.self_attn)]
        self._cross, self._cross_blocks = [], []
        if spec.cross_layers:
            self._cross_blocks = [c for c in attr_path(model, spec.cross_layers) if hasattr(c, spec.cross_attn)]
            self._cross = [getattr(c, spec.cross_attn) for c in self._cross_blocks]
            if not self._cross:
                raise ValueError(f"spec {spec.family}: no module under {spec.cross_layers} has {spec.cross_attn!r}")
            if spec.cross_gate and not all(has_path(c, spec.cross_gate) for c in self._cross_blocks):
                raise ValueError(f"spec {spec.family}: a cross-attention block under {spec.cross_layers} has no {spec.cross_gate!r}")
        if not self._self:
            raise ValueError(f"spec {spec.family}: no decoder layer under {spec.layers} has {spec.self_attn!r}")
        fwd = inspect.signature(type(model).forward).parameters
        self._cache_kw = "cache" if "cache" in fwd else "past_key_values"
        self._keep_kw = {"logits_to_keep": 1} if "logits_to_keep" in fwd else {}

    # --- loading ------------------------------------------------------------------------------
    @classmethod
    def load(cls, name: str | Path, spec: Spec | None = None, dtype: torch.dtype | str | None = None, device: str | None = None,
             device_map: str | dict | None = None, gguf_file: str | None = None, model_id: str | None = None) -> "HFLMM":
        """Load by hub id (from the local HF cache when offline), from a local folder, or (``gguf_file``:
        a file name inside the folder ``name``) from a GGUF checkpoint, dequantized by transformers.

        ``dtype``: "auto" (the checkpoint's), "float32", "bfloat16", "float16". ``device``: one device;
        ``device_map`` (e.g. "auto"): spread a model too big for one GPU (needs ``accelerate``).
        Inputs go to the device of the first parameter (the embeddings / vision tower)."""
        import transformers
        from transformers import AutoConfig
        from transformers.utils import logging as hf_logging

        from mmfv.models import specs

        hf_logging.disable_progress_bar()
        name = str(name)
        if isinstance(dtype, str) and dtype != "auto":
            if dtype not in ("float32", "bfloat16", "float16"):
                raise ValueError(f"dtype {dtype!r} is not supported: use auto, float32, bfloat16 or float16")
            dtype = getattr(torch, dtype)
        kw: dict[str, Any] = {"dtype": dtype or "auto"}
        if device_map is not None:
            import importlib.util

            if importlib.util.find_spec("accelerate") is None:
                raise ImportError("device_map needs the accelerate package: pip install accelerate (or load on one device with device=...)")
            kw["device_map"] = device_map
        src = {"gguf_file": gguf_file} if gguf_file else {}
        try:
            config = AutoConfig.from_pretrained(name, **src)
        except OSError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise FileNotFoundError(f"cannot load {name!r}: no local folder and not in the Hugging Face cache ({first})") from None
        spec = spec or specs.for_config(config)
        if gguf_file and spec.images:
            raise ValueError(f"{Path(name) / gguf_file}: a GGUF file holds a language model only; {spec.family} needs its vision tower too: "
                             "load the model's Hugging Face folder or hub id")
        model = getattr(transformers, spec.model_class).from_pretrained(name, **kw, **src)
        if device:
            model = model.to(device)
        return cls(model, load_processor(name, spec, gguf_file), spec, model_id=model_id or name)

    # --- sizes and modules --------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.module.parameters()).dtype

    @property
    def n_layers(self) -> int:
        return len(self._layers)

    @property
    def hidden_size(self) -> int:
        return int(self.module.config.get_text_config().hidden_size)

    @staticmethod
    def _head_dim(attn: nn.Module, what: str) -> int:
        hd = getattr(attn, "head_dim", None)
        if not isinstance(hd, int):
            raise ValueError(f"{what} attention module {type(attn).__name__} has no integer head_dim")
        return hd

    @property
    def head_dim(self) -> int:
        return self._head_dim(self._self[0], "self")

    @property
    def head_sets(self) -> dict[str, HeadSet]:
        sets = {}
        for name, mods in (("self", self._self), ("cross", self._cross)):
            if mods:
                hd = self._head_dim(mods[0], name)
                sets[name] = HeadSet(name, len(mods), attr_path(mods[0], self.spec.o_proj).in_features // hd, hd)
        return sets

    def o_proj(self, layer: int, head_set: str = "self") -> nn.Linear:
        mods = {"self": self._self, "cross": self._cross}.get(head_set)
        if not mods:
            raise KeyError(f"{self.spec.family} has no {head_set!r} head set: it has {', '.join(self.head_sets)}")
        return attr_path(mods[layer], self.spec.o_proj)

    def decoder_layer(self, layer: int) -> nn.Module:
        return self._layers[layer]

    def head_output_gate(self, layer: int, head_set: str = "self") -> float | torch.Tensor:
        """tanh of the spec's ``cross_gate`` for "cross" heads (scalar (1,) or per-channel (D,)), else 1."""
        if head_set == "self" or not self.spec.cross_gate:
            return 1.0
        self.o_proj(layer, head_set)  # validates head set and layer
        return attr_path(self._cross_blocks[layer], self.spec.cross_gate).detach().float().tanh().reshape(-1)

    @property
    def image_token_id(self) -> int:
        """Id of the token whose embedding the image features replace (or that marks an image)."""
        tid = getattr(self.module.config, self.spec.image_token_id, None)
        return int(tid if tid is not None else self.processor.image_token_id)

    def scene_config(self):
        """Synthetic scenes for a real model: 225 px images (processors resize them anyway)."""
        from mmfv.data.scenes import SceneConfig

        return SceneConfig(cell_px=45)

    # --- images -------------------------------------------------------------------------------
    def _image(self, item: Item, several: bool = False) -> _Image:
        """The record of ``item``'s image; ``several``: its prompt holds more than one image (matters
        only to specs with ``multi_image``, whose processor then treats it as one of a pair)."""
        spec = self.spec
        if not spec.images:
            raise ValueError(f"{self.model_id} is a text-only model ({spec.family}) but item {item.image_id!r} ({item.query!r} -> {item.answer!r}) "
                             "has an image: use text items (data.dataset = 'tasks' with no image key, or Todd et al.'s .json files)")
        pair = spec.multi_image and several
        key = (item.image_id, pair)
        rec = self._feat_cache.get(key)
        if rec is not None:
            return rec
        text, out, self._text_kwargs = process_one_image(self.processor, self.tok, spec, item.load_image(), pair)
        feats = self._features(out)
        meta = {k: v for k, v in out.items() if not k.startswith("pixel_")}
        if pair:
            feats = first_half(feats)
            meta = {k: first_half(v) for k, v in meta.items()}
        rec = _Image(text, meta, feats)
        self._feat_cache.put(key, rec)
        return rec

    def _to_model(self, d: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for k, v in d.items():
            if isinstance(v, torch.Tensor):
                v = v.to(self.device, self.dtype if v.is_floating_point() else None)
            out[k] = v
        return out

    @torch.no_grad()
    def _features(self, pixels: dict[str, Any]) -> Any:
        """Vision-tower output for one image's processor outputs (the expensive step, run once per image)."""
        if self.spec.vision is not None:
            return self.spec.vision.encode(self.module, self._to_model(pixels))
        fn = self.module.get_image_features
        params = inspect.signature(fn).parameters
        out = fn(**{k: v for k, v in self._to_model(pixels).items() if k in params}, return_dict=True)
        return type(out), {f: getattr(out, f) for f in self.spec.feature_fields}

    def _image_inputs(self, recs: list[list[_Image]], input_ids: torch.Tensor) -> dict[str, Any]:
        spec = self.spec
        if spec.vision is not None:
            return spec.vision.assemble(self.module, [[r.features for r in row] for row in recs], input_ids, [[r.meta for r in row] for row in recs], self.tok)
        flat = [r.features for row in recs for r in row]
        if not flat:
            return {}
        cls = flat[0][0]
        fields = {f: _merge([fe[1][f] for fe in flat]) for f in spec.feature_fields}
        return {"mm_encoder_outputs": {"image": cls(**fields)}}

    # --- encoding -----------------------------------------------------------------------------
    def _records(self, prompt: Prompt) -> list[_Image]:
        """The image records of the prompt's items that have an image, in order."""
        several = sum(it.has_image for it in prompt.items) > 1
        return [self._image(it, several) for it in prompt.items if it.has_image]

    protocols = ("mmfv", "fu2025")

    def use_protocol(self, protocol: str) -> bool:
        """``fu2025`` on a Qwen vision-language family: the paper's chat prompt (its system message, one
        user turn of images and ``Q:x. A:y.`` lines, the generation prompt) through the processor's chat
        template, the answer read right after ``A:``. Other families keep their template (returns False)."""
        self._chat = protocol == "fu2025" and self.spec.family.startswith("qwen") and "vl" in self.spec.family
        t = self.spec.template
        self.template = replace(t, demo="{image}Q:{query}. A:{answer}.{eoc}", query="{image}Q:{query}. A:", eoc="\n", answer_prefix="") if self._chat else t
        return protocol == "mmfv" or self._chat

    def _text(self, prompt: Prompt) -> str:
        return chat_text(self.processor, self.tok, prompt, self.model_id) if getattr(self, "_chat", False) else self.template.render(prompt)

    def render(self, prompt: Prompt) -> str:
        """The prompt's text with each image placeholder expanded as the processor does."""
        recs = self._records(prompt)
        if not recs:
            return self._text(prompt)
        parts = self._text(prompt).split(self.template.image_token)
        if len(parts) != len(recs) + 1:
            raise ValueError(f"template produced {len(parts) - 1} image placeholders for {len(recs)} images")
        return parts[0] + "".join(r.text + p for r, p in zip(recs, parts[1:]))

    def encode(self, prompts: Sequence[Prompt]) -> Batch:
        if not prompts:
            raise ValueError("no prompts to encode")
        spec = self.spec
        recs = [self._records(p) for p in prompts]
        texts = [self.render(p) for p in prompts]
        enc = self.tok(texts, padding=True, padding_side="left", return_tensors="pt", **self._text_kwargs)
        ids, mask = enc["input_ids"], enc["attention_mask"]
        inputs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
        if spec.token_types:
            inputs[spec.token_types] = torch.tensor(self.processor.create_mm_token_type_ids(ids), dtype=torch.long)
        for k in spec.image_keys if any(recs) else ():
            inputs[k] = torch.cat([torch.as_tensor(r.meta[k]) for row in recs for r in row])
        inputs = self._to_model(inputs)
        with torch.no_grad():
            inputs.update(self._image_inputs(recs, inputs["input_ids"]))
        inputs["position_ids"] = self._positions(inputs)
        answers = torch.tensor([self.answer_token_id(p.answer) for p in prompts])
        return Batch(inputs, answers, list(prompts))

    def _positions(self, inputs: dict[str, Any]) -> torch.Tensor:
        if self.spec.positions == "mask":
            return (inputs["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)
        pos = model_positions(self.module, attr_path(self.module, self.spec.layers.rsplit(".", 1)[0]), forward_kwargs(inputs))
        if pos is None:
            raise RuntimeError(f"{self.spec.family}: the model computed no position_ids; use positions='mask' in its spec")
        return pos

    _call = staticmethod(forward_kwargs)

    # --- scoring ------------------------------------------------------------------------------
    def answer_token_id(self, answer_text: str) -> int:
        """First token of ``answer_text`` as written after the prompt: tokenize the template's query
        ending with and without ``answer_prefix + answer`` and take the first new token."""
        tid = self._answer_ids.get(answer_text)
        if tid is None:
            tail = self.template.query.split("{query}")[-1]
            with_answer = self.tok(tail + self.template.answer_prefix + answer_text, add_special_tokens=False)["input_ids"]
            alone = self.tok(tail, add_special_tokens=False)["input_ids"]
            if with_answer[: len(alone)] == alone and len(with_answer) > len(alone):
                tid = with_answer[len(alone)]
            else:  # the answer merged into the prompt's last token: score the answer on its own
                tid = self.tok(self.template.answer_prefix + answer_text, add_special_tokens=False)["input_ids"][0]
            self._answer_ids[answer_text] = tid
        return tid

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    # --- running ------------------------------------------------------------------------------
    def forward(self, batch: Batch) -> torch.Tensor:
        return self.module(**self._call(batch.inputs), use_cache=False).logits

    def last_logits(self, batch: Batch) -> torch.Tensor:
        """Logits (B, V) at the last position; the vocabulary projection runs there alone when the
        model allows (``logits_to_keep``): the scoring passes of a real-sized vocabulary cost less."""
        return self.module(**self._call(batch.inputs), use_cache=False, **self._keep_kw).logits[:, -1]

    def _token_keys(self) -> tuple[str, ...]:
        return ("input_ids", "attention_mask", *((self.spec.token_types,) if self.spec.token_types else ()), *self.spec.token_keys)

    def prefix(self, batch: Batch) -> Prefix:
        inp = batch.inputs
        T = batch.length
        if T < 2:
            raise ValueError("prefix needs prompts of at least 2 tokens")
        pre = self._call(inp)
        for k in self._token_keys():
            pre[k] = inp[k][:, : T - 1]
        pre["position_ids"] = inp["position_ids"][..., : T - 1]
        with torch.no_grad():
            out = self.module(**pre, use_cache=True, **self._keep_kw)
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        last = {k: inp[k][:, T - 1 :] for k in self._token_keys()}
        last["attention_mask"] = inp["attention_mask"]
        last["position_ids"] = inp["position_ids"][..., T - 1 :]
        for k in self.spec.last_keys:
            if k in inp:
                last[k] = inp[k]
        return Prefix(cache, last, batch.size)

    def last(self, prefix: Prefix, repeats: int) -> torch.Tensor:
        kw = {k: _repeat_rows(v, repeats, prefix.size, k) for k, v in prefix.last_inputs.items()}
        with last_cache(self.module, prefix.cache, repeats, self.cache_mode) as cache:
            return self.module(**kw, **{self._cache_kw: cache}, use_cache=True).logits[:, -1]

    def last_steps(self, prefix: Prefix) -> LastSteps | None:
        """Layer by layer where provably exact for this model (models/hf_steps.py), else None."""
        return steps_of(self, prefix)

    def decoder_layer_of(self, layer: int, head_set: str = "self") -> int | None:
        attn = {"self": self._self, "cross": self._cross}.get(head_set, [])[layer]
        return next((i for i, dl in enumerate(self._layers) if any(m is attn for m in dl.modules())), None)

    def forward_with_suffix(self, batch: Batch, suffix_ids: list[int]) -> torch.Tensor:
        if not suffix_ids:
            return self.forward(batch)
        inp = self._call(batch.inputs)
        n = len(suffix_ids)
        s = torch.tensor([suffix_ids], device=self.device).expand(batch.size, -1)
        inp["input_ids"] = torch.cat([inp["input_ids"], s], 1)
        inp["attention_mask"] = torch.cat([inp["attention_mask"], torch.ones_like(s, dtype=inp["attention_mask"].dtype)], 1)
        for k in self._token_keys()[2:]:  # new tokens are text: like the prompt's last token
            v = inp[k]
            inp[k] = torch.cat([v, v[:, -1:].expand(-1, n, *v.shape[2:])], 1)
        pos = inp["position_ids"]
        inp["position_ids"] = torch.cat([pos, pos[..., -1:] + torch.arange(1, n + 1, device=pos.device)], -1)
        return self.module(**inp, use_cache=False).logits
