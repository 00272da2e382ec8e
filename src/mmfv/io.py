"""Durable, atomic writes: a result file is either the old one or the complete new one, never half
— also after a power loss (the data and the folder entry are synced) — and it gets the permissions
the user's umask gives new files (0644 by default), like any file the user writes."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and durably; under torchrun only rank 0 writes."""
    from mmfv import dist

    path = Path(path)
    if not dist.is_main():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # unique per process
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        try:
            dfd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:  # some file systems cannot sync a folder; the file itself is synced
            pass
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented, key-sorted JSON, atomically (byte-stable for equal content)."""
    return write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def write_csv(path: str | os.PathLike, rows: list[dict[str, Any]]) -> Path:
    """Rows as CSV (columns in first-seen order; missing cells empty), atomically."""
    import csv
    import io

    cols: dict[str, None] = {}
    for r in rows:
        cols.update(dict.fromkeys(r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(cols), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return write_bytes(path, buf.getvalue().encode())


def read_json(path: str | os.PathLike, fix: str = "delete it and rerun the stage that writes it") -> Any:
    """The JSON in ``path``; a damaged file raises one line naming it and what to do (``fix``)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is damaged ({type(e).__name__}: {str(e).splitlines()[0]}): {fix}") from None


def safetensors_bytes(tensors: dict, metadata: dict[str, str] | None = None) -> bytes:
    """A safetensors file as bytes, with its JSON header written key-sorted: equal tensors and
    metadata give equal bytes (the library's own writer orders metadata at random)."""
    from safetensors.torch import save

    raw = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()})
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    header.pop("__metadata__", None)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format aligns the data to 8 bytes
    return len(text).to_bytes(8, "little") + text + raw[8 + n :]


def write_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    """Safetensors file written atomically and byte-stably (rank 0 only under torchrun)."""
    return write_bytes(path, safetensors_bytes(tensors, metadata))
