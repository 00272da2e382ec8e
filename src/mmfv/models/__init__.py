"""Model adapters: every model the method code sees implements models.base.LMM."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmfv.models.base import LMM

if TYPE_CHECKING:
    from mmfv.models.specs import Spec


def load_model(name: str, dtype: str | None = None, device: str | None = None, device_map: str | None = None,
               spec: str | Path | None = None) -> LMM:
    """``tiny`` (the shipped mmfv-tiny), an mmfv-tiny checkpoint folder, ``openflamingo:<folder>``, a
    Hugging Face vision-language or text-only model (a hub id, from the local HF cache when offline,
    or a local folder with config.json), a GGUF file (``gguf:<path>`` or ``<path>.gguf``), or a named
    packaged model (``smollm2-135m``); HF and GGUF models are served by models/hf.py through the
    family's spec (models/specs). ``spec``: a Python file whose ``SPEC``/``SPECS`` are registered
    first (:func:`register_file`; the file's code runs)."""
    from mmfv.models import gguf
    from mmfv.models.tiny.adapter import TinyLMM

    if spec:
        register_file(spec)

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
        from mmfv.io import read_json

        meta = read_json(cfg, fix="restore the model folder (copy or download it again)")
        if isinstance(meta, dict) and meta.get("model_type") == "mmfv_tiny":
            return plain(TinyLMM.load(p))
        return _hf(str(p), dtype, device, device_map)
    return _hf(hub_id(name), dtype, device, device_map)


def register(spec: "Spec") -> "Spec":
    """Add a model family from outside the package (a :class:`mmfv.models.specs.Spec`): HF models of
    its ``model_types`` are then served by it, before any built-in family. A built-in family's name is
    refused; registering a name again replaces it. See docs/adding-a-model-family.md."""
    from mmfv.models import specs

    return specs.register(spec)


def register_file(path: str | Path) -> tuple["Spec", ...]:
    """Run the Python file ``path`` and :func:`register` its ``SPEC`` (or ``SPECS``, a list): what
    ``mmfv run --spec FILE`` and ``[model] spec`` do. The file's code runs: use files you trust."""
    from mmfv.models import specs

    return specs.register_file(path)


def hub_id(name: str) -> str:
    """``name`` (not a local folder) as a hub id, after one-line errors for what cannot be one: a
    file, a missing folder, a malformed id, a model neither cached nor reachable."""
    if Path(name).exists():
        raise NotADirectoryError(f"model {name} is a file, not a model folder: pass the folder that holds config.json")
    if name.startswith(("/", ".", "~")) or name.count("/") > 1:
        raise FileNotFoundError(f"model folder {name} does not exist: use 'tiny', a model folder, a hub id (owner/name), gguf:<file> "
                                f"or {', '.join(_gguf_names())}")
    check_hub(name)
    return name


def _offline() -> bool:
    import os

    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def check_hub(name: str) -> None:
    """Fail at once, in one line, for a name that cannot be a hub id, or for a hub model that is not
    in the local cache while offline (HF_HUB_OFFLINE) or while the hub cannot be reached — instead
    of a minute of download retries."""
    import os
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise ValueError(f"model {name!r} is not 'tiny', an existing model folder, openflamingo:<folder>, or a hub id (owner/name)") from None
    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return
    if _offline():
        raise FileNotFoundError(f"model {name!r} is not in the Hugging Face cache and HF_HUB_OFFLINE is set: download it first, or unset HF_HUB_OFFLINE")
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")):
        return  # through a proxy: only the download itself can tell
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=5).close()
    except OSError as e:
        raise ConnectionError(f"model {name!r} is not in the Hugging Face cache and {url.hostname} cannot be reached ({e.strerror or e}): "
                              "connect, or download it where there is a network (HF_HOME), or set HF_HUB_OFFLINE=1") from None


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
    if not name.startswith("openflamingo:"):
        hub_id(name)
    try:
        from transformers.utils import cached_file

        path = cached_file(name, "config.json", _raise_exceptions_for_missing_entries=False)
    except (OSError, ValueError):
        path = None
    return f"hub:{name}@{Path(path).parent.name}" if path else f"hub:{name}"


def _gguf_names() -> tuple[str, ...]:
    from mmfv.models import gguf

    return tuple(gguf.NAMED)
