"""The CLI face: verbs listed, scenes written with a one-line summary, demo prompts, one-line errors
that leave nothing half-written."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mmfv import relations as R
from mmfv.cli import main
from mmfv.data import scenes as S


def _one_line_error(err: str, verb: str) -> str:
    assert err.startswith(f"mmfv {verb}: error: "), err
    assert err.endswith("\n") and err.count("\n") == 1, err
    return err


def _nothing_written(root) -> None:
    assert not [p for p in root.rglob("*") if ".partial-" in p.name]
    assert not list(root.rglob("metadata.jsonl"))
    assert not list(root.rglob("*.png"))


def test_help_lists_verbs():
    res = subprocess.run([sys.executable, "-m", "mmfv", "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    for v in ("scenes", "demo"):
        assert re.search(rf"^\s+{v}\s", res.stdout, re.M), res.stdout


def test_no_verb_prints_help(capsys):
    assert main([]) == 0
    assert "scenes" in capsys.readouterr().out


# ---------------------------------------------------------------- scenes

def test_scenes_verb(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["scenes", "--out", str(out), "--n", "6", "--seed", "1", "--contact-sheet"]) == 0
    cap = capsys.readouterr()
    line = cap.out.rstrip("\n")
    assert cap.err == "" and "\n" not in line
    assert line.startswith("wrote 6 test scenes (50x50 px, grid 5)")
    expected = S.generate_split("test", 6, seed=1)
    assert line.endswith(f"digest {S.digest(expected)[:12]}")
    for r in R.CARDINAL:
        assert f"{r}={sum(s.has(r) for s in expected)}" in line
    assert sorted(p.name for p in out.glob("*.png")) == sorted([f"{s.id}.png" for s in expected] + ["contact_sheet.png"])
    back = S.load(out)
    assert [b.to_json() for b in back] == [s.to_json() for s in expected]
    with Image.open(out / f"{expected[0].id}.png") as im:
        assert np.array_equal(np.asarray(im), np.asarray(expected[0].image))


def test_scenes_options(tmp_path, capsys):
    out = tmp_path / "n"
    assert main(["scenes", "--out", str(out), "--n", "4", "--split", "novel_objects", "--grid", "4", "--cell-px", "8"]) == 0
    assert capsys.readouterr().out.startswith("wrote 4 novel_objects scenes (32x32 px, grid 4)")
    back = S.load(out)
    assert all(s.split == "novel_objects" and s.config.grid == 4 and s.config.cell_px == 8 for s in back)
    with Image.open(out / f"{back[0].id}.png") as im:
        assert im.size == (32, 32)


def test_scenes_is_deterministic(tmp_path, capsys):
    for name in ("a", "b"):
        assert main(["scenes", "--out", str(tmp_path / name), "--n", "5", "--seed", "3"]) == 0
    a, b = capsys.readouterr().out.splitlines()
    assert a.replace(str(tmp_path / "a"), "") == b.replace(str(tmp_path / "b"), "")
    for f in (tmp_path / "a").iterdir():
        assert f.read_bytes() == (tmp_path / "b" / f.name).read_bytes()


def test_scenes_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["scenes", "--out", str(out), "--n", "3"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert main(["scenes", "--out", str(out), "--n", "3", "--seed", "5"]) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and "--force" in _one_line_error(cap.err, "scenes")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert main(["scenes", "--out", str(out), "--n", "3", "--seed", "5", "--force"]) == 0
    assert S.digest(S.load(out)) == S.digest(S.generate_split("test", 3, seed=5))


@pytest.mark.parametrize("n", ["0", "-2", "abc", "1.5"])
def test_scenes_rejects_bad_n(tmp_path, capsys, n):
    with pytest.raises(SystemExit) as e:
        main(["scenes", "--out", str(tmp_path / "o"), f"--n={n}"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "positive integer" in err and "--n" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, msg", [(["--grid", "2"], "grid must be >= 3"), (["--cell-px", "4"], "cell_px must be >= 6")])
def test_scenes_rejects_bad_config(tmp_path, capsys, args, msg):
    assert main(["scenes", "--out", str(tmp_path / "o"), "--n", "2", *args]) == 2
    assert msg in _one_line_error(capsys.readouterr().err, "scenes")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("sub", ["o", "deep/er/o"])
def test_scenes_unwritable_out(tmp_path, capsys, sub):
    (tmp_path / "f").write_text("x")
    assert main(["scenes", "--out", str(tmp_path / "f" / sub), "--n", "3", "--contact-sheet"]) == 2
    cap = capsys.readouterr()
    assert cap.out == ""
    assert "--out" in _one_line_error(cap.err, "scenes")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"] and (tmp_path / "f").read_text() == "x"
    _nothing_written(tmp_path)


def test_scenes_out_is_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert main(["scenes", "--out", str(tmp_path / "f"), "--n", "3"]) == 2
    assert "not a folder" in _one_line_error(capsys.readouterr().err, "scenes")
    assert (tmp_path / "f").read_text() == "x"
    _nothing_written(tmp_path)


# ---------------------------------------------------------------- demo

def _demo_lines(out: str) -> dict[str, tuple[str, str]]:
    lines = out.splitlines()
    assert len(lines) == 6, out
    res = {}
    for head, prompt in zip(lines[::2], lines[1::2]):
        m = re.match(r"\[(.+?)\] relation=(\w+) demos=\((.*)\) answer='(.+)'$", head)
        assert m, head
        kind, rel, demos, _ = m.groups()
        res[kind] = (rel, demos, prompt.strip())
    return res


@pytest.mark.parametrize("rel", R.SPATIAL)
def test_demo(capsys, rel):
    assert main(["demo", "--relation", rel, "--k", "3", "--seed", "2"]) == 0
    got = _demo_lines(capsys.readouterr().out)
    assert set(got) == {"clean", "corrupted", "zero-shot"}
    assert all(v[0] == rel for v in got.values())
    rel_c, demos, prompt = got["clean"]
    assert demos.split(", ") == [rel] * 3 and prompt.count("<image>") == 4 and prompt.count("<|endofchunk|>") == 3
    _, demos, prompt = got["corrupted"]
    assert len(demos.split(", ")) == 3 and rel not in demos.split(", ") and prompt.count("<image>") == 4
    _, demos, prompt = got["zero-shot"]
    assert demos == "none" and prompt.count("<image>") == 1 and prompt.endswith(". A:")


def test_demo_is_deterministic(capsys):
    main(["demo", "--seed", "4"])
    a = capsys.readouterr().out
    main(["demo", "--seed", "4"])
    assert capsys.readouterr().out == a
    main(["demo", "--seed", "5"])
    assert capsys.readouterr().out != a


@pytest.mark.parametrize("rel", ["up", "holding", "Left"])
def test_demo_unknown_relation(capsys, rel):
    assert main(["demo", "--relation", rel]) == 2
    cap = capsys.readouterr()
    err = _one_line_error(cap.err, "demo")
    assert f"unknown relation {rel!r}" in err and all(r in err for r in R.SPATIAL)
    assert cap.out == ""


@pytest.mark.parametrize("k, msg", [("500", "lower k"), ("-1", "k must be >= 0")])
def test_demo_bad_k(capsys, k, msg):
    assert main(["demo", "--k", k]) == 2
    assert msg in _one_line_error(capsys.readouterr().err, "demo")
