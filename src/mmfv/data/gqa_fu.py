"""GQA as Fu et al. (2025) prepare it: their filters, their processed JSON, their question direction.

**Processed format** (repository fushuhao6/Multimodal-Function-Vector, ``data/gqa/agentic/*.json``,
written by ``dataset/prepare_gqa_dataset.py``): a list of images::

    [{"image_id": "2349081",
      "objects": [{"name": "cyclist", "bbox": {"x": 98, "y": 42, "w": 106, "h": 147}}, ...],
      "relations": [{"subject": "cyclist", "object": "bicycle", "predicate": "riding"}]}]

(a dict ``image_id -> {objects, relations}`` is read too, as their loader does). Relations name
objects by name: the filter keeps only images whose kept object names are distinct.

**Filters** (:class:`FuFilters`, ``prepare_gqa_dataset.py`` defaults, applied per image in this
order): an object is *valid* if its box area / image area is in [0.05, 0.5] and its lower-cased
name is not on the 25-word :data:`BLACKLIST`; keep images with 3..30 valid objects, no valid name
twice, and 1..15 relations whose predicate (lower-cased, matched exactly) is asked for and whose
subject and object are both valid, with at least one distinct predicate and no subject using one
predicate with two objects.

**Direction**: Fu asks Q = subject, A = object ("man holding phone" -> ``Q:man. A:phone``),
``direction="fu2025"``; mmfv's default (``"mmfv"``) asks the reverse (Q = object, A = subject).
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from mmfv import prompts as P
from mmfv import relations as R
from mmfv.data import splits as S

BLACKLIST: frozenset[str] = frozenset({
    "sky", "wall", "floor", "ceiling", "building", "trees", "grass", "ocean", "water", "fence", "bush", "neck",
    "hair", "legs", "rocks", "bushes", "clouds", "cloud", "sun", "stars", "cars", "leaves", "fingers", "hand", "arm",
})
"""``DEFAULT_NOT_ALLOWED_OBJECTS`` of prepare_gqa_dataset.py (25 names)."""

DIRECTIONS: tuple[str, ...] = ("mmfv", "fu2025")
"""``mmfv``: Q = object, A = subject (what is left of the dog? the cat). ``fu2025``: Q = subject, A = object."""

_GQA_PHRASE = {"left": "to the left of", "right": "to the right of"}  # mmfv names whose GQA predicate differs


@dataclass(frozen=True)
class FuFilters:
    """The image filters of prepare_gqa_dataset.py, with its defaults; ``unique`` and
    ``max_per_image`` are mmfv's item options (Fu keeps every pair and samples one per image)."""

    min_area: float = 0.05
    max_area: float = 0.5
    min_objects: int = 3
    max_objects: int = 30
    min_relations: int = 1
    max_relations: int = 15
    min_different_relations: int = 1
    max_duplicate_objects: int = 1
    allow_multi_object_predicates: bool = False
    blacklist: frozenset[str] = BLACKLIST
    unique: bool = False
    max_per_image: int | None = 1

    def __post_init__(self) -> None:
        if not 0 <= self.min_area <= self.max_area:
            raise ValueError(f"need 0 <= min_area <= max_area, got {self.min_area}, {self.max_area}")
        if self.min_objects > self.max_objects or self.min_relations > self.max_relations:
            raise ValueError("min_objects / min_relations cannot exceed max_objects / max_relations")
        if self.max_duplicate_objects < 1 or (self.max_per_image is not None and self.max_per_image < 1):
            raise ValueError("max_duplicate_objects and max_per_image must be >= 1")
        object.__setattr__(self, "blacklist", frozenset(n.lower() for n in self.blacklist))

    def describe(self) -> str:
        return (f"fu2025 filters: object area / image area {self.min_area:g}..{self.max_area:g}, "
                f"{len(self.blacklist)} blacklisted names, {self.min_objects}..{self.max_objects} valid objects, "
                f"name repeated at most {self.max_duplicate_objects}x, {self.min_relations}..{self.max_relations} "
                f"matching relations, exact predicates")


def predicate_of(relation: str) -> str:
    """The GQA predicate a requested relation is matched against exactly (lower-cased):
    ``"left"`` -> ``"to the left of"``, ``"sitting_on"`` -> ``"sitting on"``, ``"Holding"`` -> ``"holding"``."""
    name = relation.strip().lower()
    return _GQA_PHRASE.get(name, name.replace("_", " "))


