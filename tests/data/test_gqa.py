"""GQA scene graphs -> relation items: direction, mapping, filters, splits, errors, prompts.

Fixtures are tiny files in GQA's real format (train_sceneGraphs.json: imageId -> {width, height,
objects: {objectId: {name, x, y, w, h, attributes, relations: [{name, object}]}}}; images at
<image_dir>/<imageId>.jpg), written to tmp_path.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from mmfv import prompts as P
from mmfv import relations as R
from mmfv.data import gqa

NAMES = ["cat", "dog", "lamp", "cup", "tree", "car", "bird", "book", "chair", "vase", "clock", "shoe"]


def obj(name, x, y, w=20, h=20, rels=()):
    return {"name": name, "x": x, "y": y, "w": w, "h": h, "attributes": ["small"],
            "relations": [{"name": n, "object": o} for n, o in rels]}


def graph(objects, width=100, height=100):
    return {"width": width, "height": height, "location": "indoors", "objects": objects}


def write(tmp_path: Path, graphs, name="train_sceneGraphs.json", images=True):
    path = tmp_path / name
    path.write_text(json.dumps(graphs))
    img_dir = tmp_path / "images"
    img_dir.mkdir(exist_ok=True)
    if images:
        for iid in graphs:
            Image.new("RGB", (8, 8), (200, 30, 30)).save(img_dir / f"{iid}.jpg", "JPEG")
    return path, img_dir


def standard_graph(i: int):
    """A query object in the middle with an annotated neighbour on each side (geometry consistent)."""
    n = [NAMES[(i + j) % len(NAMES)] for j in range(5)]
    q = f"{i}0"
    return graph({
        q: obj(n[0], 40, 40),
        f"{i}1": obj(n[1], 5, 40, rels=[("to the left of", q)]),
        f"{i}2": obj(n[2], 75, 40, rels=[("to the right of", q)]),
        f"{i}3": obj(n[3], 40, 5, rels=[("above", q)]),
        f"{i}4": obj(n[4], 40, 75, rels=[("under", q)]),
    })


@pytest.fixture
def many(tmp_path):
    graphs = {str(1000 + i): standard_graph(i) for i in range(40)}
    return (*write(tmp_path, graphs), graphs)


def build(graphs, img_dir, **kw):
    kw.setdefault("min_objects", 1)
    kw.setdefault("max_per_image", None)
    return gqa.build_items(graphs, img_dir, gqa.Filters(**kw))


def pairs(its):
    return {(it.image_id, it.query, it.answer) for it in its}


# ----------------------------------------------------------------------------- direction, mapping
def test_direction_source_relation_target_means_answer_is_source(tmp_path):
    # GQA: cat --"to the left of"--> dog means the cat is left of the dog.
    g = {"1": graph({
        "a": obj("cat", 5, 40, rels=[("to the left of", "b")]),
        "b": obj("dog", 60, 40),
        "c": obj("lamp", 40, 5, rels=[("above", "b")]),
    })}
    _, img = write(tmp_path, g)
    out = build(g, img)
    assert pairs(out["left"]) == {("1", "dog", "cat")}  # what is left of the dog? the cat
    assert pairs(out["right"]) == {("1", "cat", "dog")}  # same fact read from the cat's side
    assert pairs(out["above"]) == {("1", "dog", "lamp")}
    assert pairs(out["below"]) == {("1", "lamp", "dog")}
    it = out["left"][0]
    assert it.relation == "left" and it.image == str(img / "1.jpg")
    assert it.candidates == ("cat", "dog", "lamp")
    assert it.load_image().size == (8, 8)


def test_items_agree_with_relation_geometry(many):
    _, img, graphs = many
    out = build(graphs, img)
    for r, its in out.items():
        drow, dcol = R.offset(r)
        for it in its:
            boxes = {o["name"]: o for o in graphs[it.image_id]["objects"].values()}
            q, a = boxes[it.query], boxes[it.answer]
            sign = lambda v: (v > 0) - (v < 0)  # noqa: E731
            assert (sign(a["y"] - q["y"]), sign(a["x"] - q["x"])) == (drow, dcol), (r, it)


def test_phrase_mapping_and_non_spatial_relations(tmp_path):
    g = {"1": graph({
        "a": obj("man", 10, 10, rels=[("holding", "b"), ("sitting on", "c"), ("near", "c")]),
        "b": obj("cup", 40, 40, rels=[("on top of", "c")]),
        "c": obj("bench", 40, 70, rels=[("behind", "a"), ("on", "a")]),
    })}
    _, img = write(tmp_path, g)
    assert gqa.relation_name("to the left of") == "left"
    assert gqa.relation_name("left") == "left"
    assert gqa.relation_name("Sitting  On") == "sitting_on"
    out = build(g, img, relations=("above", "holding", "sitting on"))
    assert set(out) == {"above", "holding", "sitting_on"}
    assert pairs(out["above"]) == {("1", "bench", "cup")}  # "on top of" -> above
    assert pairs(out["holding"]) == {("1", "cup", "man")}  # the man is holding the cup
    assert pairs(out["sitting_on"]) == {("1", "bench", "man")}
    # "near", "behind", "on" are neither spatial aliases nor asked for
    with pytest.raises(ValueError, match="'left'"):
        build(g, img, relations=("left",))


# ----------------------------------------------------------------------------- filters
def test_object_count_bounds(tmp_path):
    small = graph({"a": obj("cat", 5, 40, rels=[("to the left of", "b")]), "b": obj("dog", 60, 40)})
    big = standard_graph(0)
    g = {"1": small, "2": big}
    _, img = write(tmp_path, g)
    assert {it.image_id for it in build(g, img, relations=("left",), min_objects=2)["left"]} == {"1", "2"}
    assert {it.image_id for it in build(g, img, relations=("left",), min_objects=3)["left"]} == {"2"}
    assert {it.image_id for it in build(g, img, relations=("left",), max_objects=2)["left"]} == {"1"}


def test_area_bounds_apply_to_query_and_answer(tmp_path):
    g = {
        "ok": graph({"a": obj("cat", 5, 40, rels=[("to the left of", "b")]), "b": obj("dog", 60, 40)}),
        "tiny_answer": graph({"a": obj("cat", 5, 40, 2, 2, rels=[("to the left of", "b")]), "b": obj("dog", 60, 40)}),
        "huge_query": graph({"a": obj("cat", 0, 0, rels=[("to the left of", "b")]), "b": obj("dog", 5, 5, 90, 90)}),
    }
    _, img = write(tmp_path, g)
    got = {it.image_id for it in build(g, img, relations=("left",), min_area=0.01, max_area=0.5)["left"]}
    assert got == {"ok"}
    loose = build(g, img, relations=("left",), min_area=0.0, max_area=1.0)["left"]
    assert {it.image_id for it in loose} == {"ok", "tiny_answer", "huge_query"}


def test_uniqueness_of_query_and_answer(tmp_path):
    g = {
        "two_dogs": graph({"a": obj("cat", 5, 40, rels=[("to the left of", "b")]), "b": obj("dog", 60, 40),
                           "c": obj("dog", 60, 5)}),
        "two_answers": graph({"a": obj("cat", 5, 40, rels=[("to the left of", "b")]), "b": obj("dog", 60, 40),
                              "c": obj("cup", 20, 70, rels=[("to the left of", "b")])}),
        # the second answer is annotated from the query's side only: dog right of vase = vase left of dog
        "inverse_answer": graph({"a": obj("cat", 5, 40, rels=[("to the left of", "b")]),
                                 "b": obj("dog", 60, 40, rels=[("to the right of", "c")]), "c": obj("vase", 20, 70)}),
        "same_name_twice": graph({"a": obj("cat", 5, 40, rels=[("to the left of", "b")]), "b": obj("dog", 60, 40),
                                  "c": obj("cat", 5, 70, rels=[("to the left of", "b")])}),
    }
    _, img = write(tmp_path, g)
    strict = [it for it in build(g, img, relations=("left",))["left"] if it.query == "dog"]
    assert pairs(strict) == {("same_name_twice", "dog", "cat")}  # two cats: one answer name
    loose = [it for it in build(g, img, relations=("left",), unique=False)["left"] if it.query == "dog"]
    assert pairs(loose) == {("two_dogs", "dog", "cat"), ("two_answers", "dog", "cat"), ("two_answers", "dog", "cup"),
                            ("inverse_answer", "dog", "cat"), ("inverse_answer", "dog", "vase"),
                            ("same_name_twice", "dog", "cat")}


def test_max_per_image(many):
    _, img, graphs = many
    per_image = lambda its: max(sum(it.image_id == i for it in its) for i in graphs)  # noqa: E731
    assert per_image(build(graphs, img, max_per_image=None)["left"]) == 2  # direct + read backwards
    one = build(graphs, img, max_per_image=1)["left"]
    assert per_image(one) == 1 and len(one) == len(graphs)
    assert one == build(graphs, img, max_per_image=1)["left"]  # deterministic choice


def test_filters_validate_and_describe():
    f = gqa.Filters(relations=("to the left of", "holding", "left"))
    assert f.relations == ("left", "holding")
    assert "objects per image 2..25" in f.describe()
    for bad in (dict(min_area=0.5, max_area=0.1), dict(max_objects=1, min_objects=3), dict(max_per_image=0),
                dict(relations="left"), dict(relations=())):
        with pytest.raises(ValueError):
            gqa.Filters(**bad)


# ----------------------------------------------------------------------------- splits
def test_splits_are_disjoint_by_image_and_deterministic(many):
    path, img, graphs = many
    f = gqa.Filters(min_objects=1)
    per = {s: gqa.items(s, scene_graphs=path, image_dir=img, filters=f) for s in gqa.SPLITS}
    ids = {s: {it.image_id for its in per[s].values() for it in its} for s in gqa.SPLITS}
    for i, a in enumerate(gqa.SPLITS):
        assert ids[a], a
        for b in gqa.SPLITS[i + 1:]:
            assert not ids[a] & ids[b], (a, b)
    assert set().union(*ids.values()) == set(graphs)
    for s in gqa.SPLITS:
        assert all(gqa.split_of(i) == s for i in ids[s])
    assert gqa.items("val", scene_graphs=path, image_dir=img, filters=f) == per["val"]
    assert [gqa.split_of(i, seed=1) for i in sorted(graphs)] != [gqa.split_of(i, seed=0) for i in sorted(graphs)]
    # relations= overrides the filters' relations
    assert set(gqa.items("train", ["left"], scene_graphs=path, image_dir=img, filters=f)) == {"left"}


def test_split_fraction_errors(many):
    path, img, _ = many
    with pytest.raises(ValueError, match="unknown split"):
        gqa.items("novel", scene_graphs=path, image_dir=img)
    with pytest.raises(ValueError, match="sum to at most 1"):
        gqa.split_of("1", fractions={"train": 0.7, "test": 0.7})
    assert gqa.split_of("1", fractions={"train": 0.0}) is None


# ----------------------------------------------------------------------------- bad input
def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_missing_images_named_and_counted(many):
    path, img, graphs = many
    for iid in ("1003", "1007"):
        (img / f"{iid}.jpg").unlink()
    with pytest.raises(FileNotFoundError) as e:
        gqa.items("train", scene_graphs=path, image_dir=img, filters=gqa.Filters(min_objects=1))
    msg = one_line(e)
    assert "2 of 40 images are missing" in msg and str(img / "1003.jpg") in msg
    with pytest.raises(FileNotFoundError, match="image folder"):
        gqa.build_items(graphs, img / "nope")
    with pytest.raises(FileNotFoundError, match="val_sceneGraphs.json"):
        gqa.load_scene_graphs(path.parent / "val_sceneGraphs.json")


@pytest.mark.parametrize("content, expect", [
    ([{"width": 1}], "top level must be a dict"),
    ({"q1": {"imageId": "1", "question": "Is there a cat?", "answer": "yes"}}, "missing key 'width'"),
    ({"1": {"width": 100, "height": 100, "objects": [obj("cat", 1, 1)]}}, "'objects' must be a dict"),
    ({"1": graph({"a": {"name": "cat", "x": 1, "y": 1, "w": 5, "h": 5, "attributes": []}})}, "object 'a': missing key 'relations'"),
    ({"1": graph({"a": {**obj("cat", 1, 1), "relations": [{"name": "left of", "target": "b"}]}})}, "{'name': str, 'object'"),
    ({"1": graph({"a": {**obj("cat", 1, 1), "w": "5"}})}, "'w' must be a number"),
    ({"1": {"width": 0, "height": 100, "objects": {}}}, "'width' must be a positive number"),
])
def test_wrong_schema_is_one_line_value_error(tmp_path, content, expect):
    path, _ = write(tmp_path, {}, images=False)
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError) as e:
        gqa.load_scene_graphs(path)
    msg = one_line(e)
    assert expect in msg and str(path) in msg


def test_invalid_json_and_duplicate_images(tmp_path):
    path, _ = write(tmp_path, {"1": standard_graph(1)}, images=False)
    other, _ = write(tmp_path, {"1": standard_graph(1)}, name="val_sceneGraphs.json", images=False)
    with pytest.raises(ValueError, match="also appears"):
        gqa.load_scene_graphs([path, other])
    path.write_text('{"1": {')
    with pytest.raises(ValueError, match="not valid JSON"):
        gqa.load_scene_graphs(path)


def test_relation_dict_form_from_download_page_is_accepted(tmp_path):
    o = obj("cat", 5, 40)
    o["relations"] = {"32452": {"name": "to the left of", "object": "b"}}
    g = {"1": graph({"a": o, "b": obj("dog", 60, 40)})}
    path, img = write(tmp_path, g)
    assert pairs(gqa.build_items(gqa.load_scene_graphs(path), img, gqa.Filters(relations=("left",)))["left"]) == {("1", "dog", "cat")}


def test_empty_relation_names_relation_and_filters(many):
    path, img, _ = many
    with pytest.raises(ValueError) as e:
        gqa.items("train", ["left", "riding"], scene_graphs=path, image_dir=img, filters=gqa.Filters(min_objects=1))
    msg = one_line(e)
    assert "'riding'" in msg and "no GQA items after filtering 40 images" in msg and "object area" in msg
    with pytest.raises(ValueError, match="'left': no GQA items in split 'val'"):
        gqa.items("val", ["left"], scene_graphs=path, image_dir=img, fractions={"train": 1.0, "val": 0.0},
                  filters=gqa.Filters(min_objects=1))


# ----------------------------------------------------------------------------- prompts
def test_clean_and_corrupted_prompts_on_gqa_items(many):
    path, img, _ = many
    f = gqa.Filters(min_objects=1)
    queries, pools = (gqa.items(s, scene_graphs=path, image_dir=img, filters=f) for s in ("eval", "train"))
    for r in R.CARDINAL:
        clean = P.build("clean", queries[r], pools, k=2, n=4, seed=0)
        corrupted = P.build("corrupted", queries[r], pools, k=3, n=4, seed=0)
        for p in clean:
            assert p.kind == "clean" and all(d.relation == r for d in p.demos)
        for p in corrupted:
            assert p.kind == "corrupted" and p.relation == r
            assert all(d.relation != r for d in p.demos)
            assert p.query.image_id not in {d.image_id for d in p.demos}
        text = P.FLAMINGO.render(corrupted[0])
        assert text.count("<image>") == 4 and text.endswith(f"Q: {corrupted[0].query.query}. A:")
    assert len(P.build("zero-shot", queries["left"], pools, k=0, n=2, seed=0)[0].images()) == 1


# ----------------------------------------------------------------------------- presets, direction, fu2025
def test_relation_presets():
    assert gqa.relation_phrases("cardinal") == R.CARDINAL
    assert gqa.relation_phrases(None) == R.CARDINAL
    assert gqa.relation_phrases("agentic") == ("wearing", "holding", "carrying", "sitting on", "standing on",
                                               "standing in", "riding")
    assert [gqa.relation_name(p) for p in gqa.relation_phrases("spatial")] == [
        "above", "below", "left", "right", "next_to", "behind", "in_front_of"]
    assert gqa.relation_phrases(["holding", "next to"]) == ("holding", "next to")
    with pytest.raises(ValueError, match="unknown GQA relation preset 'agentive'"):
        gqa.relation_phrases("agentive")
    with pytest.raises(R.UnknownRelationError):
        gqa.relation_phrases(["holding", "!!"])


def holding_graph():
    # GQA: man --holding--> phone ("man holding phone"); 4 objects of 9 % of the image each
    return {"1": graph({
        "m": obj("man", 10, 10, 30, 30, rels=[("holding", "p"), ("to the left of", "t")]),
        "p": obj("phone", 50, 10, 30, 30),
        "t": obj("table", 10, 50, 30, 30),
        "c": obj("cup", 50, 50, 30, 30),
    })}


@pytest.mark.parametrize("filters", [gqa.Filters(), gqa.F.FuFilters()])
def test_man_holding_phone_is_q_man_a_phone_under_fu2025(tmp_path, filters):
    g = holding_graph()
    _, img = write(tmp_path, g)
    fu = gqa.build_items(g, img, filters, relations=["holding"], direction="fu2025")
    assert pairs(fu["holding"]) == {("1", "man", "phone")}  # Q:man. A:phone
    mm = gqa.build_items(g, img, filters, relations=["holding"])
    assert pairs(mm["holding"]) == {("1", "phone", "man")}  # mmfv's default asks the reverse
    p = P.zero_shot(fu["holding"][0])
    assert P.FU2025.render(p) == "<image>Q:man. A:" and P.FU2025.answer_text(p) == "phone"


def test_fu2025_direction_on_spatial_relations_reads_query_relation_answer(tmp_path):
    g = holding_graph()
    _, img = write(tmp_path, g)
    out = gqa.build_items(g, img, gqa.Filters(), relations=["left", "right"], direction="fu2025")
    assert pairs(out["left"]) == {("1", "man", "table")}  # the man is left of the table
    assert pairs(out["right"]) == {("1", "table", "man")}  # same fact read backwards
    with pytest.raises(ValueError, match="unknown direction"):
        gqa.build_items(g, img, gqa.Filters(), direction="sideways")


def test_fu2025_filters_through_items(tmp_path):
    g = {**{str(i): holding_graph()["1"] for i in range(30)},
         "tiny": graph({"m": obj("man", 0, 0, 30, 30, rels=[("holding", "p")]), "p": obj("phone", 0, 0, 2, 2),
                        "t": obj("table", 0, 0, 30, 30), "c": obj("cup", 0, 0, 30, 30)})}
    path, img = write(tmp_path, g)
    report: dict[str, int] = {}
    out = gqa.items("train", ["holding"], 0, scene_graphs=path, image_dir=img, filters="fu2025", direction="fu2025",
                    fractions={"train": 1.0}, report=report)
    assert {(it.query, it.answer) for it in out["holding"]} == {("man", "phone")}
    assert len(out["holding"]) == 30 and "tiny" not in {it.image_id for it in out["holding"]}
    assert report["images"] == 31 and report["kept_images"] == 30 and report["drop:relation_count"] == 1
    assert report["kept:holding"] == 30
    # fu2025 filters match predicates exactly: "to the left of", never "left of" or the reversed edge
    left = gqa.items("train", ["left"], 0, scene_graphs=path, image_dir=img, filters="fu2025", fractions={"train": 1.0})
    assert {(it.query, it.answer) for it in left["left"]} == {("table", "man")}
    with pytest.raises(ValueError, match="'right'.*predicates to the right of matched exactly"):
        gqa.items("train", ["right"], 0, scene_graphs=path, image_dir=img, filters="fu2025", fractions={"train": 1.0})


def test_items_source_and_option_errors(many):
    path, img, _ = many
    with pytest.raises(ValueError, match="exactly one GQA source"):
        gqa.items("train", image_dir=img)
    with pytest.raises(ValueError, match="exactly one GQA source"):
        gqa.items("train", scene_graphs=path, fu_json=path, image_dir=img)
    with pytest.raises(ValueError, match="unknown GQA filters 'paper'"):
        gqa.items("train", scene_graphs=path, image_dir=img, filters="paper")
    with pytest.raises(ValueError, match="no image sizes"):
        gqa.items("train", fu_json=path, image_dir=img, filters=gqa.Filters())


def test_min_items_and_report(many):
    path, img, graphs = many
    f = gqa.Filters(min_objects=1)
    report: dict[str, int] = {}
    out = gqa.items("val", ["left"], scene_graphs=path, image_dir=img, filters=f, report=report)
    n = len(out["left"])
    assert report["images"] == 40 and report["kept:left"] == 40 and report["per_image_cap"] == 40  # 2 -> 1 per image
    assert gqa.items("val", ["left"], scene_graphs=path, image_dir=img, filters=f, min_items=n)["left"] == out["left"]
    with pytest.raises(ValueError) as e:
        gqa.items("val", ["left"], scene_graphs=path, image_dir=img, filters=f, min_items=n + 1)
    assert f"'left': only {n} GQA items in split 'val' (need {n + 1})" in one_line(e)
