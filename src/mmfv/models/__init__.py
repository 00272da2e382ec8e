"""Model adapters: every model the method code sees implements models.base.LMM."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmfv.models.base import LMM


def load_model(name: str, dtype: str | None = None, device: str | None = None, device_map: str | None = None) -> LMM:
    """``tiny`` (the shipped mmfv-tiny), an mmfv-tiny checkpoint folder, ``openflamingo:<folder>``, a
    Hugging Face vision-language or text-only model (a hub id, from the local HF cache when offline,
    or a local folder with config.json), a GGUF file (``gguf:<path>`` or ``<path>.gguf``), or a named
    packaged model (``smollm2-135m``); HF and GGUF models are served by models/hf.py through the
    family's spec (models/specs)."""
    from mmfv.models import gguf
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
        from mmfv.models.openflamingo import OpenFlamingoLMM

        if device_map:
            raise ValueError("OpenFlamingo loads on one device: use device, not device_map")
        return OpenFlamingoLMM.load(name.split(":", 1)[1], dtype=dtype, device=device)
    if name in ("tiny", "mmfv-tiny"):
        return plain(TinyLMM.load("tiny"))
    if gguf.is_gguf(name):
        return gguf.load(name, dtype, device, device_map)
    p = Path(name)
    if p.is_dir() and (p / "openflamingo.json").exists():
        from mmfv.models.openflamingo import OpenFlamingoLMM

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
        raise FileNotFoundError(f"model folder {name} does not exist: use 'tiny', a model folder, a hub id (owner/name), gguf:<file> "
                                f"or {', '.join(gguf.NAMED)}")
    return _hf(name, dtype, device, device_map)


def _hf(name: str, dtype: str | None, device: str | None, device_map: str | None) -> LMM:
    from mmfv.models.hf import HFLMM

    return HFLMM.load(name, dtype=dtype, device=device, device_map=device_map)


def fingerprint(name: str, max_hashed_bytes: int = 64 << 20) -> str:
    """A cheap identity of the weights ``name`` refers to, without loading them.

    Run folders record it so that results of a changed model (e.g. a new mmfv-tiny release, a
    retrained checkpoint in the same folder) are never taken for finished. Local folders: every
    file's name and size, and its content hash (files up to ``max_hashed_bytes``) or mtime (larger
    ones: a copy then only costs a re-run). GGUF files (and named packaged models): the file's size
    and content hash or mtime, by the same rule. Hub ids: the cached snapshot's commit, else the id.
    """
    import hashlib

    from mmfv.models import gguf
    from mmfv.models.tiny.adapter import packaged_weights

    def digest(h: Any, f: Path) -> None:
        st = f.stat()
        h.update(f"{st.st_size}\0".encode())
        if st.st_size <= max_hashed_bytes:
            h.update(hashlib.sha256(f.read_bytes()).digest())
        else:
            h.update(str(st.st_mtime_ns).encode())

    if gguf.is_gguf(name):
        f = gguf.path_of(name)
        if not f.is_file():
            raise FileNotFoundError(f"GGUF file {f} does not exist: give gguf:<path to a .gguf file>")
        h = hashlib.sha256(b"gguf\0")
        digest(h, f)
        return h.hexdigest()[:16]
    if name in ("tiny", "mmfv-tiny"):
        folder = packaged_weights()
    elif name.startswith("openflamingo:"):
        rest = name.split(":", 1)[1]
        if rest == "tiny-random":
            return "openflamingo-tiny-random"
        folder = Path(rest)
    else:
        folder = Path(name)
    if folder.is_dir():
        h = hashlib.sha256()
        for f in sorted(p for p in folder.rglob("*") if p.is_file()):
            h.update(f"{f.relative_to(folder)}\0".encode())
            digest(h, f)
        return h.hexdigest()[:16]
    try:
        from transformers.utils import cached_file

        path = cached_file(name, "config.json", _raise_exceptions_for_missing_entries=False)
    except (OSError, ValueError):
        path = None
    return f"hub:{name}@{Path(path).parent.name}" if path else f"hub:{name}"
