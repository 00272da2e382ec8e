"""Random models of the HF families, built from each spec's ``tiny`` data (its format is in
models/specs/spec.py): the contract tests run on every discovered family this way."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from mmfv.models import specs
from mmfv.models.hf import HFLMM
from mmfv.models.specs.spec import Spec
from mmfv.testing import offline

_MERGED = ("tokenizer", "config", "token_ids", "fill")  # overrides of these update the spec's dict


def _data(spec: Spec, overrides: dict[str, Any]) -> dict[str, Any]:
    """The spec's tiny data with ``overrides``: dicts update, ``(class, kwargs)`` pairs update their
    kwargs (a bare dict) or are replaced (a pair), anything else replaces."""
    if spec.tiny is None:
        raise ValueError(f"spec {spec.family} has no tiny test model: add tiny=dict(...) to its spec file (format in models/specs/spec.py)")
    data = dict(spec.tiny)
    for k, v in overrides.items():
        if k in _MERGED:
            data[k] = {**data.get(k, {}), **v}
        elif k in ("image_processor", "processor") and isinstance(v, dict):
            name, kw = data[k]
            data[k] = (name, {**kw, **v})
        elif k != "text":
            data[k] = v
    return data


def parts(spec: Spec, seed: int = 0, **overrides: Any) -> tuple[nn.Module, Any]:
    """``(model, processor)`` of the spec's tiny data (random weights drawn after ``torch.manual_seed(seed)``).

    ``overrides`` change the data as :func:`_data` says; ``text`` overrides apply after the spec's,
    over the tokenizer's vocabulary size and special ids too (e.g. a real-sized vocabulary).
    """
    import transformers

    data = _data(spec, overrides)
    tok = offline.tokenizer(data["tokens"], data.get("named_tokens"), **data.get("tokenizer", {}))
    proc = _processor(spec, data, tok)  # may add tokens: the vocabulary is read after
    text = {**offline.TEXT, "vocab_size": len(tok), **offline.special_ids(tok)}  # a special id may be None: the tokenizer has no such token
    for changes in (data.get("text", {}), overrides.get("text", {})):
        for k, v in changes.items():
            if v is None:
                text.pop(k, None)
            else:
                text[k] = v
    vocab = tok.get_vocab()
    unknown = [t for t in data.get("token_ids", {}).values() if t not in vocab]
    if unknown:
        raise ValueError(f"spec {spec.family}: tiny token_ids name {unknown[0]!r}, which is not a token of its tiny tokenizer")
    cfg = {**data.get("config", {}), **{k: vocab[t] for k, t in data.get("token_ids", {}).items()}}
    cfg = {**text, **cfg} if data.get("flat_text") else {"text_config": text, **cfg}
    model_cls = getattr(transformers, spec.model_class)
    config = model_cls.config_class(**cfg)
    torch.manual_seed(seed)
    model = model_cls(config)
    fill = data.get("fill", {})
    if fill:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.rsplit(".", 1)[-1] in fill:
                    p.fill_(fill[name.rsplit(".", 1)[-1]])
    return model, proc


def _processor(spec: Spec, data: dict[str, Any], tok: Any) -> Any:
    """The family's processor around ``tok``; a text-only family's processor is the tokenizer."""
    import transformers

    if not spec.images:
        return tok
    ip_name, ip_kw = data["image_processor"]
    proc_name, proc_kw = data["processor"]
    proc_cls = getattr(transformers, proc_name)
    given = {"image_processor": getattr(transformers, ip_name)(**ip_kw), "tokenizer": tok, **proc_kw}
    absent = {k: None for k in inspect.signature(proc_cls.__init__).parameters if k.endswith("_processor") and k not in given}  # e.g. video
    return offline.processor(proc_cls, **given, **absent)


def build(family: str, seed: int = 0, model_id: str | None = None, **overrides: Any) -> HFLMM:
    """A random model of ``family`` behind the LMM protocol, from its spec's tiny data (see :func:`parts`)."""
    spec = specs.get(family)
    model, proc = parts(spec, seed, **overrides)
    return HFLMM(model, proc, spec, model_id or f"tiny-random-{family}")


def smolvlm_256m_random(seed: int = 0) -> HFLMM:
    """SmolVLM-256M's architecture with random weights: SigLIP-B/16 at 512 px (12 layers, 768), pixel
    shuffle x4 -> 64 tokens per image, SmolLM2-135M-style decoder (30 layers, 576, 9 heads of 64,
    3 KV heads), vocabulary 49,280. For benchmarks at a real size."""
    return build(
        "smolvlm", seed, "smolvlm-256m-random",
        image_processor=dict(do_image_splitting=False, size={"longest_edge": 512}, max_image_size={"longest_edge": 512}),
        processor=dict(image_seq_len=64),
        text=dict(model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                  num_key_value_heads=3, head_dim=64, vocab_size=49280, max_position_embeddings=8192, rope_theta=100000.0),
        config=dict(vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=512, patch_size=16), scale_factor=4),
    )
