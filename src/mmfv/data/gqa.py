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
``relation`` to the query", so by default (``direction="mmfv"``) that edge gives ``query = B``,
``answer = A``, ``relation = "left"`` ("Q: B. A: A" — what is to the left of B? A). For a spatial
relation the same fact read backwards (``B --to the right of--> A``) is used too.
``direction="fu2025"`` asks as Fu et al. (2025) do, Q = subject, A = object ("man holding phone"
-> Q man, A phone); the relation name then reads "query <relation> answer".

**Relations** are names or GQA phrases, or a preset name (:data:`RELATION_PRESETS`: ``cardinal``,
``spatial``, ``agentic``, ``fu2025_spatial``). Spatial phrases map through
:func:`mmfv.relations.from_phrase` ("to the left of" -> ``left``, "under" -> ``below``); any other
predicate keeps its own snake-case name (``holding``, ``sitting_on``).

**Filters.** ``filters="mmfv"`` (:class:`Filters`, the default): bounds on the number of objects in
the image and on the area of the query and the answer object; uniqueness (the query's name occurs
once, all its answers share one name); at most ``max_per_image`` items per image and relation.
``filters="fu2025"``: the paper's filters (:class:`mmfv.data.gqa_fu.FuFilters`: valid objects of
area 0.05..0.5 not on a 25-word blacklist, 3..30 of them, no repeated name, 1..15 matching
relations, exact predicates). Fu's released processed files are read with ``fu_json=``.

**Splits** are made by image (:mod:`mmfv.data.splits`), so no image is in two splits.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

from mmfv import prompts as P
from mmfv import relations as R
from mmfv.data import gqa_fu as F
from mmfv.data import splits as S
from mmfv.data.splits import DEFAULT_FRACTIONS, SPLITS, check_images, split_items, split_of  # noqa: F401 (re-exported)

PathLike = str | os.PathLike
_OBJECT_KEYS = ("name", "x", "y", "w", "h", "relations")
_OPPOSITE = {r: R.opposite(r) for r in R.SPATIAL}

RELATION_PRESETS: dict[str, tuple[str, ...]] = {
    "cardinal": R.CARDINAL,
    "spatial": ("above", "below", "to the left of", "to the right of", "next to", "behind", "in front of"),
    "agentic": ("wearing", "holding", "carrying", "sitting on", "standing on", "standing in", "riding"),
    "fu2025_spatial": ("above", "below", "behind", "next to"),
}
"""Named relation sets. ``agentic`` is the paper's list (prepare_gqa_dataset.py usage example; the
predicates of its released ``gqa_filtered_agentic_*.json``); ``fu2025_spatial`` its spatial example."""
FILTER_PRESETS: tuple[str, ...] = ("mmfv", "fu2025")


@lru_cache(maxsize=65536)
def relation_name(phrase: str) -> str:
    """The mmfv name of a scene-graph predicate (:func:`mmfv.relations.scene_name`):
    "to the left of" -> "left", "sitting on" -> "sitting_on", "left" -> "left"."""
    return R.scene_name(phrase)


def relation_phrases(relations: str | Sequence[str] | None) -> tuple[str, ...]:
    """A preset name or a list of names / phrases, as a tuple of phrases (default: cardinal)."""
    if relations is None:
        return R.CARDINAL
    if isinstance(relations, str):
        if relations not in RELATION_PRESETS:
            raise ValueError(f"unknown GQA relation preset {relations!r}: choose one of {', '.join(RELATION_PRESETS)} "
                             "or give a list of predicates")
        return RELATION_PRESETS[relations]
    out = tuple(relations)
    if not out:
        raise ValueError("relations must name at least one relation")
    for r in out:
        R.user(R.scene_name(r) if isinstance(r, str) else r)
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
        for r in rels:
            R.user(r)
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
        except UnicodeDecodeError as e:
            raise S.not_utf8(path, e) from None
        _validate(path, graphs)
        for iid, sg in graphs.items():
            if iid in merged:
                raise ValueError(f"{path}: image {iid!r} also appears in an earlier scene-graph file")
            merged[iid] = sg
    return merged


# ----------------------------------------------------------------------------- items
def _image_items(iid: str, sg: Mapping[str, Any], image: str, f: Filters,
                 direction: str = "mmfv") -> dict[str, list[tuple[bytes, P.Item]]]:
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
            # src r tgt: src stands in r to tgt -> mmfv asks query tgt, answer src; fu2025 the reverse
            q, a = (tgt, src) if direction == "mmfv" else (src, tgt)
            if r in wanted:
                pairs[r][q].add(a)
            if r in inverse:  # the same fact read from the other side (tgt opposite(r) src)
                pairs[inverse[r]][a].add(q)

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
                    found[(qname, aname)] = (S.stable_key(iid, r, qname, aname), item)
        if found:
            out[r] = list(found.values())
    return out


