"""Model adapters: every model the method code sees implements models.base.LMM."""

from __future__ import annotations

import json
from pathlib import Path

from mmfv.models.base import LMM


def load_model(name: str) -> LMM:
    """``tiny`` (the shipped mmfv-tiny), an mmfv-tiny checkpoint folder, or (later) an HF model."""
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
    raise ValueError(f"unknown model {name!r}: use 'tiny', an mmfv-tiny checkpoint folder, or openflamingo:<folder>")
