"""Model adapters: every model the method code sees implements models.base.LMM."""

from __future__ import annotations

import json
from pathlib import Path

from mmfv.models.base import LMM


def load_model(name: str, dtype: str | None = None, device: str | None = None, device_map: str | None = None) -> LMM:
    """``tiny`` (the shipped mmfv-tiny), an mmfv-tiny checkpoint folder, ``openflamingo:<folder>``, or a
    Hugging Face vision-language model: a hub id (from the local HF cache when offline) or a local
    folder with config.json, served by models/hf.py through the family's spec (models/specs)."""
    from mmfv.models.tiny.adapter import TinyLMM

    dtype = None if dtype in (None, "", "auto") else dtype
    device, device_map = device or None, device_map or None
    if device and device_map:
        raise ValueError("give either a device or a device_map, not both")

    def plain(lmm: LMM) -> LMM:
        """mmfv-tiny runs on the CPU in float32; only HF models take device maps or other dtypes."""
        if dtype not in (None, "float32") or device not in (None, "cpu") or device_map:
            raise ValueError(f"model {name!r} runs on the CPU in float32: dtype/device/device_map are for Hugging Face models")
        return lmm

    if name.startswith("openflamingo:"):  # "openflamingo:tiny-random" or "openflamingo:<folder>"
        from mmfv.models.openflamingo_adapter import OpenFlamingoLMM

        if device_map:
            raise ValueError("OpenFlamingo loads on one device: use device, not device_map")
        return OpenFlamingoLMM.load(name.split(":", 1)[1], dtype=dtype, device=device)
    if name in ("tiny", "mmfv-tiny"):
        return plain(TinyLMM.load("tiny"))
    p = Path(name)
    if p.is_dir() and (p / "openflamingo.json").exists():
        from mmfv.models.openflamingo_adapter import OpenFlamingoLMM

        if device_map:
            raise ValueError("OpenFlamingo loads on one device: use device, not device_map")
        return OpenFlamingoLMM.load(p, dtype=dtype, device=device)
    if p.is_dir():
        cfg = p / "config.json"
        if not cfg.exists():
            raise FileNotFoundError(f"{p} has no config.json: not a model folder")
        with open(cfg) as f:
            if json.load(f).get("model_type") == "mmfv_tiny":
                return plain(TinyLMM.load(p))
        return _hf(str(p), dtype, device, device_map)
    if p.exists() or name.startswith(("/", ".", "~")) or name.count("/") > 1:
        raise FileNotFoundError(f"model folder {name} does not exist: use 'tiny', a model folder, or a hub id (owner/name)")
    return _hf(name, dtype, device, device_map)


def _hf(name: str, dtype: str | None, device: str | None, device_map: str | None) -> LMM:
    from mmfv.models.hf import HFLMM

    return HFLMM.load(name, dtype=dtype, device=device, device_map=device_map)
