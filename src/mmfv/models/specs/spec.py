"""What a model-family spec declares. One instance per family, in ``specs/<family>.py``.

A spec is data: where the decoder layers and attention output projections live, the prompt template,
which per-token / per-image processor outputs the model's forward needs, and how positions are made.
One optional pair of callables covers what no declaration can: cross-attention (Flamingo-style)
families encode images and build their batch-wide image inputs themselves (``vision``). The adapter
(models/hf.py) is the only reader; it never names an architecture.

``tiny`` describes a small random model of the family for the tests, as plain data that
:mod:`mmfv.testing.hf` turns into a model and processor (offline, nothing downloaded):

- ``tokens``: special tokens, in id order from 0; ``named_tokens``: model-specific named ones (e.g.
  ``{"image_token": "<image_soft_token>"}``); ``tokenizer``: its kwargs (``bos_token``, ...).
- ``image_processor``, ``processor``: ``(transformers class name, kwargs)``; sub-processors the
  processor takes but the spec does not give (a video processor) are left None. Text-only families
  (``images=False``) give neither: their processor is the tokenizer.
- ``text``: changes to the standard small text config (2 layers, hidden 64, 4 heads of 16, 2 KV
  heads, intermediate 128; a value None drops the key); vocabulary size and bos/eos/pad ids come
  from the tokenizer. ``flat_text``: the text fields sit at the config's top level (no
  ``text_config``).
- ``config``: other config kwargs (``vision_config``, ...); ``token_ids``: config fields that take a
  token's id, as ``{field: token}``; ``fill``: parameters (by last name) set to a value after init,
  e.g. cross-attention gates an untrained model would otherwise keep shut.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from mmfv.prompts import Template


@dataclass(frozen=True)
class CrossVision:
    """Image handling of a cross-attention family (the text holds one placeholder per image).

    ``encode(model, pixels)`` -> one image's features (a tensor), from the processor's outputs for that
    image alone. ``assemble(model, features, input_ids, pixels, tokenizer)`` -> the forward's image
    keyword arguments for a left-padded batch, where ``features[b]`` / ``pixels[b]`` list row b's
    images in order. Keys named in ``Spec.token_keys`` must be (B, T, ...) per-token tensors; keys in
    ``Spec.last_keys`` are passed again (rows repeated) when the last position runs on the KV cache.
    """

    encode: Callable[[Any, dict[str, torch.Tensor]], torch.Tensor]
    assemble: Callable[[Any, list[list[torch.Tensor]], torch.Tensor, list[list[dict]], Any], dict[str, Any]]


@dataclass(frozen=True)
class Spec:
    """A model family. Paths are attribute paths from the loaded top-level model."""

    family: str  # short name used in errors and docs, e.g. "qwen3_vl"
    model_types: tuple[str, ...]  # config.model_type values this spec serves
    model_class: str  # transformers class loaded with from_pretrained
    layers: str  # ModuleList of decoder layers (their outputs are the residual stream)
    template: Template
    self_attn: str = "self_attn"  # attention module inside a decoder layer (layers without it are skipped)
    o_proj: str = "o_proj"  # output projection inside an attention module
    cross_layers: str | None = None  # ModuleList holding the cross-attention modules, if any
    cross_attn: str = "cross_attn"  # cross-attention module inside an entry of ``cross_layers``
    cross_gate: str | None = None  # parameter in an entry of ``cross_layers``: the residual gets tanh(gate) * attention output
    image_token_id: str = "image_token_id"  # config attribute: id of the image-feature token (else the processor's)
    token_types: str | None = None  # name of the per-token image/text type ids the forward needs
    token_keys: tuple[str, ...] = ()  # other per-token (B, T, ...) forward inputs (cross-attention masks)
    image_keys: tuple[str, ...] = ()  # per-image processor outputs the forward needs besides features
    last_keys: tuple[str, ...] = ()  # inputs passed again, rows repeated, when running the last position alone
    positions: str = "mask"  # "mask": cumsum of the attention mask; "model": the model's own (M-RoPE)
    expand: bool = True  # the processor expands each image placeholder (False: text keeps it verbatim)
    text_kwargs: dict[str, Any] = field(default_factory=dict)  # tokenizer kwargs when expand is False
    multi_image: bool = False  # an image in a several-image prompt is processed differently (no any-res crops)
    feature_fields: tuple[str, ...] = ("pooler_output",)  # fields of get_image_features' output the forward reads
    vision: CrossVision | None = None  # cross-attention families: own image encoding and batch inputs
    processor_class: str | None = None  # processor class, for building one when AutoProcessor cannot
    images: bool = True  # False: a text-only language model; its processor is the tokenizer and items must have no image
    tiny: Mapping[str, Any] | None = None  # a small random test model as data (module doc; mmfv.testing.hf builds it)
    notes: Sequence[str] = ()  # known limitations, shown in docs

    def __post_init__(self) -> None:
        if self.positions not in ("mask", "model"):
            raise ValueError(f"spec {self.family}: positions must be 'mask' or 'model', got {self.positions!r}")


def attr_path(obj: Any, path: str) -> Any:
    """``obj.a.b.c`` for a spec path "a.b.c" (integers index lists)."""
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


def has_path(obj: Any, path: str) -> bool:
    """Whether :func:`attr_path` finds ``path`` under ``obj``."""
    try:
        attr_path(obj, path)
        return True
    except (AttributeError, IndexError):
        return False
