"""The CLI face: verbs listed, scenes written with a one-line summary, one-line errors."""

from __future__ import annotations

import subprocess
import sys

from mmfv.cli import main


def test_help_lists_verbs():
    out = subprocess.run([sys.executable, "-m", "mmfv", "--help"], capture_output=True, text=True, check=True).stdout
    for v in ("scenes", "demo", "train-tiny", "icl", "cma", "extract", "eval", "finetune", "compose", "run", "config"):
        assert v in out


def test_scenes_verb(tmp_path, capsys):
    assert main(["scenes", "--out", str(tmp_path / "s"), "--n", "6", "--seed", "1", "--contact-sheet"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("wrote 6 test scenes") and "\n" not in line
    assert len(list((tmp_path / "s").glob("*.png"))) == 7 and (tmp_path / "s" / "metadata.jsonl").exists()


def test_scenes_errors(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert main(["scenes", "--out", str(tmp_path / "f" / "o"), "--n", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmfv scenes: error:") and err.count("\n") == 1
    assert not list(tmp_path.glob(".*partial*"))
    try:
        main(["scenes", "--out", str(tmp_path / "o"), "--n", "0"])
    except SystemExit as e:
        assert e.code == 2
    assert "positive integer" in capsys.readouterr().err


def test_demo_and_unknown_relation(capsys):
    assert main(["demo", "--relation", "left", "--k", "2"]) == 0
    assert "[corrupted]" in capsys.readouterr().out
    assert main(["demo", "--relation", "up"]) == 2
    assert "unknown relation 'up'" in capsys.readouterr().err
