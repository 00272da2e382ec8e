"""Offline building blocks for the HF families' test models: a locally trained tokenizer, the standard
small text config, and processors built without a hub. Nothing here downloads anything."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

# The standard small text config: 2 layers, hidden 64, 4 heads of head_dim 16, 2 KV heads.
TEXT = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=128)


def _corpus() -> list[str]:
    from mmfv.data import scenes as S

    lines = [f"Q: {o}. A: {o}.\n" for o in S.OBJECTS]
    return lines * 3 + list(S.OBJECTS) + ["Q:", "A:", ". A:", "\n\n", "Here is the original image", "and here are some crops to help you see better"]


def tokenizer(specials: Iterable[str], named: Mapping[str, str] | None = None, style: str = "bytelevel", vocab: int = 400, **kwargs: Any):
    """A small BPE tokenizer trained on the synthetic scenes' vocabulary, as a PreTrainedTokenizerFast.

    ``specials`` become special tokens (in order, from id 0); ``named`` gives model-specific named
    special tokens (e.g. ``{"image_token": "<image_soft_token>"}`` sets ``tokenizer.image_token`` and
    ``tokenizer.image_token_id``); ``kwargs`` go to PreTrainedTokenizerFast (bos_token, pad_token, ...).
    ``style``: "bytelevel" (GPT-2 style, spaces inside tokens) or "metaspace" (SentencePiece style,
    prepends a space); ``vocab=0`` learns no merges, so every word splits into several tokens.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    if style == "bytelevel":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    elif style == "metaspace":
        tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
        tok.decoder = decoders.Metaspace(prepend_scheme="first")
        alphabet = [chr(i) for i in range(33, 127)] + ["\u2581", "\n"]
    else:
        raise ValueError(f"unknown tokenizer style {style!r}")
    trainer = trainers.BpeTrainer(vocab_size=vocab, initial_alphabet=alphabet, special_tokens=list(specials), show_progress=False)
    tok.train_from_iterator(_corpus(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, extra_special_tokens=dict(named or {}), **kwargs)


def processor(cls: type, **parts: Any):
    """``cls(**parts)`` allowing sub-processors left None (no video processor without torchvision)."""
    from mmfv.models.hf_processor import lenient_subprocessors

    with lenient_subprocessors():
        return cls(**parts)


def special_ids(tok: Any) -> dict[str, int | None]:
    """bos/eos/pad ids for a text config (so the config never points outside the tiny vocabulary)."""
    out = {}
    for name in ("bos", "eos", "pad"):
        t = getattr(tok, f"{name}_token", None)
        out[f"{name}_token_id"] = tok.convert_tokens_to_ids(t) if t is not None else None
    return out
