"""Fu et al. (2025)'s GQA: their filters rule by rule, their processed JSON (a real excerpt), direction.

Scene-graph fixtures follow GQA's format (see tests/data/test_gqa.py); images are 100 x 100, so an
object of w x h covers w * h / 10000 of the image.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmfv.data import gqa, gqa_fu

EXCERPT = Path(__file__).parents[2] / ".." / "shared" / "data" / "gqa_fu_agentic_excerpt.json"


def obj(name, w=30, h=30, rels=()):
    return {"name": name, "x": 1, "y": 2, "w": w, "h": h, "attributes": [],
            "relations": [{"name": n, "object": o} for n, o in rels]}


def graph(**objects):
    return {"width": 100, "height": 100, "objects": objects}


def kept(graphs, predicates=("holding",), **kw):
    report: dict[str, int] = {}
    out = gqa_fu.fu_filter(graphs, predicates, gqa_fu.FuFilters(**kw), report)
    return [e["image_id"] for e in out], report


def test_defaults_are_the_papers():
    f = gqa_fu.FuFilters()
    assert (f.min_area, f.max_area, f.min_objects, f.max_objects) == (0.05, 0.5, 3, 30)
    assert (f.min_relations, f.max_relations, f.min_different_relations, f.max_duplicate_objects) == (1, 15, 1, 1)
    assert f.allow_multi_object_predicates is False
    # prepare_gqa_dataset.py, DEFAULT_NOT_ALLOWED_OBJECTS, written out by hand
    assert gqa_fu.BLACKLIST == {"sky", "wall", "floor", "ceiling", "building", "trees", "grass", "ocean", "water",
                                "fence", "bush", "neck", "hair", "legs", "rocks", "bushes", "clouds", "cloud", "sun",
                                "stars", "cars", "leaves", "fingers", "hand", "arm"}
    assert len(gqa_fu.BLACKLIST) == 25


def test_output_entry_format():
    g = {"7": graph(a=obj("Man", rels=[("Holding", "b")]), b=obj("phone", 10, 50), c=obj("table", 100, 50))}
    (entry,) = gqa_fu.fu_filter(g, ["holding"])
    assert entry == {
        "image_id": "7",
        "objects": [{"name": "man", "bbox": {"x": 1, "y": 2, "w": 30, "h": 30}},
                    {"name": "phone", "bbox": {"x": 1, "y": 2, "w": 10, "h": 50}},   # area 0.05: bounds inclusive
                    {"name": "table", "bbox": {"x": 1, "y": 2, "w": 100, "h": 50}}],  # area 0.5
        "relations": [{"subject": "man", "object": "phone", "predicate": "holding"}],
    }


def test_each_filter_drops_what_it_should():
    base = dict(b=obj("phone"), c=obj("table"), d=obj("cup"))
    g = {
        "ok": graph(a=obj("man", rels=[("holding", "b")]), **base),
        "small_answer": graph(a=obj("man", rels=[("holding", "b")]), b=obj("phone", 10, 49), c=obj("table"), d=obj("cup")),
        "big_subject": graph(a=obj("man", 100, 51, rels=[("holding", "b")]), **base),
        "blacklisted": graph(a=obj("Hand", rels=[("holding", "b")]), **base),
        "too_few": graph(a=obj("man", rels=[("holding", "b")]), b=obj("phone"), c=obj("sky")),
        "repeated": graph(a=obj("man", rels=[("holding", "b")]), b=obj("phone"), c=obj("cup"), d=obj("cup")),
        "repeat_invalid": graph(a=obj("man", rels=[("holding", "b")]), b=obj("phone"), c=obj("cup"), d=obj("cup", 5, 5),
                                e=obj("table")),
        "no_match": graph(a=obj("man", rels=[("holding ", "b"), ("carrying", "c")]), **base),
        "multi": graph(a=obj("man", rels=[("holding", "b"), ("holding", "d")]), **base),
        "two_holders": graph(a=obj("man", rels=[("holding", "d")]), b=obj("woman", rels=[("holding", "d")]),
                             c=obj("table"), d=obj("cup")),
        "no_size": {"width": 0, "height": 100, "objects": {"a": obj("man")}},
    }
    ids, report = kept(g)
    assert ids == ["ok", "repeat_invalid", "two_holders"]
    assert report == {"images": 11, "drop:no_objects_or_size": 1, "drop:object_count": 1, "drop:repeated_name": 1,
                      "drop:relation_count": 4, "drop:multi_object_predicate": 1, "kept_images": 3}
    # the bounds are parameters
    assert kept(g, max_objects=3)[0] == []  # each kept image has 4 valid objects
    assert kept(g, min_objects=2)[0] == ["ok", "too_few", "repeat_invalid", "two_holders"]
    assert kept(g, allow_multi_object_predicates=True)[0] == ["ok", "repeat_invalid", "multi", "two_holders"]
    assert "no_match" in kept(g, predicates=("carrying",))[0]


def test_relation_count_bounds():
    objects = {f"o{i}": obj(f"thing{i}", 10, 50) for i in range(8)}
    objects["o0"] = obj("thing0", 10, 50, rels=[("holding", f"o{i}") for i in range(1, 4)] + [("wearing", "o4")])
    g = {"1": graph(**objects)}
    assert kept(g, ("holding", "wearing"), allow_multi_object_predicates=True)[0] == ["1"]
    assert kept(g, ("holding", "wearing"), allow_multi_object_predicates=True, max_relations=3)[0] == []
    assert kept(g, ("holding", "wearing"), allow_multi_object_predicates=True, min_different_relations=3)[0] == []


def test_predicate_of():
    assert gqa_fu.predicate_of("left") == "to the left of"
    assert gqa_fu.predicate_of("sitting_on") == "sitting on"
    assert gqa_fu.predicate_of("Holding") == "holding"
    assert gqa_fu.predicate_of("next to") == "next to"


def test_found_items_direction_and_uniqueness(tmp_path):
    entries = [{"image_id": "1", "objects": [{"name": n, "bbox": {}} for n in ("man", "phone", "hat", "shirt")],
                "relations": [{"subject": "man", "object": "phone", "predicate": "holding"},
                              {"subject": "man", "object": "hat", "predicate": "wearing"},
                              {"subject": "man", "object": "shirt", "predicate": "wearing"}]}]
    fu = gqa_fu.found_items(entries, tmp_path, ["holding", "wearing"], "fu2025", unique=False)
    assert [(it.query, it.answer) for _, it in fu["holding"]] == [("man", "phone")]
    assert sorted((it.query, it.answer) for _, it in fu["wearing"]) == [("man", "hat"), ("man", "shirt")]
    assert fu["holding"][0][1].image == str(tmp_path / "1.jpg")
    assert fu["holding"][0][1].candidates == ("hat", "man", "phone", "shirt")
    report: dict[str, int] = {}
    strict = gqa_fu.found_items(entries, tmp_path, ["holding", "wearing"], "fu2025", unique=True, report=report)
    assert strict["wearing"] == [] and report["ambiguous"] == 1
    mm = gqa_fu.found_items(entries, tmp_path, ["holding"], "mmfv", unique=True)
    assert [(it.query, it.answer) for _, it in mm["holding"]] == [("phone", "man")]
    with pytest.raises(ValueError, match="both name relation 'above'"):
        gqa_fu.found_items(entries, tmp_path, ["above", "on top of"], "fu2025", unique=True)
    with pytest.raises(ValueError, match="unknown direction"):
        gqa_fu.found_items(entries, tmp_path, ["holding"], "backwards", unique=True)


@pytest.mark.parametrize("content, expect", [
    ({"a": 1}, "not an entry"),
    ([{"image_id": "1", "objects": []}], "not an entry"),
    ([{"image_id": None, "objects": [], "relations": []}], "'image_id' must be a string"),
    ([{"image_id": "1", "objects": [{"name": "x"}], "relations": []}], "'objects' must be a list"),
    ([{"image_id": "1", "objects": [], "relations": [{"subject": "a", "object": "b"}]}], "'relations' must be a list"),
    ([{"image_id": "1", "objects": [], "relations": []}] * 2, "appears twice"),
    ("nope", "top level must be a list"),
])
def test_load_errors_are_one_line(tmp_path, content, expect):
    path = tmp_path / "fu.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError) as e:
        gqa_fu.load(path)
    assert expect in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)
    path.write_text("[{")
    with pytest.raises(ValueError, match="not valid JSON"):
        gqa_fu.load(path)
    with pytest.raises(FileNotFoundError, match="processed GQA JSON"):
        gqa_fu.load(tmp_path / "missing.json")


# ----------------------------------------------------------------------------- the released file
@pytest.fixture(scope="module")
def excerpt():
    if not EXCERPT.is_file():
        pytest.skip(f"real excerpt {EXCERPT} not found (shared data folder absent)")
    return EXCERPT


def test_real_excerpt_loads(excerpt):
    entries = gqa_fu.load(excerpt)
    assert len(entries) == 60
    assert sum(len(e["objects"]) for e in entries) == 259
    preds: dict[str, int] = {}
    for e in entries:
        for r in e["relations"]:
            preds[r["predicate"]] = preds.get(r["predicate"], 0) + 1
    assert preds == {"wearing": 48, "holding": 11, "riding": 8, "sitting on": 2, "standing on": 2, "carrying": 1,
                     "standing in": 1}
    assert set(preds) == set(gqa.RELATION_PRESETS["agentic"])


def test_real_excerpt_items_fu2025_direction(excerpt):
    out = gqa.items("eval", "agentic", image_dir=excerpt.parent, fu_json=excerpt, direction="fu2025", check=False,
                    fractions={"eval": 1.0})
    assert set(out) == {"wearing", "holding", "riding", "sitting_on", "standing_on", "carrying", "standing_in"}
    # image 2349081: {"subject": "cyclist", "object": "bicycle", "predicate": "riding"} -> Q cyclist, A bicycle
    (it,) = [it for it in out["riding"] if it.image_id == "2349081"]
    assert (it.query, it.answer) == ("cyclist", "bicycle")
    assert it.candidates == ("bicycle", "cyclist", "drawings", "figure", "person", "shirt", "sign")
    back = gqa.items("eval", ["riding"], image_dir=excerpt.parent, fu_json=excerpt, check=False, fractions={"eval": 1.0})
    assert ("bicycle", "cyclist") in {(i.query, i.answer) for i in back["riding"] if i.image_id == "2349081"}


def test_real_excerpt_splits_are_disjoint(excerpt):
    per = {s: gqa.items(s, ["wearing"], 3, image_dir=excerpt.parent, fu_json=excerpt, check=False) for s in gqa.SPLITS}
    ids = [{it.image_id for it in per[s]["wearing"]} for s in gqa.SPLITS]
    assert all(ids) and sum(map(len, ids)) == len(set().union(*ids))


def test_released_excerpt_was_not_made_with_the_scripts_defaults(excerpt):
    """A finding, kept as a test: the released file breaks three of prepare_gqa_dataset.py's own
    defaults (images with 2 objects, the blacklisted 'grass', a subject wearing two things)."""
    entries = gqa_fu.load(excerpt)
    f = gqa_fu.FuFilters()
    two_objects = [e["image_id"] for e in entries if len(e["objects"]) < f.min_objects]
    blacklisted = [e["image_id"] for e in entries if {o["name"] for o in e["objects"]} & f.blacklist]
    multi = [e["image_id"] for e in entries
             if len({(r["subject"], r["predicate"]) for r in e["relations"]}) < len(e["relations"])]
    assert (len(two_objects), len(blacklisted), len(multi)) == (6, 4, 5)