def build_items(
    scene_graphs: Mapping[str, Mapping[str, Any]],
    image_dir: PathLike,
    filters: Filters | F.FuFilters | None = None,
    check: bool = True,
    *,
    relations: str | Sequence[str] | None = None,
    direction: str = "mmfv",
    report: dict[str, int] | None = None,
) -> dict[str, list[P.Item]]:
    """relation -> items over every image of ``scene_graphs`` (a loaded imageId -> scene graph dict).

    ``filters``: a :class:`Filters` (mmfv's, default) or :class:`~mmfv.data.gqa_fu.FuFilters`
    (the paper's); ``relations`` (a preset name or list) replaces ``filters.relations``. Raises a
    one-line ValueError when a requested relation has no item after filtering, and (with
    ``check``) a FileNotFoundError when images of the items are missing from ``image_dir``.
    ``report`` (if given) receives counts of what each filter dropped.
    """
    if direction not in F.DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}: choose one of {', '.join(F.DIRECTIONS)}")
    folder = Path(image_dir)
    if isinstance(filters, F.FuFilters):
        phrases = relation_phrases(relations)
        entries = F.fu_filter(scene_graphs, [F.predicate_of(r) for r in phrases], filters, report)
        return _from_entries(entries, folder, phrases, direction, filters, check, report,
                             f"GQA items after {filters.describe()} kept {len(entries)} of {len(scene_graphs)} images")
    f = filters or Filters()
    if relations is not None:
        f = replace(f, relations=relation_phrases(relations))
    found: dict[str, list[tuple[bytes, P.Item]]] = {r: [] for r in f.relations}
    for iid, sg in scene_graphs.items():
        for r, its in _image_items(str(iid), sg, str(folder / f"{iid}.jpg"), f, direction).items():
            found[r].extend(its)
    if report is not None:
        report["images"] = len(scene_graphs)
    return S.finish(found, f.relations, f.max_per_image, folder, check,
                    f"GQA items after filtering {len(scene_graphs)} images ({f.describe()}); loosen the filters or drop the relation",
                    report)


def _from_entries(entries: Sequence[Mapping[str, Any]], folder: Path, phrases: Sequence[str], direction: str,
                  f: F.FuFilters, check: bool, report: dict[str, int] | None, what: str) -> dict[str, list[P.Item]]:
    found = F.found_items(entries, folder, phrases, direction, f.unique, report)
    return S.finish(found, list(found), f.max_per_image, folder, check,
                    f"{what} (predicates {', '.join(F.predicate_of(r) for r in phrases)} matched exactly); "
                    "check the predicate spelling or drop the relation", report)


@lru_cache(maxsize=4)
def _cached(source: str, paths: tuple[str, ...], image_dir: str, filters: Filters | F.FuFilters | None,
            relations: tuple[str, ...], direction: str, check: bool) -> tuple[dict[str, tuple[P.Item, ...]], dict[str, int]]:
    report: dict[str, int] = {}
    if source == "fu_json":
        f = filters if isinstance(filters, F.FuFilters) else F.FuFilters()
        entries = F.load(paths)
        report["images"] = len(entries)
        built = _from_entries(entries, Path(image_dir), relations, direction, f, check, report,
                              f"GQA items in {len(entries)} images of the processed file(s)")
    else:
        built = build_items(load_scene_graphs(paths), image_dir, filters, check, relations=relations,
                            direction=direction, report=report)
    return {r: tuple(its) for r, its in built.items()}, report


def items(
    split: str,
    relations: str | Sequence[str] | None = None,
    seed: int = 0,
    *,
    image_dir: PathLike,
    scene_graphs: PathLike | Sequence[PathLike] | None = None,
    fu_json: PathLike | Sequence[PathLike] | None = None,
    filters: str | Filters | F.FuFilters | None = None,
    direction: str = "mmfv",
    fractions: Mapping[str, float] | None = None,
    check: bool = True,
    min_items: int = 1,
    report: dict[str, int] | None = None,
) -> dict[str, list[P.Item]]:
    """relation -> items of ``split`` ("eval", "train", "val", "test"), split by image.

    Source: GQA scene-graph file(s) (``scene_graphs=``) or Fu et al.'s processed JSON
    (``fu_json=``, already filtered: ``filters`` may then only be None or a FuFilters for its
    ``unique`` / ``max_per_image``). ``relations``: a preset name (:data:`RELATION_PRESETS`) or a
    list of names / GQA predicates; None = the filters' relations (cardinal). ``filters``: "mmfv"
    (default) / "fu2025" or a Filters / FuFilters. ``direction``: "mmfv" or "fu2025". A relation
    with fewer than ``min_items`` items in the split is a one-line error naming it. ``report`` (if
    given) receives the counts of what each filter dropped. Parsed files are cached per arguments.
    """
    S.check_split(split)
    if (scene_graphs is None) == (fu_json is None):
        raise ValueError("give exactly one GQA source: scene_graphs= (GQA's *_sceneGraphs.json) or fu_json= (Fu et al.'s processed JSON)")
    if filters is None or isinstance(filters, str):
        if filters not in (None, *FILTER_PRESETS):
            raise ValueError(f"unknown GQA filters {filters!r}: choose one of {', '.join(FILTER_PRESETS)}")
        filters = F.FuFilters() if filters == "fu2025" else (None if fu_json is not None else Filters())
    if fu_json is not None and isinstance(filters, Filters):
        raise ValueError("fu_json files are filtered already and have no image sizes: use filters='fu2025' or none")
    if isinstance(filters, Filters) and relations is None:
        phrases = filters.relations
    else:
        phrases = relation_phrases(relations)
    fr = S.fractions_of(fractions)
    source, given = ("fu_json", fu_json) if fu_json is not None else ("scene_graphs", scene_graphs)
    paths = tuple(str(Path(p).resolve()) for p in _paths(given))  # type: ignore[arg-type]
    built, counts = _cached(source, paths, str(Path(image_dir).resolve()), filters, tuple(phrases), direction, check)
    if report is not None:
        report.update(counts)
    describe = filters.describe() if filters is not None else "Fu et al.'s processed file"
    return S.pick_split(built, split, seed, fr, "GQA", f"{describe}, direction {direction}); use more images or loosen the filters",
                        min_items)