def fu_filter(scene_graphs: Mapping[str, Mapping[str, Any]], predicates: Sequence[str], f: FuFilters = FuFilters(),
              report: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """GQA scene graphs -> Fu's processed entries (``process_scene_graphs``), images in input order.

    ``predicates`` are matched exactly against lower-cased GQA predicate names. ``report`` (if
    given) counts the images each step drops.
    """
    allowed = {p.lower() for p in predicates}
    counts: Counter[str] = Counter()
    out = []
    for iid, sg in scene_graphs.items():
        counts["images"] += 1
        raw = sg.get("objects", {})
        w, h = sg.get("width", 0), sg.get("height", 0)
        if not raw or not w or not h:
            counts["drop:no_objects_or_size"] += 1
            continue
        area = w * h
        valid: dict[str, dict[str, Any]] = {}
        for oid, o in raw.items():
            x, y, ow, oh = o.get("x", 0), o.get("y", 0), o.get("w", 0), o.get("h", 0)
            name = o.get("name", "").lower()
            if f.min_area <= ow * oh / area <= f.max_area and name not in f.blacklist:
                valid[oid] = {"name": name, "bbox": {"x": x, "y": y, "w": ow, "h": oh}}
        if not f.min_objects <= len(valid) <= f.max_objects:
            counts["drop:object_count"] += 1
            continue
        if any(c > f.max_duplicate_objects for c in Counter(v["name"] for v in valid.values()).values()):
            counts["drop:repeated_name"] += 1
            continue
        rels = []
        for sid, subj in raw.items():
            if sid not in valid:
                continue
            edges = subj.get("relations", [])
            for rel in edges.values() if isinstance(edges, dict) else edges:
                tid = rel.get("object")
                pred = rel.get("name", "").lower()
                if tid in valid and pred in allowed:
                    rels.append({"subject": valid[sid]["name"], "object": valid[tid]["name"], "predicate": pred})
        if not f.min_relations <= len(rels) <= f.max_relations or len({r["predicate"] for r in rels}) < f.min_different_relations:
            counts["drop:relation_count"] += 1
            continue
        if not f.allow_multi_object_predicates and any(
                c > 1 for c in Counter((r["subject"], r["predicate"]) for r in rels).values()):
            counts["drop:multi_object_predicate"] += 1
            continue
        out.append({"image_id": str(iid), "objects": list(valid.values()), "relations": rels})
    counts["kept_images"] = len(out)
    if report is not None:
        report.update(counts)
    return out


def load(paths: S.PathLike | Sequence[S.PathLike]) -> list[dict[str, Any]]:
    """Read and validate Fu's processed GQA file(s); one-line ValueError naming the file and entry."""
    paths = (Path(paths),) if isinstance(paths, (str, os.PathLike)) else tuple(Path(p) for p in paths)
    if not paths:
        raise ValueError("no processed GQA file given: pass e.g. gqa_filtered_agentic_test.json")
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: pass Fu et al.'s processed GQA JSON (data/gqa/<set>/*.json)")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
        except UnicodeDecodeError as e:
            raise S.not_utf8(path, e) from None
        if isinstance(raw, dict):
            raw = [{"image_id": k, **v} if isinstance(v, dict) else v for k, v in raw.items()]
        if not isinstance(raw, list):
            raise ValueError(f"{path}: top level must be a list of {{image_id, objects, relations}}, got {type(raw).__name__}")
        for i, e in enumerate(raw):
            _validate(e, f"{path}: entry {i}")
            iid = str(e["image_id"])
            if iid in seen:
                raise ValueError(f"{path}: entry {i}: image {iid!r} appears twice (also in this or an earlier file)")
            seen.add(iid)
            out.append({"image_id": iid, "objects": e["objects"], "relations": e["relations"]})
    return out


def _validate(e: Any, where: str) -> None:
    hint = "an entry is {image_id, objects: [{name, bbox: {x, y, w, h}}], relations: [{subject, object, predicate}]}"
    if not isinstance(e, dict) or not all(k in e for k in ("image_id", "objects", "relations")):
        raise ValueError(f"{where}: not an entry ({hint})")
    if not isinstance(e["image_id"], (str, int)) or isinstance(e["image_id"], bool):
        raise ValueError(f"{where}: 'image_id' must be a string, got {e['image_id']!r}")
    if not isinstance(e["objects"], list) or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) and isinstance(o.get("bbox"), dict) for o in e["objects"]):
        raise ValueError(f"{where}: 'objects' must be a list of {{name, bbox}} ({hint})")
    if not isinstance(e["relations"], list) or not all(
            isinstance(r, dict) and all(isinstance(r.get(k), str) for k in ("subject", "object", "predicate"))
            for r in e["relations"]):
        raise ValueError(f"{where}: 'relations' must be a list of {{subject, object, predicate}} strings ({hint})")


def found_items(entries: Sequence[Mapping[str, Any]], image_dir: Path, relations: Sequence[str], direction: str,
                unique: bool, report: dict[str, int] | None = None) -> dict[str, list[tuple[bytes, P.Item]]]:
    """Candidate items per relation name from processed entries (before the per-image cap).

    A requested relation matches predicates equal to :func:`predicate_of` (exactly, as Fu's filter
    does); its items are keyed by :func:`mmfv.relations.scene_name`. With ``unique``, a question
    (image, relation, query) with two answer names is dropped (Fu keeps both pairs).
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}: choose one of {', '.join(DIRECTIONS)}")
    keys: dict[str, str] = {}  # predicate -> relation name
    for r in relations:
        name = R.user(R.scene_name(r))
        pred = predicate_of(r)
        clash = [p for p, n in keys.items() if n == name and p != pred]
        if clash:
            raise ValueError(f"relations {clash[0]!r} and {pred!r} both name relation {name!r}: ask for one of them")
        keys[pred] = name
    answers: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    names_of: dict[str, tuple[str, ...]] = {}
    for e in entries:
        iid = e["image_id"]
        names_of[iid] = tuple(sorted({o["name"] for o in e["objects"]}))
        for rel in e["relations"]:
            name = keys.get(rel["predicate"].lower())
            if name is not None:
                q, a = (rel["object"], rel["subject"]) if direction == "mmfv" else (rel["subject"], rel["object"])
                answers[(iid, name, q)].add(a)
    found: dict[str, list[tuple[bytes, P.Item]]] = {n: [] for n in keys.values()}
    ambiguous = 0
    for (iid, name, q), ans in sorted(answers.items()):
        if unique and len(ans) > 1:
            ambiguous += 1
            continue
        for a in sorted(ans):
            item = P.Item(iid, q, a, name, str(image_dir / f"{iid}.jpg"), names_of[iid])
            found[name].append((S.stable_key(iid, name, q, a), item))
    if report is not None:
        report["ambiguous"] = report.get("ambiguous", 0) + ambiguous
    return found
