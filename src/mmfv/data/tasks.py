"""The user's own relations: a JSONL file of items, or Todd et al.'s JSON task files.

**JSONL** (``dataset = "tasks"``), one item per line::

    {"query": "man", "answer": "phone", "relation": "holding", "image": "imgs/1.jpg", "candidates": ["man", "phone", "table"]}
    {"query": "hot", "answer": "cold", "relation": "antonym"}

``query``, ``answer`` (non-empty strings) and ``relation`` (any phrase; it becomes a lower_case
name: "Sitting on" -> ``sitting_on``, "to the left of" -> ``left``) are required. ``image`` (a path
relative to ``image_dir`` if given, else to the file's folder) and ``candidates`` (the object names
in the image, chance = 1 / their number) are optional. Items without an image are text-only:
their image id is query-derived (:func:`mmfv.prompts.text_id`) and their prompts have no image token.

**Todd et al.** ("Function Vectors in Large Language Models", ericwtodd/function_vectors,
``dataset_files/abstractive/*.json``): a JSON list of ``{"input", "output"}``; the relation is the
file stem ("country-capital.json" -> ``country_capital``).

**Splits** are by image, or by query for text-only items (:mod:`mmfv.data.splits`): an image or a
query is never in two splits, deterministic in the seed.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from mmfv import prompts as P
from mmfv import relations as R
from mmfv.data import splits as S

PathLike = str | os.PathLike
REQUIRED: tuple[str, ...] = ("query", "answer", "relation")
OPTIONAL: tuple[str, ...] = ("image", "candidates")


def _text(row: Mapping[str, Any], key: str, where: str) -> str:
    v = row[key]
    if not isinstance(v, str) or not v.strip():
        raise ValueError(f"{where}: {key!r} must be a non-empty string, got {v!r}")
    return v.strip()


def _paths(files: PathLike | Sequence[PathLike], what: str) -> tuple[Path, ...]:
    out = (Path(files),) if isinstance(files, (str, os.PathLike)) else tuple(Path(p) for p in files)
    if not out:
        raise ValueError(f"no {what} file given")
    for p in out:
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found: pass {what} file(s)")
    return out


def load_jsonl(files: PathLike | Sequence[PathLike], image_dir: PathLike | None = None, check: bool = True) -> list[P.Item]:
    """Items of one or more task JSONL files, in file order.

    Every malformed line is a one-line ValueError ``file:line: what is wrong`` (not a JSON object,
    a missing or empty ``query`` / ``answer`` / ``relation``, a bad type, an unknown key, a bad
    relation name); with ``check`` a missing image file is a FileNotFoundError with file:line.
    """
    out: list[P.Item] = []
    files_of: dict[str, str] = {}  # image id -> the file it names (ids key feature caches)
    for path in _paths(files, "task .jsonl"):
        base = Path(image_dir) if image_dir is not None else path.parent
        for lineno, line in S.lines(path):
            if line.strip():
                it = _item(line, f"{path}:{lineno}", base, check)
                if it.has_image:
                    other = files_of.setdefault(it.image_id, os.path.abspath(it.image))
                    if other != os.path.abspath(it.image):
                        raise ValueError(f"{path}:{lineno}: image {it.image_id!r} names two files ({other} and "
                                         f"{os.path.abspath(it.image)}): pass one image_dir for all task files")
                out.append(it)
    return out


def _item(line: str, where: str, base: Path, check: bool) -> P.Item:
    row = S.json_row(line, where, REQUIRED, f"an item, optional {', '.join(OPTIONAL)};")
    extra = sorted(set(row) - set(REQUIRED) - set(OPTIONAL))
    if extra:
        raise ValueError(f"{where}: unknown key {extra[0]!r} (an item has {', '.join(REQUIRED)}; optional {', '.join(OPTIONAL)})")
    query, answer, phrase = (_text(row, k, where) for k in REQUIRED)
    try:
        relation = R.user(R.scene_name(phrase))
    except R.UnknownRelationError as e:
        raise ValueError(f"{where}: {e}") from None
    cands = row.get("candidates")
    if cands is not None and (not isinstance(cands, list) or not all(isinstance(c, str) and c.strip() for c in cands)):
        raise ValueError(f"{where}: 'candidates' must be a list of non-empty strings, got {cands!r}")
    candidates = tuple(c.strip() for c in cands) if cands else ()
    if candidates and answer not in candidates:
        raise ValueError(f"{where}: answer {answer!r} is not among its candidates {list(candidates)}")
    image = row.get("image")
    if image is None:
        return P.Item(P.text_id(query), query, answer, relation, None, candidates)
    if not isinstance(image, str) or not image.strip():
        raise ValueError(f"{where}: 'image' must be a path string, got {image!r}")
    path = base / image
    if check and not path.is_file():
        raise FileNotFoundError(f"{where}: image {path} not found (paths are relative to {base})")
    return P.Item(Path(os.path.normpath(image)).as_posix(), query, answer, relation, str(path), candidates)


def load_todd(files: PathLike | Sequence[PathLike]) -> list[P.Item]:
    """Text-only items of Todd et al.'s task files (a JSON list of ``{"input", "output"}``; the
    relation is the file stem). Duplicate inputs and empty outputs are a one-line ValueError naming
    the file, how many there are, and the first one's index."""
    out: list[P.Item] = []
    for path in _paths(files, "Todd et al. task .json"):
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
        except UnicodeDecodeError as e:
            raise S.not_utf8(path, e) from None
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected a JSON list of {{\"input\", \"output\"}}, got {type(rows).__name__}")
        relation = R.user(R.normalise(path.stem))
        seen: dict[str, int] = {}
        dups: list[tuple[int, int]] = []
        empty: list[int] = []
        for i, row in enumerate(rows):
            if not isinstance(row, dict) or not isinstance(row.get("input"), str) or not isinstance(row.get("output"), str):
                raise ValueError(f"{path}: index {i}: expected {{\"input\": str, \"output\": str}}, got {row!r}")
            q, a = row["input"].strip(), row["output"].strip()
            if not a or not q:
                empty.append(i)
            elif q in seen:
                dups.append((seen[q], i))
            else:
                seen[q] = i
                out.append(P.Item(P.text_id(q), q, a, relation))
        if empty:
            raise ValueError(f"{path}: {len(empty)} empty input/output(s), first at index {empty[0]}: remove them")
        if dups:
            (a, b), n = dups[0], len(dups)
            raise ValueError(f"{path}: {n} duplicate input(s), first {rows[b]['input']!r} at indices {a} and {b}: keep one")
    return out


def _source(jsonl: Any, todd: Any) -> tuple[str, tuple[str, ...]]:
    if (jsonl is None) == (todd is None):
        raise ValueError("give exactly one task source: jsonl= (mmfv task JSONL) or todd= (Todd et al.'s JSON task files)")
    kind, given = ("jsonl", jsonl) if jsonl is not None else ("todd", todd)
    return kind, tuple(str(p.resolve()) for p in _paths(given, "task"))


@lru_cache(maxsize=4)
def _load(kind: str, paths: tuple[str, ...], image_dir: str | None, check: bool) -> dict[str, tuple[P.Item, ...]]:
    its = load_jsonl(paths, image_dir, check) if kind == "jsonl" else load_todd(paths)
    by: dict[str, list[P.Item]] = defaultdict(list)
    for it in its:
        by[it.relation].append(it)
    return {r: tuple(v) for r, v in by.items()}


def items(
    split: str,
    relations: Sequence[str] | None = None,
    seed: int = 0,
    *,
    jsonl: PathLike | Sequence[PathLike] | None = None,
    todd: PathLike | Sequence[PathLike] | None = None,
    image_dir: PathLike | None = None,
    fractions: Mapping[str, float] | None = None,
    check: bool = True,
    min_items: int = 1,
    report: dict[str, int] | None = None,
) -> dict[str, list[P.Item]]:
    """relation -> items of ``split`` ("eval", "train", "val", "test"), leak-free by image (or by
    query for text-only items), deterministic in ``seed``.

    ``relations``: names or phrases to keep (None = every relation in the files, sorted). A
    relation absent from the files, or with fewer than ``min_items`` items in the split, is a
    one-line error naming it. ``report`` (if given) receives ``items:<relation>`` totals.
    """
    S.check_split(split)
    fr = S.fractions_of(fractions)
    kind, paths = _source(jsonl, todd)
    built = _load(kind, paths, None if image_dir is None else str(Path(image_dir).resolve()), check)
    if relations is None:
        wanted = tuple(sorted(built))
    else:
        wanted = tuple(dict.fromkeys(R.user(R.scene_name(r)) for r in S.as_tuple(relations, "relations")))
    for r in wanted:
        if r not in built:
            raise ValueError(f"relation {r!r}: no task items in {', '.join(paths)} (relations there: {', '.join(sorted(built))})")
    if report is not None:
        report.update({f"items:{r}": len(built[r]) for r in wanted})
    return S.pick_split({r: built[r] for r in wanted}, split, seed, fr, "task",
                        "use more items or give this split a larger fraction", min_items)


def first_token_collisions(lmm: Any, answers: Iterable[str], top: int = 5) -> dict[str, Any]:
    """How often distinct answers share their first token under ``lmm``'s tokenizer (what first-token
    accuracy scores, as in Todd et al.): ``n_answers`` distinct answers, ``n_first_tokens`` distinct
    first tokens, ``collision_rate`` the share of answers whose first token starts another answer too,
    and the ``top`` most shared tokens as ``[token text, answers, up to 3 examples]``."""
    by: dict[int, list[str]] = {}
    for a in dict.fromkeys(answers):
        by.setdefault(lmm.answer_token_id(a), []).append(a)
    n = sum(len(v) for v in by.values())
    shared = sorted((v for v in by.values() if len(v) > 1), key=len, reverse=True)
    return {"n_answers": n, "n_first_tokens": len(by), "collision_rate": round(sum(map(len, shared)) / n, 4) if n else 0.0,
            "top": [[lmm.decode([lmm.answer_token_id(v[0])]), len(v), v[:3]] for v in shared[:top]]}
