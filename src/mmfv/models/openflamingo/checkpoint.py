"""OpenFlamingo checkpoints: the released / reference key layout mapped onto :mod:`.modeling`, and
CLIP vision weights from open_clip, OpenAI or transformers.

Checkpoint key layout (reference name → this module), see :func:`load_openflamingo_state_dict`:

==========================================================  ===============================================
reference (``open_flamingo.Flamingo.state_dict()``)         native
==========================================================  ===============================================
``vision_encoder.*`` (open_clip ``VisionTransformer``)      ``vision_encoder.*`` (same names)
``perceiver.latents``, ``perceiver.norm.*``                 same
``perceiver.layers.{i}.0.*`` (PerceiverAttention)           ``perceiver.layers.{i}.attn.*``
``perceiver.layers.{i}.1.{0,1,3}.*`` (FeedForward)          ``perceiver.layers.{i}.ff.{norm,fc_in,fc_out}.*``
``lang_encoder.gpt_neox.layers.{i}.decoder_layer.*``        same
``lang_encoder.gpt_neox.layers.{i}.gated_cross_attn_layer`` same, except ``ff.{0,1,3}`` →
``.*``                                                      ``ff.{norm,fc_in,fc_out}``
``lang_encoder.old_decoder_blocks.{i}.*``                   alias of ``...layers.{i}.decoder_layer.*``
``lang_encoder.gated_cross_attn_layers.{i}.*``              alias of ``...layers.{i}.gated_cross_attn_layer.*``
``lang_encoder.embed_out.*`` (transformers 4) /             ``lang_encoder.lm_head.*``
``lang_encoder.lm_head.*`` (transformers 5)
``lang_encoder.gpt_neox.{embed_in,final_layer_norm}.*``     same
``*.attention.{bias,masked_bias}``, ``*.rotary_emb.inv_freq``  ignored (buffers of old transformers)
==========================================================  ===============================================

Training checkpoints wrapped as ``{"model_state_dict": {"module.<key>": ...}}`` are unwrapped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from mmfv.models.openflamingo.modeling import OpenFlamingo

_FF_NAMES = {"0": "norm", "1": "fc_in", "3": "fc_out"}
_FF_INDEX = {v: k for k, v in _FF_NAMES.items()}
_OBSOLETE = re.compile(r"(\.attention\.(bias|masked_bias)|\.rotary_emb\.inv_freq)$")


def _unwrap(state_dict: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    sd = state_dict.get("model_state_dict", state_dict) if isinstance(state_dict, Mapping) else state_dict
    out = {}
    for k, v in sd.items():
        while k.startswith("module."):
            k = k[len("module.") :]
        out[k] = v
    return out


def reference_to_native_key(key: str, layers_attr: str = "gpt_neox.layers") -> tuple[str | None, bool]:
    """Map one reference / released-checkpoint key to this module's key.

    Returns ``(native_key or None if the key is to be ignored, is_alias)``; an alias names the same
    tensor as another key of the reference layout (``old_decoder_blocks``, ``gated_cross_attn_layers``).
    """
    if _OBSOLETE.search(key):
        return None, False
    alias = False
    m = re.match(r"^lang_encoder\.old_decoder_blocks\.(\d+)\.(.*)$", key)
    if m:
        key, alias = f"lang_encoder.{layers_attr}.{m[1]}.decoder_layer.{m[2]}", True
    m = re.match(r"^lang_encoder\.gated_cross_attn_layers\.(\d+)\.(.*)$", key)
    if m:
        key, alias = f"lang_encoder.{layers_attr}.{m[1]}.gated_cross_attn_layer.{m[2]}", True
    if key.startswith("visual."):
        key = "vision_encoder." + key[len("visual.") :]
    key = re.sub(r"^lang_encoder\.embed_out\.", "lang_encoder.lm_head.", key)
    key = re.sub(r"^perceiver\.layers\.(\d+)\.0\.", r"perceiver.layers.\1.attn.", key)
    key = re.sub(r"^perceiver\.layers\.(\d+)\.1\.([013])\.", lambda m: f"perceiver.layers.{m[1]}.ff.{_FF_NAMES[m[2]]}.", key)
    key = re.sub(r"\.gated_cross_attn_layer\.ff\.([013])\.", lambda m: f".gated_cross_attn_layer.ff.{_FF_NAMES[m[1]]}.", key)
    return key, alias


def native_to_reference_key(key: str) -> str:
    """The inverse of :func:`reference_to_native_key` (canonical names, transformers-5 ``lm_head``)."""
    key = re.sub(r"^perceiver\.layers\.(\d+)\.attn\.", r"perceiver.layers.\1.0.", key)
    key = re.sub(r"^perceiver\.layers\.(\d+)\.ff\.(norm|fc_in|fc_out)\.", lambda m: f"perceiver.layers.{m[1]}.1.{_FF_INDEX[m[2]]}.", key)
    key = re.sub(r"\.gated_cross_attn_layer\.ff\.(norm|fc_in|fc_out)\.", lambda m: f".gated_cross_attn_layer.ff.{_FF_INDEX[m[1]]}.", key)
    return key


@dataclass
class LoadReport:
    """What :func:`load_openflamingo_state_dict` did: native keys not given, given keys with no
    home, and keys deliberately skipped (aliases, obsolete buffers)."""

    missing: list[str]
    unexpected: list[str]
    ignored: list[str]


def load_openflamingo_state_dict(model: OpenFlamingo, state_dict: Mapping[str, Any], strict: bool = True) -> LoadReport:
    """Load a state dict in the reference / released-checkpoint layout (table in the module doc).

    ``strict``: every native parameter must be given and every given key must have a home (raises
    KeyError otherwise). The released ``checkpoint.pt`` files hold only the trained parts (perceiver,
    gated cross-attention, embeddings): load them with ``strict=False`` over a model whose vision
    encoder and decoder already hold their pretrained weights, and check ``report.missing``.
    Alias keys must agree with their canonical copy when both are present.
    """
    sd = _unwrap(state_dict)
    layers_attr = model.flamingo_config.decoder_layers_attr
    canonical: dict[str, torch.Tensor] = {}
    aliases: dict[str, tuple[str, torch.Tensor]] = {}
    ignored = []
    for k, v in sd.items():
        nk, is_alias = reference_to_native_key(k, layers_attr)
        if nk is None:
            ignored.append(k)
        elif is_alias:
            aliases[nk] = (k, v)
        else:
            canonical[nk] = v
    for nk, (k, v) in aliases.items():
        ignored.append(k)
        if nk in canonical:
            if canonical[nk].shape != v.shape or not torch.equal(canonical[nk], v):
                raise ValueError(f"checkpoint key {k} disagrees with its canonical copy {native_to_reference_key(nk)}")
        else:
            canonical[nk] = v
    own = model.state_dict()
    bad = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in canonical.items() if k in own and own[k].shape != v.shape]
    if bad:
        k, got, want = bad[0]
        hint = " (resize the token embeddings to the tokenizer with <image>, <|endofchunk|> and <PAD> first)" if "embed" in k or "lm_head" in k else ""
        raise ValueError(f"checkpoint tensor {k} has shape {got} but the model's is {want}{hint}; {len(bad)} mismatched in all")
    result = model.load_state_dict(canonical, strict=False)
    report = LoadReport(sorted(result.missing_keys), sorted(result.unexpected_keys), sorted(ignored))
    if strict and (report.missing or report.unexpected):
        parts = []
        if report.missing:
            parts.append(f"{len(report.missing)} missing (e.g. {report.missing[0]})")
        if report.unexpected:
            parts.append(f"{len(report.unexpected)} unexpected (e.g. {report.unexpected[0]})")
        raise KeyError("OpenFlamingo state dict does not match the model: " + ", ".join(parts))
    return report


def reference_state_dict(model: OpenFlamingo, aliases: bool = True) -> dict[str, torch.Tensor]:
    """This model's weights in the reference layout (what ``open_flamingo.Flamingo`` on transformers 5
    expects; with ``aliases`` also the ``old_decoder_blocks`` / ``gated_cross_attn_layers`` copies)."""
    out = {}
    layers_attr = re.escape(model.flamingo_config.decoder_layers_attr)
    for k, v in model.state_dict().items():
        rk = native_to_reference_key(k)
        out[rk] = v
        if aliases:
            m = re.match(rf"^lang_encoder\.{layers_attr}\.(\d+)\.(decoder_layer|gated_cross_attn_layer)\.(.*)$", rk)
            if m:
                group = "old_decoder_blocks" if m[2] == "decoder_layer" else "gated_cross_attn_layers"
                out[f"lang_encoder.{group}.{m[1]}.{m[3]}"] = v
    return out


def vision_state_dict(state_dict: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """A CLIP vision tower's weights in :class:`ClipVisionEncoder`'s layout, from any of: an open_clip
    / OpenAI CLIP model (``visual.*``; the text tower is dropped), an OpenFlamingo state dict
    (``vision_encoder.*``), a bare open_clip ``VisionTransformer``, or a transformers CLIP model
    (``vision_model.*`` / ``CLIPVisionModel`` names; q/k/v are fused into ``in_proj``)."""
    sd = _unwrap(state_dict)
    for prefix in ("vision_encoder.", "visual."):
        if any(k.startswith(prefix) for k in sd):
            return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    if any(k.startswith("vision_model.") for k in sd) or any(k.startswith("embeddings.patch_embedding") for k in sd):
        return _hf_clip_to_open_clip(sd)
    return dict(sd)


def _hf_clip_to_open_clip(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers CLIP vision weights → open_clip names."""
    sd = {k[len("vision_model.") :] if k.startswith("vision_model.") else k: v for k, v in sd.items()}
    out: dict[str, torch.Tensor] = {}
    simple = {
        "embeddings.patch_embedding.weight": "conv1.weight",
        "embeddings.class_embedding": "class_embedding",
        "embeddings.position_embedding.weight": "positional_embedding",
        "pre_layrnorm.weight": "ln_pre.weight",
        "pre_layrnorm.bias": "ln_pre.bias",
        "post_layernorm.weight": "ln_post.weight",
        "post_layernorm.bias": "ln_post.bias",
    }
    for k, nk in simple.items():
        if k in sd:
            out[nk] = sd[k]
    if "visual_projection.weight" in sd:
        out["proj"] = sd["visual_projection.weight"].t().contiguous()
    parts = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj", "self_attn.out_proj": "attn.out_proj"}
    n_layers = 1 + max((int(m[1]) for k in sd if (m := re.match(r"^encoder\.layers\.(\d+)\.", k))), default=-1)
    for i in range(n_layers):
        src, dst = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for a, b in parts.items():
            for t in ("weight", "bias"):
                out[f"{dst}{b}.{t}"] = sd[f"{src}{a}.{t}"]
        for t in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{t}"] = torch.cat([sd[f"{src}self_attn.{p}_proj.{t}"] for p in ("q", "k", "v")], dim=0)
    return out
