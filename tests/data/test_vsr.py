"""VSR JSONL -> relation items: direction, mapping, subj/obj quirks, splits, errors, prompts.

Rows follow the released files: ``data/splits/random/*.jsonl`` rows have image, image_link,
caption, label, relation, annotator_id, vote_true_validator_id, vote_false_validator_id,
reference_frame; ``data/splits/zeroshot/*.jsonl`` rows add subj and obj.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from mmfv import prompts as P
from mmfv import relations as R
from mmfv.data import vsr

NAMES = ["cat", "dog", "horse", "cup", "bench", "car", "bird", "book", "chair", "vase", "clock", "oven"]


def row(image, caption, relation, label=1, zeroshot=False, subj=None, obj=None, **extra):
    r = {"image": image, "image_link": f"http://images.cocodataset.org/train2017/{image}", "caption": caption,
         "label": label, "relation": relation}
    if zeroshot:
        r.update(subj=subj, obj=obj)
    r.update(annotator_id=2, vote_true_validator_id="[1, 2]", vote_false_validator_id="[]")
    if not zeroshot:
        r["reference_frame"] = None
    r.update(extra)
    return r


def write(tmp_path: Path, rows, name="train.jsonl", images=True):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    img_dir = tmp_path / "images"
    img_dir.mkdir(exist_ok=True)
    if images:
        for image in {r["image"] for r in rows if isinstance(r, dict) and "image" in r}:
            Image.new("RGB", (8, 8), (30, 30, 200)).save(img_dir / image, "JPEG")
    return path, img_dir


def standard_rows(i: int):
    image = f"{i:012d}.jpg"
    a, b, c, d, e = (NAMES[(i + j) % len(NAMES)] for j in range(5))
    return [
        row(image, f"The {a} is left of the {b}.", "left of"),
        row(image, f"The {c} is at the right side of the {b}.", "at the right side of", reference_frame=1.0),
        row(image, f"The {d} is on top of the {b}.", "on top of"),
        row(image, f"The {e} is under the {b}.", "under"),
        row(image, f"The {a} is right of the {b}.", "right of", label=0),
        row(image, f"The {a} is touching the {b}.", "touching"),
    ]


@pytest.fixture
def many(tmp_path):
    rows = [r for i in range(40) for r in standard_rows(i)]
    return (*write(tmp_path, rows), rows)


def pairs(its):
    return {(it.image_id, it.query, it.answer) for it in its}


def build(rows, img, relations=R.CARDINAL, **kw):
    kw.setdefault("max_per_image", None)
    return vsr.build_items(rows, img, relations, **kw)


# ----------------------------------------------------------------------------- direction, mapping
def test_direction_subject_is_the_answer(tmp_path):
    rows = [row("000000000001.jpg", "The cat is left of the dog.", "left of"),
            row("000000000001.jpg", "The lamp is above the dog.", "above")]
    path, img = write(tmp_path, rows)
    out = build(vsr.load_rows(path), img, ("left", "above"))
    assert pairs(out["left"]) == {("000000000001", "dog", "cat")}  # what is left of the dog? the cat
    assert pairs(out["above"]) == {("000000000001", "dog", "lamp")}
    it = out["left"][0]
    assert it.relation == "left" and it.image == str(img / "000000000001.jpg")
    assert it.candidates == ("cat", "dog", "lamp")
    assert it.load_image().size == (8, 8)


def test_relation_phrases_map_and_false_rows_are_ignored(many):
    _, img, rows = many
    out = build(rows, img, ("left", "right", "above", "below", "touching"))
    assert set(out) == {"left", "right", "above", "below", "touching"}
    first = "000000000000"
    assert {(it.query, it.answer) for it in out["left"] if it.image_id == first} == {("dog", "cat")}
    assert {(it.query, it.answer) for it in out["right"] if it.image_id == first} == {("dog", "horse")}
    assert {(it.query, it.answer) for it in out["above"] if it.image_id == first} == {("dog", "cup")}  # on top of
    assert {(it.query, it.answer) for it in out["below"] if it.image_id == first} == {("dog", "bench")}  # under
    # "The cat is right of the dog." has label 0: no right item says the cat
    assert not [it for it in out["right"] if it.answer == "cat" and it.image_id == first]
    assert len(out["touching"]) == 40


def test_parse_caption_and_subj_obj_quirks(tmp_path):
    assert vsr.parse_caption("The teddy bear is in front of the person.", "in front of") == ("teddy bear", "person")
    assert vsr.parse_caption("The cake consists of the dog.", "consists of") == ("cake", "dog")
    assert vsr.parse_caption("The cats are left of the dog.", "left of") == ("cats", "dog")
    assert vsr.parse_caption("A cat sits left of a dog", "left of") is None
    rows = [
        # released zeroshot rows lost leading letters of subj ("orse"): the caption wins
        row("000000000001.jpg", "The horse is left of the person.", "left of", zeroshot=True, subj="orse", obj="person"),
        # a caption off the template falls back on subj / obj
        row("000000000002.jpg", "A cat sits left of a dog", "left of", zeroshot=True, subj="cat", obj="dog"),
        # neither: skipped
        row("000000000003.jpg", "A cup sits left of a vase", "left of"),
    ]
    _, img = write(tmp_path, rows)
    out = build(rows, img, ("left",))
    assert pairs(out["left"]) == {("000000000001", "person", "horse"), ("000000000002", "dog", "cat")}


def test_labels_accept_bool_and_strings(tmp_path):
    rows = [row("000000000001.jpg", "The cat is left of the dog.", "left of", label=True),
            row("000000000002.jpg", "The cat is left of the dog.", "left of", label="1"),
            row("000000000003.jpg", "The cat is left of the dog.", "left of", label="False")]
    path, img = write(tmp_path, rows)
    assert [r["label"] for r in vsr.load_rows(path)] == [True, True, False]
    assert {it.image_id for it in build(vsr.load_rows(path), img, ("left",))["left"]} == {"000000000001", "000000000002"}


def test_uniqueness_and_max_per_image(tmp_path):
    image = "000000000001.jpg"
    rows = [row(image, "The cat is left of the dog.", "left of"),
            row(image, "The cup is at the left side of the dog.", "at the left side of"),
            row(image, "The vase is left of the cup.", "left of"),
            row(image, "The dog is left of the dog.", "left of")]
    _, img = write(tmp_path, rows)
    assert pairs(build(rows, img, ("left",))["left"]) == {("000000000001", "cup", "vase")}
    loose = build(rows, img, ("left",), unique=False)["left"]
    assert pairs(loose) == {("000000000001", "dog", "cat"), ("000000000001", "dog", "cup"), ("000000000001", "cup", "vase")}
    one = build(rows, img, ("left",), unique=False, max_per_image=1)["left"]
    assert len(one) == 1 and one == build(rows, img, ("left",), unique=False, max_per_image=1)["left"]


# ----------------------------------------------------------------------------- splits
def test_splits_are_disjoint_by_image(many):
    path, img, rows = many
    per = {s: vsr.items(s, jsonl=path, image_dir=img) for s in vsr.SPLITS}
    ids = {s: {it.image_id for its in per[s].values() for it in its} for s in vsr.SPLITS}
    for i, a in enumerate(vsr.SPLITS):
        assert ids[a], a
        for b in vsr.SPLITS[i + 1:]:
            assert not ids[a] & ids[b], (a, b)
    assert set().union(*ids.values()) == {Path(r["image"]).stem for r in rows}
    assert vsr.items("test", jsonl=path, image_dir=img) == per["test"]
    # several files (VSR's own train/dev/test share images) are merged, then split by image
    half = len(rows) // 2
    p1, _ = write(path.parent, rows[:half], name="a.jsonl", images=False)
    p2, _ = write(path.parent, rows[half:], name="b.jsonl", images=False)
    assert vsr.items("eval", jsonl=[p1, p2], image_dir=img) == per["eval"]


# ----------------------------------------------------------------------------- bad input
def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_missing_images_named_and_counted(many):
    path, img, _ = many
    for i in (3, 5, 9):
        (img / f"{i:012d}.jpg").unlink()
    with pytest.raises(FileNotFoundError) as e:
        vsr.items("train", jsonl=path, image_dir=img)
    msg = one_line(e)
    assert "3 of 40 images are missing" in msg and str(img / "000000000003.jpg") in msg
    with pytest.raises(FileNotFoundError, match="not found"):
        vsr.load_rows(path.parent / "dev.jsonl")


@pytest.mark.parametrize("line, expect", [
    ('{"image": "1.jpg", "label": 1, "relation": "left of"}', "missing key 'caption'"),
    ('{"image": "1.jpg", "caption": "The cat is left of the dog.", "relation": "left of"}', "missing key 'label'"),
    ('{"image": "1.jpg", "caption": "The cat is left of the dog.", "label": "yes", "relation": "left of"}', "'label' must be 0 or 1"),
    ('{"image": "", "caption": "The cat is left of the dog.", "label": 1, "relation": "left of"}', "'image' must be a non-empty string"),
    ('["1.jpg", "The cat is left of the dog.", 1]', "expected a JSON object per line"),
    ('{"2407890": {"width": 640, "height": 480,', "not a JSON object"),
])
def test_wrong_schema_is_one_line_value_error(tmp_path, line, expect):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(row("1.jpg", "The cat is left of the dog.", "left of")) + "\n" + line + "\n")
    with pytest.raises(ValueError) as e:
        vsr.load_rows(path)
    msg = one_line(e)
    assert expect in msg and f"{path}:2" in msg


def test_empty_relation_names_relation_and_filters(many):
    path, img, _ = many
    with pytest.raises(ValueError) as e:
        vsr.items("train", ["left", "right", "above_left"], jsonl=path, image_dir=img)
    msg = one_line(e)
    assert "'above_left'" in msg and "no VSR items after filtering 240 rows" in msg and "label=1 only" in msg
    with pytest.raises(ValueError, match="'left': no VSR items in split 'val'"):
        vsr.items("val", ["left"], jsonl=path, image_dir=img, fractions={"train": 1.0, "val": 0.0})


# ----------------------------------------------------------------------------- prompts
def test_clean_and_corrupted_prompts_on_vsr_items(many):
    path, img, _ = many
    queries, pools = (vsr.items(s, jsonl=path, image_dir=img) for s in ("eval", "train"))
    for r in R.CARDINAL:
        for p in P.build("clean", queries[r], pools, k=2, n=4, seed=0):
            assert all(d.relation == r for d in p.demos) and len(p.demos) == 2
        for p in P.build("corrupted", queries[r], pools, k=3, n=4, seed=0):
            assert p.relation == r and all(d.relation != r for d in p.demos)
            assert p.query.image_id not in {d.image_id for d in p.demos}
    p = P.build("corrupted", queries["left"], pools, k=3, n=1, seed=1)[0]
    assert len(p.images()) == 4


# ----------------------------------------------------------------------------- options and drop counts
def frame_rows():
    rows = []
    for i, code in enumerate([0.0, 1.0, 1.0, 2.0, None]):
        image = f"{i:012d}.jpg"
        rows.append(row(image, "The cat is left of the dog.", "left of", reference_frame=code))
        rows.append(row(image, "The cup is under the dog.", "under"))
        rows.append(row(image, "The lamp is above the dog.", "above"))
    return rows


def test_reference_frame_filter_and_counts(tmp_path):
    rows = frame_rows()
    _, img = write(tmp_path, rows)
    report: dict[str, int] = {}
    out = build(rows, img, ("left", "below"), reference_frames=[1], report=report)
    assert {it.image_id for it in out["left"]} == {"000000000001", "000000000002", "000000000004"}  # code 1 or null
    assert len(out["below"]) == 5  # rows without a code always pass
    assert report["reference_frame"] == 2 and report["rows"] == 15 and report["other_relation"] == 5
    assert report["kept:left"] == 3 and report["kept:below"] == 5
    assert {it.image_id for it in build(rows, img, ("left",), reference_frames=(0, 2.0))["left"]} == {
        "000000000000", "000000000003", "000000000004"}
    with pytest.raises(ValueError, match="codes are numbers"):
        build(rows, img, ("left",), reference_frames=["intrinsic"])


def test_vertical_separate_keeps_support_phrases_apart(tmp_path):
    rows = frame_rows()
    _, img = write(tmp_path, rows)
    merged = build(rows, img, ("above", "below"))
    assert {it.answer for it in merged["below"]} == {"cup"}  # "under" counts as below
    sep = build(rows, img, ("above", "under"), vertical="separate", check=False)
    assert {it.answer for it in sep["above"]} == {"lamp"} and {it.answer for it in sep["under"]} == {"cup"}
    with pytest.raises(ValueError, match="'below': no VSR items"):
        build(rows, img, ("below",), vertical="separate")
    assert vsr.relation_name("beneath") == "below" and vsr.relation_name("beneath", "separate") == "beneath"
    assert vsr.relation_name("at the left side of", "separate") == "left"
    with pytest.raises(ValueError, match="unknown vertical"):
        vsr.relation_name("under", "flat")


def test_drop_counts(tmp_path):
    image = "000000000001.jpg"
    rows = [row(image, "The cat is left of the dog.", "left of"),
            row(image, "The cup is left of the dog.", "left of"),          # second answer: ambiguous
            row(image, "The vase is left of the cup.", "left of"),
            row(image, "The cup is right of the vase.", "right of", label=0),
            row(image, "A cup sits left of a vase", "left of"),              # off the template
            row(image, "The cup is touching the vase.", "touching")]
    path, img = write(tmp_path, rows)
    report: dict[str, int] = {}
    vsr.items("eval", ["left"], jsonl=path, image_dir=img, fractions={"eval": 1.0}, report=report)
    assert report == {"rows": 6, "false_label": 1, "unparsed": 1, "other_relation": 1, "reference_frame": 0,
                      "ambiguous": 1, "self_answer": 0, "per_image_cap": 0, "kept:left": 1}
    with pytest.raises(ValueError, match=r"'left': only 1 VSR items in split 'eval' \(need 2\)"):
        vsr.items("eval", ["left"], jsonl=path, image_dir=img, fractions={"eval": 1.0}, min_items=2)
    with pytest.raises(ValueError, match="got the string"):
        vsr.items("eval", "left", jsonl=path, image_dir=img)


def test_chance_is_one_half_with_one_caption_per_image(many):
    _, img, rows = many
    single = [r for r in rows if r["relation"] == "left of"]
    for it in build(single, img, ("left",))["left"]:
        assert len(it.candidates) == 2 and it.answer in it.candidates and it.query in it.candidates
