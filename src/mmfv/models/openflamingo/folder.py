"""Reading and writing OpenFlamingo folders (the released checkpoints and their parts).

An OpenFlamingo folder, as ``load_model("openflamingo:<folder>")`` reads it:

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
``vision`` (:class:`~mmfv.models.openflamingo.vision.VisionConfig` fields; ViT-L/14), ``flamingo`` (other
:class:`~mmfv.models.openflamingo.modeling.FlamingoConfig` fields), ``dtype`` ("float32").
:func:`save_folder` writes this layout (the checkpoint in the released, trainable-only form).

As open_flamingo's factory does, the tokenizer gets the special tokens ``<|endofchunk|>`` and
``<image>`` (and ``<PAD>`` when it has no pad token) and the language model's embeddings are resized
to it before the checkpoint (which holds the resized embeddings) is loaded.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from mmfv.io import write_json
from mmfv.models.openflamingo.adapter import OpenFlamingoLMM, add_flamingo_tokens
from mmfv.models.openflamingo.checkpoint import load_openflamingo_state_dict, native_to_reference_key, reference_state_dict, vision_state_dict
from mmfv.models.openflamingo.modeling import FlamingoConfig, OpenFlamingo
from mmfv.models.openflamingo.vision import ClipVisionEncoder, VisionConfig

MARKER = "openflamingo.json"

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
        raise FileNotFoundError(f"{folder} has no {MARKER}: not an OpenFlamingo folder (see mmfv.models.openflamingo.folder)")
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
    write_json(folder / MARKER, meta)  # last: its presence marks a complete folder
    return folder
