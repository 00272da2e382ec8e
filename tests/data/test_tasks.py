"""User tasks: JSONL items (with and without images), Todd et al.'s JSON files, splits, errors, prompts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from mmfv import prompts as P
from mmfv.data import tasks

TODD = Path(__file__).parents[2] / ".." / "shared" / "data" / "todd_tasks"
WORDS = ["hot", "big", "up", "wet", "fast", "old", "dark", "full", "high", "long", "soft", "rich", "thin", "loud"]


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 6), (10, 200, 10)).save(path)
    return path


@pytest.fixture
def mixed(tmp_path):
    """40 image items (two relations over 20 images, each image once per relation) and 28 text-only items."""
    rows = []
    for i in range(20):
        image(tmp_path / "imgs" / f"{i}.png")
        rows.append({"query": "man", "answer": f"thing{i}", "relation": "holding", "image": f"imgs/{i}.png",
                     "candidates": ["man", f"thing{i}", "table"]})
        rows.append({"query": "table", "answer": f"cup{i}", "relation": "Sitting on", "image": f"imgs/{i}.png"})
    for w in WORDS:
        rows.append({"query": w, "answer": w[::-1], "relation": "antonym"})
        rows.append({"query": w, "answer": w.upper(), "relation": "upper case"})
    return write_jsonl(tmp_path / "tasks.jsonl", rows)


def test_load_jsonl_items(mixed, tmp_path):
    its = tasks.load_jsonl(mixed)
    assert len(its) == 68
    first = its[0]
    assert (first.image_id, first.query, first.answer, first.relation) == ("imgs/0.png", "man", "thing0", "holding")
    assert first.image == str(tmp_path / "imgs" / "0.png") and first.load_image().size == (6, 6)
    assert first.candidates == ("man", "thing0", "table")
    assert its[1].relation == "sitting_on" and its[1].candidates == ()
    text = [it for it in its if it.relation == "antonym"]
    assert text[0].image is None and text[0].image_id == "text:hot" and not text[0].has_image
    assert {it.relation for it in its} == {"holding", "sitting_on", "antonym", "upper_case"}


def test_images_relative_to_image_dir(tmp_path):
    image(tmp_path / "pics" / "a.jpg")
    path = write_jsonl(tmp_path / "sub" / "t.jsonl", [{"query": "q", "answer": "a", "relation": "r", "image": "a.jpg"}])
    with pytest.raises(FileNotFoundError, match=r"t.jsonl:1: image .*a.jpg not found \(paths are relative to"):
        tasks.load_jsonl(path)
    (it,) = tasks.load_jsonl(path, image_dir=tmp_path / "pics")
    assert it.image == str(tmp_path / "pics" / "a.jpg")
    (unchecked,) = tasks.load_jsonl(path, check=False)
    assert unchecked.image_id == "a.jpg"


@pytest.mark.parametrize("line, expect", [
    ("{not json", "not a JSON object"),
    ("[1, 2]", "expected a JSON object per line, got list"),
    ({"answer": "a", "relation": "r"}, "missing key 'query'"),
    ({"query": "q", "relation": "r"}, "missing key 'answer'"),
    ({"query": "q", "answer": "a"}, "missing key 'relation'"),
    ({"query": "q", "answer": "  ", "relation": "r"}, "'answer' must be a non-empty string"),
    ({"query": 3, "answer": "a", "relation": "r"}, "'query' must be a non-empty string"),
    ({"query": "q", "answer": "a", "relation": "!!"}, "relation name '!!'"),
    ({"query": "q", "answer": "a", "relation": "r", "image": 5}, "'image' must be a path string"),
    ({"query": "q", "answer": "a", "relation": "r", "candidates": "a b"}, "'candidates' must be a list"),
    ({"query": "q", "answer": "a", "relation": "r", "candidates": ["b", "c"]}, "not among its candidates"),
    ({"query": "q", "answer": "a", "relation": "r", "label": 1}, "unknown key 'label'"),
])
def test_each_malformed_line_is_a_one_line_error_with_file_and_line(tmp_path, line, expect):
    path = write_jsonl(tmp_path / "t.jsonl", [{"query": "q", "answer": "a", "relation": "r"}, "", line])
    with pytest.raises(ValueError) as e:
        tasks.load_jsonl(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}:3: ") and expect in msg and "\n" not in msg


def test_one_image_id_for_one_file(tmp_path):
    a = write_jsonl(tmp_path / "a" / "t.jsonl", [{"query": "q", "answer": "a", "relation": "r", "image": "x.png"}])
    b = write_jsonl(tmp_path / "b" / "t.jsonl", [{"query": "q", "answer": "b", "relation": "r", "image": "x.png"}])
    image(tmp_path / "a" / "x.png")
    image(tmp_path / "b" / "x.png")
    with pytest.raises(ValueError, match="names two files"):
        tasks.load_jsonl([a, b])


# ----------------------------------------------------------------------------- splits
def test_splits_are_leak_free_by_image_and_by_query(mixed):
    per = {s: tasks.items(s, None, 4, jsonl=mixed, fractions={"eval": 0.25, "train": 0.25, "val": 0.25, "test": 0.25},
                          min_items=0) for s in tasks.S.SPLITS}
    for rel in ("holding", "sitting_on", "antonym", "upper_case"):
        assert sum(len(per[s][rel]) for s in per) == (20 if rel in ("holding", "sitting_on") else len(WORDS))
    for i, a in enumerate(tasks.S.SPLITS):
        for b in tasks.S.SPLITS[i + 1:]:
            ids_a = {it.image_id for its in per[a].values() for it in its}
            ids_b = {it.image_id for its in per[b].values() for it in its}
            assert not ids_a & ids_b, (a, b)
    # one image's items (and one query's items) always land in the same split, whatever the relation
    for s in per:
        assert {it.image_id for it in per[s]["holding"]} == {it.image_id for it in per[s]["sitting_on"]}
        assert {it.query for it in per[s]["antonym"]} == {it.query for it in per[s]["upper_case"]}
    again = tasks.items("train", ["holding"], 4, jsonl=mixed, fractions={"eval": 0.25, "train": 0.25, "val": 0.25, "test": 0.25})
    assert again == {"holding": per["train"]["holding"]}
    other = tasks.items("train", ["holding"], 5, jsonl=mixed, fractions={"eval": 0.25, "train": 0.25, "val": 0.25, "test": 0.25})
    assert other != again


def test_items_errors_name_the_relation(mixed):
    with pytest.raises(ValueError, match=r"relation 'riding': no task items in .*relations there: antonym, holding"):
        tasks.items("train", ["riding"], jsonl=mixed)
    with pytest.raises(ValueError, match=r"relation 'antonym': only \d+ task items in split 'train' \(need 50\)"):
        tasks.items("train", ["antonym"], jsonl=mixed, min_items=50)
    with pytest.raises(ValueError, match="exactly one task source"):
        tasks.items("train")
    with pytest.raises(ValueError, match="unknown split"):
        tasks.items("dev", jsonl=mixed)
    report: dict[str, int] = {}
    tasks.items("train", ["Sitting on"], jsonl=mixed, report=report)  # phrases are normalised
    assert report == {"items:sitting_on": 20}


def test_text_only_prompts(mixed):
    train, test = (tasks.items(s, ["antonym"], 0, jsonl=mixed, fractions={"train": 0.5, "test": 0.5}) for s in ("train", "test"))
    (p,) = P.build("clean", test["antonym"], train, 3, 1, 0)
    assert "<image>" not in P.FLAMINGO.render(p) and p.images() == []
    assert P.FLAMINGO.render(p).endswith(f"Q: {p.query.query}. A:")


# ----------------------------------------------------------------------------- Todd et al.
@pytest.fixture(scope="module")
def todd():
    if not TODD.is_dir():
        pytest.skip(f"Todd et al.'s task files not found at {TODD} (shared data folder absent)")
    return TODD


def test_todd_real_files(todd):
    its = tasks.load_todd(sorted(todd.glob("*.json")))
    by: dict[str, list[P.Item]] = {}
    for it in its:
        by.setdefault(it.relation, []).append(it)
    assert {r: len(v) for r, v in by.items()} == {"antonym": 2398, "country_capital": 197, "english_french": 1500,
                                                  "present_past": 293, "singular_plural": 205}
    raw = json.loads((todd / "country-capital.json").read_text())
    first = by["country_capital"][0]
    assert (first.query, first.answer) == (raw[0]["input"], raw[0]["output"]) and first.image is None
    out = tasks.items("test", ["country-capital"], 0, todd=todd / "country-capital.json")
    assert set(out) == {"country_capital"} and all(it.image_id == f"text:{it.query}" for it in out["country_capital"])


def test_todd_duplicates_and_empty_outputs(tmp_path):
    path = tmp_path / "opposites.json"
    path.write_text(json.dumps([{"input": "hot", "output": "cold"}, {"input": "up", "output": "down"},
                                {"input": "hot", "output": "cool"}]))
    with pytest.raises(ValueError, match=r"opposites.json: 1 duplicate input\(s\), first 'hot' at indices 0 and 2"):
        tasks.load_todd(path)
    path.write_text(json.dumps([{"input": "hot", "output": "cold"}, {"input": "up", "output": " "}]))
    with pytest.raises(ValueError, match=r"opposites.json: 1 empty input/output\(s\), first at index 1"):
        tasks.load_todd(path)
    path.write_text(json.dumps([{"input": "hot", "answer": "cold"}]))
    with pytest.raises(ValueError, match="index 0: expected"):
        tasks.load_todd(path)
    path.write_text(json.dumps({"input": "hot"}))
    with pytest.raises(ValueError, match="expected a JSON list"):
        tasks.load_todd(path)
