"""Relation items from GQA scene graphs (real images).

Input: ``train_sceneGraphs.json`` / ``val_sceneGraphs.json`` from the GQA download page
(https://cs.stanford.edu/people/dorarad/gqa/download.html), a dict ``imageId -> scene graph``::

    {"2407890": {"width": 640, "height": 480, "location": "...", "weather": "...",
                 "objects": {"271881": {"name": "chair", "x": 220, "y": 310, "w": 50, "h": 80,
                                        "attributes": ["brown", "wooden"],
                                        "relations": [{"name": "to the left of", "object": "275312"}]}}}}

``relations`` lists the *outgoing* edges of an object (the source). The files hold a list; the
download page's example shows a dict ``relationId -> relation`` instead, so both are accepted.
Images live at ``<image_dir>/<imageId>.jpg``.

**Direction.** In GQA, object A with relation ``{"name": "to the left of", "object": B}`` means
*A is to the left of B*. An mmfv :class:`~mmfv.prompts.Item` reads "the answer stands in
``relation`` to the query", so that edge gives ``query = B``, ``answer = A``, ``relation = "left"``
("Q: B. A: A" — what is to the left of B? A). For a spatial relation the same fact read backwards
(``B --to the right of--> A``) is used too, so either annotation direction yields the item.

**Relations.** Spatial phrases are mapped by :func:`mmfv.relations.from_phrase` ("to the left of"
-> ``left``, "above" -> ``above``, "under" -> ``below``, …). Any other predicate (e.g. "holding",
"riding", "sitting on") is a non-spatial relation kept under its own name in snake case
(``holding``, ``riding``, ``sitting_on``); see :func:`relation_name`.

**Filters** (:class:`Filters`): the relations to keep; bounds on the number of objects in the
image; bounds on the area of the query and of the answer object as a fraction of the image area;
uniqueness (the query's name occurs once in the image, and all annotated objects standing in the
relation to the query share one name, so the question has one answer); at most ``max_per_image``
items per image and relation. Uniqueness can only be checked against what GQA annotates.

**Splits** are made by image: a deterministic hash of (seed, image id) places every image in one
of ``eval`` / ``train`` / ``val`` / ``test`` (see :func:`split_of`), so no image is in two splits.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from mmfv import prompts as P
from mmfv import relations as R

SPLITS: tuple[str, ...] = ("eval", "train", "val", "test")
"""The splits real-image items are divided into (by image)."""
DEFAULT_FRACTIONS: dict[str, float] = {"eval": 0.3, "train": 0.4, "val": 0.1, "test": 0.2}
"""Share of the images that goes to each split."""

PathLike = str | os.PathLike
_OBJECT_KEYS = ("name", "x", "y", "w", "h", "relations")
_OPPOSITE = {r: R.opposite(r) for r in R.SPATIAL}


# ----------------------------------------------------------------------------- names and splits
@lru_cache(maxsize=65536)
def relation_name(phrase: str) -> str:
    """The mmfv name of a scene-graph predicate.

    Spatial phrases map through :func:`mmfv.relations.from_phrase` ("to the left of" -> "left");
    any other phrase is lower-cased with spaces as underscores ("sitting on" -> "sitting_on").
    An mmfv name is returned unchanged ("left" -> "left", "above_left" -> "above_left").
    """
    spatial = R.from_phrase(phrase)
    if spatial is not None:
        return spatial
    return "_".join(phrase.strip().lower().split())


def _fractions(fractions: Mapping[str, float] | None) -> tuple[tuple[str, float], ...]:
    fr = dict(DEFAULT_FRACTIONS if fractions is None else fractions)
    for name, v in fr.items():
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r} in fractions: choose from {', '.join(SPLITS)}")
        if not isinstance(v, (int, float)) or not 0 <= v <= 1:
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
    return _split_of(str(image_id), seed, _fractions(fractions))


def _split_of(image_id: str, seed: int, fractions: tuple[tuple[str, float], ...]) -> str | None:
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
    fr = _fractions(fractions)
    out: dict[str, dict[str, list[P.Item]]] = {s: {r: [] for r in by_relation} for s, _ in fr}
    for r, its in by_relation.items():
        for it in its:
            s = _split_of(it.image_id, seed, fr)
            if s is not None:
                out[s][r].append(it)
    return out


def check_images(paths: Iterable[PathLike], image_dir: PathLike) -> None:
    """Raise a one-line FileNotFoundError naming the first missing image and how many are missing."""
    folder = Path(image_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} not found: point image_dir at the dataset's images")
    unique = sorted({str(p) for p in paths})
    missing = [p for p in unique if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(unique)} images are missing under {folder}, first: {missing[0]}"
        )


def _stable_key(*parts: str) -> bytes:
    return hashlib.sha1("\x1f".join(parts).encode()).digest()


def _keep_per_image(found: list[tuple[bytes, P.Item]], max_per_image: int | None) -> list[P.Item]:
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


def _finish(found: Mapping[str, list[tuple[bytes, P.Item]]], relations: Sequence[str], max_per_image: int | None,
            folder: Path, check: bool, empty_hint: str) -> dict[str, list[P.Item]]:
    """Per relation, the kept items; a relation left with none is an error (``empty_hint`` says what
    was filtered and what to do); with ``check``, every image must exist under ``folder``."""
    out = {r: _keep_per_image(found[r], max_per_image) for r in relations}
    for r, its in out.items():
        if not its:
            raise ValueError(f"relation {r!r}: no {empty_hint}")
    if check:
        check_images((it.image for its in out.values() for it in its), folder)
    return out


# ----------------------------------------------------------------------------- filters
@dataclass(frozen=True)
class Filters:
    """Which GQA relations become items, and which images / objects qualify.

    ``relations`` are mmfv names or GQA phrases ("left", "to the left of", "holding", "sitting on");
    they are normalised by :func:`relation_name`. Areas are object box area / image area and apply
    to both the query and the answer object. ``max_objects`` / ``max_per_image`` None = no bound.
    """

    relations: tuple[str, ...] = R.CARDINAL
    min_objects: int = 2
    max_objects: int | None = 25
    min_area: float = 0.01
    max_area: float = 0.5
    unique: bool = True
    max_per_image: int | None = 1

    def __post_init__(self) -> None:
        if isinstance(self.relations, str):
            raise ValueError(f"relations must be a list of names, got the string {self.relations!r}")
        rels = tuple(dict.fromkeys(relation_name(r) for r in self.relations))
        if not rels or any(not r for r in rels):
            raise ValueError(f"relations must be non-empty names, got {list(self.relations)!r}")
        object.__setattr__(self, "relations", rels)
        if self.min_objects < 0:
            raise ValueError(f"min_objects must be >= 0, got {self.min_objects}")
        if self.max_objects is not None and self.max_objects < self.min_objects:
            raise ValueError(f"max_objects ({self.max_objects}) must be >= min_objects ({self.min_objects})")
        if not 0 <= self.min_area <= self.max_area:
            raise ValueError(f"need 0 <= min_area <= max_area, got min_area={self.min_area}, max_area={self.max_area}")
        if self.max_per_image is not None and self.max_per_image < 1:
            raise ValueError(f"max_per_image must be >= 1 or None, got {self.max_per_image}")

    def describe(self) -> str:
        """The filters on one line, for error messages."""
        mx = "inf" if self.max_objects is None else self.max_objects
        per = "all" if self.max_per_image is None else self.max_per_image
        return (
            f"relations={','.join(self.relations)}, objects per image {self.min_objects}..{mx}, "
            f"object area / image area {self.min_area:g}..{self.max_area:g}, unique={self.unique}, "
            f"max_per_image={per}"
        )


# ----------------------------------------------------------------------------- loading
def _paths(scene_graphs: PathLike | Sequence[PathLike]) -> tuple[Path, ...]:
    if isinstance(scene_graphs, (str, os.PathLike)):
        return (Path(scene_graphs),)
    out = tuple(Path(p) for p in scene_graphs)
    if not out:
        raise ValueError("no GQA scene-graph file given: pass train_sceneGraphs.json and/or val_sceneGraphs.json")
    return out


def _relations_of(obj: Mapping[str, Any]) -> list[Any]:
    rels = obj["relations"]
    return list(rels.values()) if isinstance(rels, dict) else rels


def _validate(path: Path, graphs: Any) -> None:
    """One-line ValueError naming the first thing that does not follow the GQA scene-graph schema."""
    hint = "expected GQA scene graphs (train_sceneGraphs.json / val_sceneGraphs.json)"
    if not isinstance(graphs, dict):
        raise ValueError(f"{path}: top level must be a dict imageId -> scene graph, got {type(graphs).__name__}; {hint}")
    for iid, sg in graphs.items():
        where = f"{path}: image {iid!r}"
        if not isinstance(sg, dict):
            raise ValueError(f"{where}: scene graph must be a dict, got {type(sg).__name__}; {hint}")
        for key in ("width", "height", "objects"):
            if key not in sg:
                raise ValueError(f"{where}: missing key {key!r} (a scene graph has width, height, objects); {hint}")
        for key in ("width", "height"):
            v = sg[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                raise ValueError(f"{where}: {key!r} must be a positive number, got {v!r}")
        objects = sg["objects"]
        if not isinstance(objects, dict):
            raise ValueError(f"{where}: 'objects' must be a dict objectId -> object, got {type(objects).__name__}")
        for oid, obj in objects.items():
            owhere = f"{where} object {oid!r}"
            if not isinstance(obj, dict):
                raise ValueError(f"{owhere}: must be a dict, got {type(obj).__name__}")
            for key in _OBJECT_KEYS:
                if key not in obj:
                    raise ValueError(f"{owhere}: missing key {key!r} (an object has name, x, y, w, h, attributes, relations)")
            if not isinstance(obj["name"], str) or not obj["name"].strip():
                raise ValueError(f"{owhere}: 'name' must be a non-empty string, got {obj['name']!r}")
            for key in ("x", "y", "w", "h"):
                v = obj[key]
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise ValueError(f"{owhere}: {key!r} must be a number, got {v!r}")
            if not isinstance(obj["relations"], (list, dict)):
                raise ValueError(f"{owhere}: 'relations' must be a list of {{name, object}}, got {type(obj['relations']).__name__}")
            for rel in _relations_of(obj):
                if not isinstance(rel, dict) or not isinstance(rel.get("name"), str) or not isinstance(rel.get("object"), str):
                    raise ValueError(f"{owhere}: each relation must be {{'name': str, 'object': objectId str}}, got {rel!r}")


def load_scene_graphs(paths: PathLike | Sequence[PathLike]) -> dict[str, dict[str, Any]]:
    """Read and validate one or more GQA scene-graph files; merged imageId -> scene graph.

    Raises FileNotFoundError for a missing file and a one-line ValueError for invalid JSON, the
    wrong schema, or an image id present in two files.
    """
    merged: dict[str, dict[str, Any]] = {}
    for path in _paths(paths):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: pass GQA's train_sceneGraphs.json / val_sceneGraphs.json")
        try:
            with open(path, encoding="utf-8") as f:
                graphs = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
        _validate(path, graphs)
        for iid, sg in graphs.items():
            if iid in merged:
                raise ValueError(f"{path}: image {iid!r} also appears in an earlier scene-graph file")
            merged[iid] = sg
    return merged


# ----------------------------------------------------------------------------- items
def _image_items(iid: str, sg: Mapping[str, Any], image: str, f: Filters) -> dict[str, list[tuple[bytes, P.Item]]]:
    """Candidate items of one image, per relation, before the per-image cap."""
    objects: Mapping[str, Mapping[str, Any]] = sg["objects"]
    if len(objects) < f.min_objects or (f.max_objects is not None and len(objects) > f.max_objects):
        return {}
    names = {oid: o["name"].strip() for oid, o in objects.items()}
    counts = Counter(names.values())
    image_area = float(sg["width"]) * float(sg["height"])
    wanted = set(f.relations)
    inverse = {r: o for r, o in _OPPOSITE.items() if o in wanted}  # r -> its opposite, when that is wanted

    # relation -> query object -> answer objects (each answer stands in the relation to the query)
    pairs: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for src, obj in objects.items():
        for rel in _relations_of(obj):
            tgt = rel["object"]
            if tgt == src or tgt not in objects:
                continue
            r = relation_name(rel["name"])
            if r in wanted:  # src r tgt: src stands in r to tgt -> query tgt, answer src
                pairs[r][tgt].add(src)
            if r in inverse:  # the same fact read from tgt's side
                pairs[inverse[r]][src].add(tgt)

    def area_ok(oid: str) -> bool:
        o = objects[oid]
        return f.min_area <= float(o["w"]) * float(o["h"]) / image_area <= f.max_area

    candidates = tuple(sorted(set(names.values())))
    out: dict[str, list[tuple[bytes, P.Item]]] = {}
    for r, by_query in pairs.items():
        found: dict[tuple[str, str], tuple[bytes, P.Item]] = {}  # (query, answer) names -> item
        for q, answers in by_query.items():
            qname = names[q]
            if f.unique and counts[qname] != 1:
                continue
            answer_names = {names[a] for a in answers} - {qname}
            if f.unique and len(answer_names) != 1:
                continue
            if not answer_names or not area_ok(q):
                continue
            for aname in sorted(answer_names):
                if (qname, aname) not in found and any(area_ok(a) for a in answers if names[a] == aname):
                    item = P.Item(iid, qname, aname, r, image, candidates)
                    found[(qname, aname)] = (_stable_key(iid, r, qname, aname), item)
        if found:
            out[r] = list(found.values())
    return out


def build_items(
    scene_graphs: Mapping[str, Mapping[str, Any]],
    image_dir: PathLike,
    filters: Filters | None = None,
    check: bool = True,
) -> dict[str, list[P.Item]]:
    """relation -> items over every image of ``scene_graphs`` (a loaded imageId -> scene graph dict).

    Raises a one-line ValueError when a requested relation has no item after filtering, and (with
    ``check``) a FileNotFoundError when images of the items are missing from ``image_dir``.
    """
    f = filters or Filters()
    folder = Path(image_dir)
    found: dict[str, list[tuple[bytes, P.Item]]] = {r: [] for r in f.relations}
    for iid, sg in scene_graphs.items():
        for r, its in _image_items(str(iid), sg, str(folder / f"{iid}.jpg"), f).items():
            found[r].extend(its)
    return _finish(found, f.relations, f.max_per_image, folder, check,
                   f"GQA items after filtering {len(scene_graphs)} images ({f.describe()}); loosen the filters or drop the relation")


@lru_cache(maxsize=4)
def _cached(paths: tuple[str, ...], image_dir: str, filters: Filters, check: bool) -> dict[str, tuple[P.Item, ...]]:
    built = build_items(load_scene_graphs(paths), image_dir, filters, check)
    return {r: tuple(its) for r, its in built.items()}


def items(
    split: str,
    scene_graphs: PathLike | Sequence[PathLike],
    image_dir: PathLike,
    relations: Sequence[str] | None = None,
    *,
    seed: int = 0,
    fractions: Mapping[str, float] | None = None,
    filters: Filters | None = None,
    check: bool = True,
) -> dict[str, list[P.Item]]:
    """relation -> items of ``split`` built from GQA scene-graph file(s), split by image.

    ``relations`` (if given) replaces ``filters.relations``. The parsed files are cached per
    (files, image_dir, filters), so asking for each split in turn reads them once.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: choose from {', '.join(SPLITS)}")
    f = filters or Filters()
    if relations is not None:
        f = replace(f, relations=tuple(relations))
    fr = _fractions(fractions)
    paths = tuple(str(Path(p).resolve()) for p in _paths(scene_graphs))
    built = _cached(paths, str(Path(image_dir).resolve()), f, check)
    return _pick_split(built, split, seed, fr, "GQA", f"{f.describe()}); use more images or loosen the filters")


def _pick_split(built: Mapping[str, Sequence[P.Item]], split: str, seed: int, fr: Any, what: str, hint: str) -> dict[str, list[P.Item]]:
    """One split of ``built`` (leak-free by image); a relation with no items there is a one-line error
    ending in ``hint`` (what was filtered, then what to do)."""
    per_split = split_items(built, seed, dict(fr))
    if split not in per_split:
        raise ValueError(f"split {split!r} has fraction 0: give it a share in fractions")
    out = per_split[split]
    for r, its in out.items():
        if not its:
            raise ValueError(f"relation {r!r}: no {what} items in split {split!r} ({len(built[r])} over all splits, "
                             f"fractions {dict(fr)}, seed {seed}; {hint}")
    return out
