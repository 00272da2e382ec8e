"""Leak-free splits and the shared tail of every real-data loader (GQA, VSR, user tasks).

Every item is placed in one of ``eval`` / ``train`` / ``val`` / ``test`` by a deterministic hash
of (seed, image id) (see :func:`split_of`), so no image is in two splits. Text-only items carry a
query-derived image id (``text:<query>``), so they are split by query.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from mmfv import prompts as P

SPLITS: tuple[str, ...] = ("eval", "train", "val", "test")
"""The splits real-data items are divided into (by image, or by query for text-only items)."""
DEFAULT_FRACTIONS: dict[str, float] = {"eval": 0.3, "train": 0.4, "val": 0.1, "test": 0.2}
"""Share of the images that goes to each split."""

PathLike = str | os.PathLike
Fractions = tuple[tuple[str, float], ...]


def fractions_of(fractions: Mapping[str, float] | None) -> Fractions:
    """Validated (split, share) pairs in :data:`SPLITS` order; one-line ValueError otherwise."""
    fr = dict(DEFAULT_FRACTIONS if fractions is None else fractions)
    for name, v in fr.items():
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r} in fractions: choose from {', '.join(SPLITS)}")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
            raise ValueError(f"split fraction for {name!r} must be in [0, 1], got {v!r}")
    total = sum(fr.values())
    if total > 1 + 1e-9:
        raise ValueError(f"split fractions must sum to at most 1, got {total:g} ({fr})")
    return tuple((s, float(fr[s])) for s in SPLITS if s in fr)


def split_of(image_id: str, seed: int = 0, fractions: Mapping[str, float] | None = None) -> str | None:
    """The split an image belongs to: a hash of (seed, image id) cut at the cumulative fractions.

    Deterministic across runs and machines; None when the fractions sum to less than 1 and the
    image falls in the unused rest.
    """
    return _split_of(str(image_id), seed, fractions_of(fractions))


def _split_of(image_id: str, seed: int, fractions: Fractions) -> str | None:
    digest = hashlib.sha256(f"mmfv-split:{seed}:{image_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    acc = 0.0
    for name, frac in fractions:
        acc += frac
        if u < acc:
            return name
    return None


def split_items(
    by_relation: Mapping[str, Sequence[P.Item]],
    seed: int = 0,
    fractions: Mapping[str, float] | None = None,
) -> dict[str, dict[str, list[P.Item]]]:
    """split -> relation -> items, assigning each item by its image id (no image in two splits)."""
    fr = fractions_of(fractions)
    out: dict[str, dict[str, list[P.Item]]] = {s: {r: [] for r in by_relation} for s, _ in fr}
    for r, its in by_relation.items():
        for it in its:
            s = _split_of(it.image_id, seed, fr)
            if s is not None:
                out[s][r].append(it)
    return out


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: choose from {', '.join(SPLITS)}")
    return split


def check_images(paths: Iterable[PathLike], image_dir: PathLike | None) -> None:
    """Raise a one-line FileNotFoundError naming the first missing image and how many are missing."""
    if image_dir is not None and not Path(image_dir).is_dir():
        raise FileNotFoundError(f"image folder {image_dir} not found: point image_dir at the dataset's images")
    unique = sorted({str(p) for p in paths})
    missing = [p for p in unique if not os.path.isfile(p)]
    if missing:
        where = f" under {image_dir}" if image_dir is not None else ""
        raise FileNotFoundError(f"{len(missing)} of {len(unique)} images are missing{where}, first: {missing[0]}")


def stable_key(*parts: str) -> bytes:
    """A hash that orders candidate items the same way on every machine."""
    return hashlib.sha1("\x1f".join(parts).encode()).digest()


def keep_per_image(found: list[tuple[bytes, P.Item]], max_per_image: int | None) -> list[P.Item]:
    """At most ``max_per_image`` items per image (chosen by a stable hash), sorted."""
    by_image: dict[str, list[tuple[bytes, P.Item]]] = defaultdict(list)
    for key, it in found:
        by_image[it.image_id].append((key, it))
    kept = []
    for group in by_image.values():
        group.sort(key=lambda t: t[0])
        kept.extend(it for _, it in (group if max_per_image is None else group[:max_per_image]))
    kept.sort(key=lambda it: (it.image_id, it.query, it.answer))
    return kept


def finish(found: Mapping[str, list[tuple[bytes, P.Item]]], relations: Sequence[str], max_per_image: int | None,
           folder: Path | None, check: bool, empty_hint: str, report: dict[str, int] | None = None) -> dict[str, list[P.Item]]:
    """Per relation, the kept items; a relation left with none is an error (``empty_hint`` says what
    was filtered and what to do); with ``check``, every image must exist under ``folder``.
    ``report`` (if given) gets ``per_image_cap`` (items dropped by the cap) and ``kept:<relation>``."""
    out = {r: keep_per_image(found[r], max_per_image) for r in relations}
    if report is not None:
        report["per_image_cap"] = report.get("per_image_cap", 0) + sum(len(found[r]) - len(out[r]) for r in relations)
        for r in relations:
            report[f"kept:{r}"] = len(out[r])
    for r, its in out.items():
        if not its:
            raise ValueError(f"relation {r!r}: no {empty_hint}")
    if check:
        check_images((it.image for its in out.values() for it in its if it.image is not None), folder)
    return out


def pick_split(built: Mapping[str, Sequence[P.Item]], split: str, seed: int, fr: Fractions, what: str, hint: str,
               min_items: int = 1) -> dict[str, list[P.Item]]:
    """One split of ``built`` (leak-free by image); a relation with fewer than ``min_items`` items
    there is a one-line error ending in ``hint`` (what was filtered, then what to do)."""
    per_split = split_items(built, seed, dict(fr))
    if split not in per_split:
        raise ValueError(f"split {split!r} has fraction 0: give it a share in fractions")
    out = per_split[split]
    for r, its in out.items():
        if len(its) < max(1, min_items):
            have = "no" if not its else f"only {len(its)}"
            need = "" if min_items <= 1 else f" (need {min_items})"
            raise ValueError(f"relation {r!r}: {have} {what} items in split {split!r}{need} ({len(built[r])} over all "
                             f"splits, fractions {dict(fr)}, seed {seed}; {hint}")
    return out


def as_tuple(value: Any, what: str) -> tuple[str, ...]:
    """A list of names as a tuple; a bare string is an error (it would be read letter by letter)."""
    if isinstance(value, str):
        raise ValueError(f"{what} must be a list of names, got the string {value!r}")
    return tuple(value)


def lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """(line number, text) of a UTF-8 text file; a line that is not UTF-8 (a binary or latin-1
    file) is a one-line ValueError naming file:line."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not UTF-8 text (byte {e.start} of the line): save the file as UTF-8") from None


def not_utf8(path: str | os.PathLike, e: UnicodeDecodeError) -> ValueError:
    """The one-line error for a JSON file that is not UTF-8 text."""
    return ValueError(f"{path}: not UTF-8 text (byte {e.start}): save the file as UTF-8")


def json_row(line: str, where: str, required: Sequence[str], what: str) -> dict[str, Any]:
    """One line of a JSONL file as a dict with every ``required`` key; otherwise a one-line error
    naming ``where`` (file:line) and what such a line holds (``what``, e.g. "a VSR row")."""
    import json

    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not a JSON object ({e.msg}); the file holds one JSON object per line") from None
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object per line, got {type(row).__name__}")
    for key in required:
        if key not in row:
            raise ValueError(f"{where}: missing key {key!r} ({what} has {', '.join(required)})")
    return row
