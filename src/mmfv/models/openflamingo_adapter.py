"""OpenFlamingo behind the LMM protocol: folder loading, CLIP preprocessing, encode, run, score.

Load by name (see :meth:`OpenFlamingoLMM.load`): ``tiny-random`` (a small random model for tests and
dry runs) or a folder laid out as

```
<folder>/
  openflamingo.json     {"model_type": "openflamingo", ...}; every field optional, defaults =
                        OpenFlamingo-4B-vitl-rpj3b (below)
  lang_encoder/         the language model as a transformers folder: config.json, weights and
                        tokenizer (togethercomputer/RedPajama-INCITE-Base-3B-v1 for 4B-vitl-rpj3b)
  vision_encoder.*      the CLIP vision tower: open_clip / OpenAI ViT-L/14 weights (``visual.*``
                        keys; .safetensors, .bin/.pt, or OpenAI's TorchScript .pt) or a
                        transformers CLIP model (file or folder)
  checkpoint.pt         the released OpenFlamingo checkpoint (perceiver, gated cross-attention,
                        resized embeddings) - or a full state dict in the reference layout
```

``openflamingo.json`` fields: ``lang_encoder`` ("lang_encoder"), ``tokenizer`` (= lang_encoder),
``vision_encoder`` (first ``vision_encoder*`` entry found; may be omitted when the checkpoint holds
``vision_encoder.*``), ``checkpoint`` ("checkpoint.pt"), ``cross_attn_every_n_layers`` (2),
``vision`` (:class:`~mmfv.models.openflamingo.VisionConfig` fields; ViT-L/14), ``flamingo`` (other
:class:`~mmfv.models.openflamingo.FlamingoConfig` fields), ``dtype`` ("float32").
:func:`save_folder` writes this layout (the checkpoint in the released, trainable-only form).

As open_flamingo's factory does, the tokenizer gets the special tokens ``<|endofchunk|>`` and
``<image>`` (and ``<PAD>`` when it has no pad token) and the language model's embeddings are resized
to it before the checkpoint (which holds the resized embeddings) is loaded.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from mmfv.models.base import LMM, Batch, FeatureCache, HeadSet, Prefix
from mmfv.models.openflamingo import (
    ClipVisionEncoder,
    FlamingoConfig,
    OpenFlamingo,
    VisionConfig,
    load_openflamingo_state_dict,
    native_to_reference_key,
    reference_state_dict,
    vision_state_dict,
)
from mmfv.prompts import FLAMINGO, Prompt

MARKER = "openflamingo.json"
FLAMINGO_TOKENS = ("<|endofchunk|>", "<image>")


# --------------------------------------------------------------------------------------------------
# Preprocessing and tokenizer
# --------------------------------------------------------------------------------------------------


class ClipImageProcessor:
    """open_clip's eval transform without torchvision: shorter side to ``size`` (bicubic), centre
    crop ``size``², RGB, [0, 1], normalise. Matches torchvision's Resize/CenterCrop on PIL images."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        self.size = size
        self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(std, dtype=torch.float32)[:, None, None]

    @classmethod
    def for_vision(cls, cfg: VisionConfig) -> "ClipImageProcessor":
        return cls(cfg.image_size, cfg.mean, cfg.std)

    def one(self, image: Image.Image) -> torch.Tensor:
        s = self.size
        w, h = image.size
        if (w, h) != (s, s):
            if w <= h:
                nw, nh = s, int(s * h / w)
            else:
                nw, nh = int(s * w / h), s
            if (nw, nh) != (w, h):
                image = image.resize((nw, nh), Image.BICUBIC)
            top, left = int(round((nh - s) / 2.0)), int(round((nw - s) / 2.0))
            image = image.crop((left, top, left + s, top + s))
        arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        x = torch.from_numpy(arr.copy()).permute(2, 0, 1)
        return (x - self.mean) / self.std

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return torch.stack([self.one(im) for im in images])


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
        """``tiny-random`` or an OpenFlamingo folder (module doc)."""
        if str(name) == "tiny-random":
            return tiny_random()
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

    def forward_with_suffix(self, batch: Batch, suffix_ids: list[int]) -> torch.Tensor:
        inp = batch.inputs
        ids, mask = inp["input_ids"], inp["attention_mask"]
        if suffix_ids:
            s = torch.tensor([suffix_ids], device=ids.device).expand(batch.size, -1)
            ids, mask = torch.cat([ids, s], 1), torch.cat([mask, torch.ones_like(s)], 1)
        return self._run(ids, mask, inp["media"]).logits


# --------------------------------------------------------------------------------------------------
# Folders
# --------------------------------------------------------------------------------------------------

