"""Relation items from Visual Spatial Reasoning (VSR, Liu et al. 2023; real COCO images).

Input: VSR JSONL files (github.com/cambridgeltl/visual-spatial-reasoning, ``data/splits/*/*.jsonl``
or ``data/data_files/all_vsr_validated_data.jsonl``), one JSON object per line::

    {"image": "000000050403.jpg", "image_link": "http://images.cocodataset.org/train2017/000000050403.jpg",
     "caption": "The teddy bear is in front of the person.", "label": 1, "relation": "in front of",
     "annotator_id": 31, "vote_true_validator_id": "[2, 6]", "vote_false_validator_id": "[]"}

``label`` 1 = the caption is true of the image, 0 = false; only true rows become items. The
``random`` split and ``data_files`` rows carry a ``reference_frame`` field (left/right relations
only) and no subject/object fields; the ``zeroshot`` split adds ``subj`` and ``obj``. Captions
follow the template "The <subj> [is|are] <relation> the <obj>." in every row of the released
data, so the subject and object are read from the caption; ``subj`` / ``obj`` are only a fallback,
because the released ``subj`` has lost its leading letters for some names ("orse" for "horse",
"andbag" for "handbag": ``str.lstrip("The ")``). Images live at ``<image_dir>/<image>``.

**Direction.** "The cat is left of the dog." says *subj cat is left of obj dog*. An mmfv
:class:`~mmfv.prompts.Item` reads "the answer stands in ``relation`` to the query", so the item is
``query = obj = dog``, ``answer = subj = cat``, ``relation = "left"``.

Relation phrases map through :func:`mmfv.relations.from_phrase` ("left of", "at the left side of"
-> ``left``; "on top of", "over" -> ``above``; "under", "beneath" -> ``below``); other phrases keep
their own snake-case name ("in front of" -> ``in_front_of``) and are used only when asked for.
With ``vertical="separate"`` only "above" / "below" (image-plane position) give ``above`` /
``below``; "on top of", "over", "under", "beneath", "underneath" (support, contact) keep their own
names (``on_top_of``, ``under``, ...).

**Reference frame.** Left/right rows carry ``reference_frame`` 0, 1 or 2 (other rows null); the
VSR repository does not document which code is the intrinsic and which the relative frame, so
``reference_frames`` filters on the codes themselves (rows whose code is null always pass).

**Chance.** A caption names two objects; ``candidates`` are all objects any row names for the
image, and with one caption per image the answer is one of two names: chance 0.5.

Splits are by image (a hash of seed and image id, :mod:`mmfv.data.splits`): the original VSR
splits are by caption and share images, so they are merged and re-split.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from functools import lru_cache
from pathlib import Path
from typing import Any, Collection, Mapping, Sequence

from mmfv import prompts as P
from mmfv import relations as R
from mmfv.data import splits as S
from mmfv.data.splits import DEFAULT_FRACTIONS, SPLITS

__all__ = [
    "DEFAULT_FRACTIONS",
    "SPLITS",
    "VERTICAL",
    "build_items",
    "items",
    "load_rows",
    "parse_caption",
    "relation_name",
    "subject_object",
]

VERTICAL: tuple[str, ...] = ("merge", "separate")
"""``merge``: "on top of" / "under" / ... count as above / below; ``separate``: they keep their names."""

PathLike = str | os.PathLike
REQUIRED_KEYS: tuple[str, ...] = ("image", "caption", "label", "relation")
_TRUE = {"1", "true"}
_FALSE = {"0", "false"}


def _paths(jsonl: PathLike | Sequence[PathLike]) -> tuple[Path, ...]:
    if isinstance(jsonl, (str, os.PathLike)):
        return (Path(jsonl),)
    out = tuple(Path(p) for p in jsonl)
    if not out:
        raise ValueError("no VSR file given: pass one or more VSR .jsonl files")
    return out


def _label(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return value == 1
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"{where}: 'label' must be 0 or 1 (False / True), got {value!r}")


def load_rows(jsonl: PathLike | Sequence[PathLike]) -> list[dict[str, Any]]:
    """Read and validate VSR JSONL file(s); every row gets a bool ``label``.

    Raises FileNotFoundError for a missing file and a one-line ValueError naming the file, line and
    problem for a line that is not a JSON object or lacks a required key.
    """
    rows: list[dict[str, Any]] = []
    for path in _paths(jsonl):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: pass VSR .jsonl files (e.g. data/splits/random/train.jsonl)")
        for lineno, line in S.lines(path):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            row = S.json_row(line, where, REQUIRED_KEYS, "a VSR row")
            for key in ("image", "caption", "relation"):
                if not isinstance(row[key], str) or not row[key].strip():
                    raise ValueError(f"{where}: {key!r} must be a non-empty string, got {row[key]!r}")
            rows.append({**row, "label": _label(row["label"], where)})
    return rows


def parse_caption(caption: str, relation: str) -> tuple[str, str] | None:
    """(subject, object) of a templated VSR caption, lower-cased, or None if it does not fit.

    ``parse_caption("The cat is left of the dog.", "left of") == ("cat", "dog")``.
    """
    m = re.fullmatch(
        rf"\s*the\s+(.+?)\s+(?:(?:is|are)\s+)?{re.escape(relation.strip())}\s+the\s+(.+?)\s*\.?\s*",
        caption,
        flags=re.IGNORECASE,
    )
    if m is None:
        return None
    return " ".join(m.group(1).lower().split()), " ".join(m.group(2).lower().split())


def subject_object(row: Mapping[str, Any]) -> tuple[str, str] | None:
    """(subject, object) of a row: from the caption, else from its ``subj`` / ``obj`` fields."""
    parsed = parse_caption(row["caption"], row["relation"])
    if parsed is not None:
        return parsed
    subj, obj = row.get("subj"), row.get("obj")
    if isinstance(subj, str) and isinstance(obj, str) and subj.strip() and obj.strip():
        return " ".join(subj.lower().split()), " ".join(obj.lower().split())
    return None


def relation_name(phrase: str, vertical: str = "merge") -> str:
    """The mmfv name of a VSR relation phrase ("left of" -> "left"; "under" -> "below", or "under"
    with ``vertical="separate"``)."""
    if vertical not in VERTICAL:
        raise ValueError(f"unknown vertical mapping {vertical!r}: choose one of {', '.join(VERTICAL)}")
    return R.scene_name(phrase, image_plane_only=vertical == "separate")


def _frame_code(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"reference_frame codes are numbers (0, 1, 2) or None, got {value!r}")
    return float(value)


def _describe(relations: Sequence[str], unique: bool, max_per_image: int | None, frames: Any = None, vertical: str = "merge") -> str:
    per = "all" if max_per_image is None else max_per_image
    extra = f", reference_frame in {sorted(frames)}" if frames is not None else ""
    return f"relations={','.join(relations)}, label=1 only, unique={unique}, max_per_image={per}, vertical={vertical}{extra}"


def build_items(
    rows: Sequence[Mapping[str, Any]],
    image_dir: PathLike,
    relations: Sequence[str] = R.CARDINAL,
    *,
    unique: bool = True,
    max_per_image: int | None = 1,
    check: bool = True,
    reference_frames: Collection[int | float] | None = None,
    vertical: str = "merge",
    report: dict[str, int] | None = None,
) -> dict[str, list[P.Item]]:
    """relation -> items from loaded VSR rows (see :func:`load_rows`).

    A true row "The S is r the O." gives Item(query=O, answer=S, relation=r). With ``unique`` a
    (image, query, relation) whose true rows name more than one answer is dropped as ambiguous.
    ``reference_frames`` keeps rows whose ``reference_frame`` code is in it (or null).
    ``candidates`` are all object names any row mentions for that image. ``report`` (if given)
    receives how many rows / items each filter dropped. Raises a one-line ValueError when a
    relation has no item, and (with ``check``) FileNotFoundError for missing images.
    """
    wanted = tuple(dict.fromkeys(relation_name(r, vertical) for r in S.as_tuple(relations, "relations")))
    if not wanted:
        raise ValueError("relations must name at least one relation")
    for r in wanted:
        R.user(r)
    if max_per_image is not None and max_per_image < 1:
        raise ValueError(f"max_per_image must be >= 1 or None, got {max_per_image}")
    frames = None if reference_frames is None else {_frame_code(v) for v in reference_frames}
    folder = Path(image_dir)

    counts = {"rows": len(rows), "false_label": 0, "unparsed": 0, "other_relation": 0, "reference_frame": 0}
    names: dict[str, set[str]] = defaultdict(set)  # image id -> object names mentioned
    files: dict[str, str] = {}
    answers: dict[tuple[str, str, str], set[str]] = defaultdict(set)  # (image, relation, query) -> answers
    for row in rows:
        so = subject_object(row)
        if so is None:
            counts["unparsed"] += 1
            continue
        iid = Path(row["image"]).stem
        files[iid] = row["image"]
        names[iid].update(so)
        r = relation_name(row["relation"], vertical)
        if not row["label"]:
            counts["false_label"] += 1
        elif r not in wanted:
            counts["other_relation"] += 1
        elif frames is not None and (code := _frame_code(row.get("reference_frame"))) is not None and code not in frames:
            counts["reference_frame"] += 1
        else:
            subj, obj = so
            answers[(iid, r, obj)].add(subj)

    found: dict[str, list[tuple[bytes, P.Item]]] = {r: [] for r in wanted}
    counts["ambiguous"] = counts["self_answer"] = 0
    for (iid, r, query), ans in sorted(answers.items()):
        if query in ans:
            counts["self_answer"] += 1
        ans = ans - {query}
        if unique and len(ans) > 1:
            counts["ambiguous"] += 1
            continue
        for a in sorted(ans):
            item = P.Item(iid, query, a, r, str(folder / files[iid]), tuple(sorted(names[iid])))
            found[r].append((S.stable_key(iid, r, query, a), item))
    if report is not None:
        report.update(counts)
    return S.finish(found, wanted, max_per_image, folder, check,
                    f"VSR items after filtering {len(rows)} rows ({_describe(wanted, unique, max_per_image, frames, vertical)}); "
                    "drop the relation or add data", report)


@lru_cache(maxsize=4)
def _cached(paths: tuple[str, ...], image_dir: str, relations: tuple[str, ...], unique: bool, max_per_image: int | None,
            check: bool, frames: frozenset[float] | None, vertical: str) -> tuple[dict[str, tuple[P.Item, ...]], dict[str, int]]:
    report: dict[str, int] = {}
    built = build_items(load_rows(paths), image_dir, relations, unique=unique, max_per_image=max_per_image, check=check,
                        reference_frames=frames, vertical=vertical, report=report)
    return {r: tuple(its) for r, its in built.items()}, report


def items(
    split: str,
    relations: Sequence[str] = R.CARDINAL,
    seed: int = 0,
    *,
    jsonl: PathLike | Sequence[PathLike],
    image_dir: PathLike,
    reference_frames: Collection[int | float] | None = None,
    vertical: str = "merge",
    unique: bool = True,
    max_per_image: int | None = 1,
    fractions: Mapping[str, float] | None = None,
    check: bool = True,
    min_items: int = 1,
    report: dict[str, int] | None = None,
) -> dict[str, list[P.Item]]:
    """relation -> items of ``split`` ("eval", "train", "val", "test") from VSR JSONL file(s),
    re-split by image (cached per arguments). A relation with fewer than ``min_items`` items in the
    split is a one-line error naming it; ``report`` (if given) receives what each filter dropped."""
    S.check_split(split)
    fr = S.fractions_of(fractions)
    paths = tuple(str(Path(p).resolve()) for p in _paths(jsonl))
    rels = tuple(dict.fromkeys(relation_name(r, vertical) for r in S.as_tuple(relations, "relations")))
    frames = None if reference_frames is None else frozenset(_frame_code(v) for v in reference_frames)
    built, counts = _cached(paths, str(Path(image_dir).resolve()), rels, unique, max_per_image, check, frames, vertical)
    if report is not None:
        report.update(counts)
    return S.pick_split(built, split, seed, fr, "VSR", f"{_describe(rels, unique, max_per_image, frames, vertical)}); use more data",
                        min_items)
