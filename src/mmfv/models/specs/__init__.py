"""Model-family specs: one small declarative file per family, and the registry that picks one.

``for_config(config)`` picks the spec from a transformers config's ``model_type`` (or, failing that,
its ``architectures``); an unsupported family raises one line naming the supported ones.
"""

from __future__ import annotations

from typing import Any

from mmfv.models.specs import gemma3, idefics, idefics2, idefics3, internvl, llava, llava_onevision, mllama, qwen2_5_vl, qwen2_vl, qwen3_vl, smolvlm
from mmfv.models.specs.spec import CrossVision, Spec

SPECS: tuple[Spec, ...] = (qwen2_vl.SPEC, qwen2_5_vl.SPEC, qwen3_vl.SPEC, idefics2.SPEC, idefics3.SPEC, smolvlm.SPEC, llava.SPEC, llava_onevision.SPEC, gemma3.SPEC, internvl.SPEC, idefics.SPEC, mllama.SPEC)
BY_FAMILY: dict[str, Spec] = {s.family: s for s in SPECS}


class UnsupportedModel(ValueError):
    """No spec serves this model family."""


def supported() -> list[str]:
    return [s.family for s in SPECS]


def get(family: str) -> Spec:
    if family not in BY_FAMILY:
        raise UnsupportedModel(f"unknown model family {family!r}: supported are {', '.join(supported())}")
    return BY_FAMILY[family]


def for_config(config: Any) -> Spec:
    """The spec for a transformers config (object or dict)."""
    d = config if isinstance(config, dict) else config.to_dict()
    mt = d.get("model_type")
    archs = d.get("architectures") or []
    for s in SPECS:
        if mt in s.model_types:
            return s
    for s in SPECS:
        if s.model_class in archs:
            return s
    what = f"model_type {mt!r}" + (f" ({', '.join(archs)})" if archs else "")
    raise UnsupportedModel(f"unsupported model family: {what}; supported are {', '.join(supported())}")


__all__ = ["CrossVision", "Spec", "SPECS", "UnsupportedModel", "for_config", "get", "supported"]