_VISION_FILES = ("model.safetensors", "open_clip_model.safetensors", "open_clip_pytorch_model.bin", "pytorch_model.bin")


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors / torch .bin/.pt / TorchScript file, or a folder with one."""
    if path.is_dir():
        for name in _VISION_FILES:
            if (path / name).exists():
                return _load_tensors(path / name)
        raise FileNotFoundError(f"{path} holds none of {', '.join(_VISION_FILES)}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - OpenAI's CLIP files are TorchScript archives
        try:
            return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
        except Exception:  # noqa: BLE001
            raise ValueError(f"{path} is not a state dict torch can read safely ({type(e).__name__}: {e})") from None
    if not isinstance(sd, dict):
        raise ValueError(f"{path} does not hold a state dict")
    return sd


def _dtype(d: torch.dtype | str | None) -> torch.dtype | None:
    if d is None or isinstance(d, torch.dtype):
        return d
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[str(d)]
    except KeyError:
        raise ValueError(f"unknown dtype {d!r}: use float32, bfloat16 or float16") from None


def read_meta(folder: Path) -> dict:
    f = folder / MARKER
    if not f.exists():
        raise FileNotFoundError(f"{folder} has no {MARKER}: not an OpenFlamingo folder (see mmfv.models.openflamingo_adapter)")
    meta = json.loads(f.read_text())
    if meta.get("model_type", "openflamingo") != "openflamingo":
        raise ValueError(f"{f} describes a {meta.get('model_type')!r} model, not openflamingo")
    return meta


def from_folder(folder: str | Path, dtype: torch.dtype | str | None = None, device: str | torch.device | None = None) -> OpenFlamingoLMM:
    """Build an :class:`OpenFlamingoLMM` from a folder (layout in the module doc)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    folder = Path(folder)
    meta = read_meta(folder)
    dt = _dtype(dtype or meta.get("dtype")) or torch.float32
    lang_dir = folder / meta.get("lang_encoder", "lang_encoder")
    if not (lang_dir / "config.json").exists():
        raise FileNotFoundError(f"{lang_dir} is not a transformers model folder (no config.json)")
    tok_dir = folder / meta["tokenizer"] if "tokenizer" in meta else lang_dir
    tok = add_flamingo_tokens(AutoTokenizer.from_pretrained(str(tok_dir)))
    lm = AutoModelForCausalLM.from_pretrained(str(lang_dir), dtype=dt)
    vocab_before = lm.get_input_embeddings().weight.shape[0]
    if vocab_before != len(tok):
        lm.resize_token_embeddings(len(tok), mean_resizing=False)  # the checkpoint holds the rows
    vcfg = VisionConfig(**meta.get("vision", {}))
    fcfg = FlamingoConfig(
        cross_attn_every_n_layers=int(meta.get("cross_attn_every_n_layers", 2)),
        media_token_id=tok.convert_tokens_to_ids("<image>"),
        eoc_token_id=tok.convert_tokens_to_ids("<|endofchunk|>"),
        vision=asdict(vcfg),
        **meta.get("flamingo", {}),
    )
    model = OpenFlamingo(ClipVisionEncoder(vcfg), lm, vcfg.width, fcfg).to(dt)
    vpath = meta.get("vision_encoder")
    if vpath is None:
        found = sorted(p for p in folder.iterdir() if p.name.startswith("vision_encoder"))
        vpath = found[0].name if found else None
    if vpath is not None:
        vsd = vision_state_dict(_load_tensors(folder / vpath))
        res = model.vision_encoder.load_state_dict(vsd, strict=False)
        if res.missing_keys or res.unexpected_keys:
            raise KeyError(f"{folder / vpath} does not fit the vision config: missing {res.missing_keys[:3]}, unexpected {res.unexpected_keys[:3]}")
    ck = folder / meta.get("checkpoint", "checkpoint.pt")
    if not ck.exists():
        raise FileNotFoundError(f"{ck} is missing: the OpenFlamingo checkpoint (perceiver and cross-attention weights)")
    report = load_openflamingo_state_dict(model, _load_tensors(ck), strict=False)
    if report.unexpected:
        raise KeyError(f"{ck} has {len(report.unexpected)} keys this model lacks (e.g. {report.unexpected[0]}): wrong cross_attn_every_n_layers or sizes?")
    need = [k for k in report.missing if k.startswith("perceiver.") or ".gated_cross_attn_layer." in k]
    if vpath is None:
        need += [k for k in report.missing if k.startswith("vision_encoder.")]
    if vocab_before != len(tok):
        need += [k for k in report.missing if "embed_in" in k or "lm_head" in k]
    if need:
        raise KeyError(f"{ck} lacks {len(need)} weights the model needs (e.g. {native_to_reference_key(need[0])})")
    if device is not None:
        model.to(device)
    card = {k: meta[k] for k in ("name", "scene_config") if k in meta}
    return OpenFlamingoLMM(model, tok, meta.get("name", str(folder)), card=card)


