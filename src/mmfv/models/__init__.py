"""Model adapters: every model the method code sees implements models.base.LMM."""

from __future__ import annotations

import json
from pathlib import Path

from mmfv.models.base import LMM


def load_model(name: str) -> LMM:
    """``tiny`` (the shipped mmfv-tiny), an mmfv-tiny checkpoint folder, ``openflamingo:<folder>``, or a
    Hugging Face vision-language model: a hub id (from the local HF cache when offline) or a local
    folder with config.json, served by models/hf.py through the family's spec (models/specs)."""
    from mmfv.models.tiny.adapter import TinyLMM

    if name.startswith("openflamingo:"):  # "openflamingo:tiny-random" or "openflamingo:<folder>"
        from mmfv.models.openflamingo_adapter import OpenFlamingoLMM

        return OpenFlamingoLMM.load(name.split(":", 1)[1])
    if name in ("tiny", "mmfv-tiny"):
        return TinyLMM.load("tiny")
    p = Path(name)
    if p.is_dir() and (p / "openflamingo.json").exists():
        from mmfv.models.openflamingo_adapter import OpenFlamingoLMM

        return OpenFlamingoLMM.load(p)
    if p.is_dir():
        cfg = p / "config.json"
        if not cfg.exists():
            raise FileNotFoundError(f"{p} has no config.json: not a model folder")
        with open(cfg) as f:
            if json.load(f).get("model_type") == "mmfv_tiny":
                return TinyLMM.load(p)
        return _hf(str(p))
    if p.exists() or name.startswith(("/", ".", "~")) or name.count("/") > 1:
        raise FileNotFoundError(f"model folder {name} does not exist: use 'tiny', a model folder, or a hub id (owner/name)")
    return _hf(name)


def _hf(name: str) -> LMM:
    from mmfv.models.hf import HFLMM

    return HFLMM.load(name)