def save_folder(lmm: OpenFlamingoLMM, folder: str | Path, name: str | None = None) -> Path:
    """Write ``lmm`` in the folder layout: the decoder as a plain transformers folder, the vision
    tower in open_clip names (``visual.*``), and ``checkpoint.pt`` in the released form (trainable
    parts and embeddings only, ``embed_out`` naming, wrapped in ``model_state_dict``)."""
    from safetensors.torch import save_file
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = lmm.module
    lang = model.lang_encoder
    layers_attr = model.flamingo_config.decoder_layers_attr
    plain = {}
    for k, v in lang.state_dict().items():
        if ".gated_cross_attn_layer." in k:
            continue
        plain[k.replace(".decoder_layer.", ".", 1) if k.startswith(layers_attr + ".") else k] = v
    fresh = type(lang)(lang.config)
    fresh.load_state_dict(plain, strict=True)
    fresh.save_pretrained(folder / "lang_encoder")
    lmm.tok.save_pretrained(folder / "lang_encoder")
    save_file({f"visual.{k}": v.contiguous() for k, v in model.vision_encoder.state_dict().items()}, str(folder / "vision_encoder.safetensors"))
    ref = reference_state_dict(model, aliases=False)
    keep = {}
    for k, v in ref.items():
        if k.startswith("perceiver.") or ".gated_cross_attn_layer." in k or "embed_in" in k:
            keep["module." + k] = v
        elif k.startswith("lang_encoder.lm_head."):
            keep["module." + k.replace("lang_encoder.lm_head.", "lang_encoder.embed_out.")] = v
    torch.save({"model_state_dict": keep}, folder / "checkpoint.pt")
    fc = asdict(model.flamingo_config)
    meta = {
        "model_type": "openflamingo",
        "name": name or lmm.model_id,
        "cross_attn_every_n_layers": fc.pop("cross_attn_every_n_layers"),
        "vision": fc.pop("vision"),
        "flamingo": {k: v for k, v in fc.items() if k not in ("media_token_id", "eoc_token_id")},
        **({"scene_config": lmm.card["scene_config"]} if "scene_config" in lmm.card else {}),
    }
    (folder / MARKER).write_text(json.dumps(meta, indent=1))
    return folder


# --------------------------------------------------------------------------------------------------
# A small random OpenFlamingo (tests, dry runs)
# --------------------------------------------------------------------------------------------------


def tiny_tokenizer() -> Any:
    """A byte-level BPE (GPT-NeoX style) trained on the synthetic scenes' words, plus Flamingo's
    special tokens. Built offline in milliseconds, deterministic."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from mmfv.data import scenes as S

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    objs = list(S.OBJECTS)
    corpus = [f"Q: {a}. A: {objs[(i * 7 + 3) % len(objs)]}." for i, a in enumerate(objs * 3)]
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    return add_flamingo_tokens(fast)


def randomize_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Re-draw every weight at a scale where every part matters (HF's 0.02 init leaves heads inert
    and the Flamingo gates start at 0): matrices N(0, 1/fan_in), norms 1 ± 0.1, biases ± 0.1, gates
    U(-1, 1), embeddings N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("_gate"):
                p.copy_(torch.rand(p.shape, generator=g) * 2 - 1)
            elif p.dim() >= 2:
                fan_in = p.shape[-1] if p.dim() == 2 else math.prod(p.shape[1:])
                std = 1.0 if ("embed" in name or "latents" in name or "positional" in name) else fan_in**-0.5
                p.copy_(torch.randn(p.shape, generator=g) * std)
            elif "norm" in name or "ln_" in name or "layernorm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return module


def tiny_parts(vocab_size: int = 320, image_size: int = 48, layers: int = 4, hidden: int = 64, heads: int = 4) -> tuple[VisionConfig, Any]:
    """The configs of the tiny model: a 2-layer ViT (patch 16) and a GPT-NeoX decoder."""
    from transformers import GPTNeoXConfig

    vcfg = VisionConfig(image_size=image_size, patch_size=16, width=32, layers=2, heads=2, mlp_ratio=2.0, output_dim=16)
    lcfg = GPTNeoXConfig(
        vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=2 * hidden, max_position_embeddings=2048, rotary_pct=1.0, use_parallel_residual=False,
        tie_word_embeddings=False, bos_token_id=0, eos_token_id=0,
    )
    return vcfg, lcfg


def tiny_random(seed: int = 0, cross_attn_every_n_layers: int = 2, image_size: int = 48, **flamingo: Any) -> OpenFlamingoLMM:
    """A small random OpenFlamingo (ViT 2×32, 4-layer GPT-NeoX of width 64, perceiver and
    cross-attention at OpenFlamingo's default sizes) for synthetic scenes of ``image_size`` px."""
    from transformers import GPTNeoXForCausalLM

    tok = tiny_tokenizer()
    vcfg, lcfg = tiny_parts(len(tok), image_size)
    torch.manual_seed(seed)
    lm = GPTNeoXForCausalLM(lcfg)
    fcfg = FlamingoConfig(
        cross_attn_every_n_layers=cross_attn_every_n_layers, media_token_id=tok.convert_tokens_to_ids("<image>"),
        eoc_token_id=tok.convert_tokens_to_ids("<|endofchunk|>"), vision=asdict(vcfg), **flamingo,
    )
    model = randomize_(OpenFlamingo(ClipVisionEncoder(vcfg), lm, vcfg.width, fcfg), seed).eval()
    card = {"name": "openflamingo-tiny-random", "scene_config": {"grid": 3, "cell_px": image_size // 3}}
    return OpenFlamingoLMM(model, tok, "openflamingo-tiny-random", card=card)
