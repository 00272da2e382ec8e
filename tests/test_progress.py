"""Run progress lines: estimates only from this folder's earlier timings of the same work."""

from __future__ import annotations

import json
from pathlib import Path

from mmfv.progress import Progress, duration, earlier_timings

HASHES = {"icl": "h-icl", "eval": "h-eval"}


def folder(tmp_path: Path, timings: dict, config_hash: str = "cfg", weights: str = "w", markers: dict | None = None) -> Path:
    (tmp_path / "timings.json").write_text(json.dumps(timings))
    (tmp_path / "run.json").write_text(json.dumps({"config_hash": config_hash, "weights": weights}))
    for name, h in (markers or {}).items():
        (tmp_path / name).mkdir()
        (tmp_path / name / ".done").write_text(h + "\n")
    return tmp_path


def test_same_config_gives_every_timed_stage(tmp_path):
    out = folder(tmp_path, {"icl": 12.5, "eval": 30.0})
    assert earlier_timings(out, ["icl", "eval"], HASHES, "cfg", "w") == {"icl": 12.5, "eval": 30.0}


def test_other_config_or_weights_keeps_only_stages_whose_marker_matches(tmp_path):
    out = folder(tmp_path, {"icl": 12.5, "eval": 30.0}, config_hash="old", markers={"icl": "h-icl", "eval": "h-eval-old"})
    assert earlier_timings(out, ["icl", "eval"], HASHES, "cfg", "w") == {"icl": 12.5}
    assert earlier_timings(out, ["icl", "eval"], HASHES, "old", "other weights") == {"icl": 12.5}


def test_no_or_damaged_files_give_no_estimate(tmp_path):
    assert earlier_timings(tmp_path / "missing", ["icl"], HASHES, "cfg", "w") == {}
    out = folder(tmp_path, {"icl": "fast", "eval": -1})
    assert earlier_timings(out, ["icl", "eval"], HASHES, "cfg", "w") == {}
    (out / "timings.json").write_text("{not json")
    assert earlier_timings(out, ["icl"], HASHES, "cfg", "w") == {}


def test_duration():
    assert [duration(s) for s in (41, 150, 7200)] == ["41 s", "2.5 min", "2.0 h"]


def test_lines_with_every_timing_known():
    p = Progress(["data", "icl", "eval"], {"data": 1.0, "icl": 60.0, "eval": 120.0}, done=["data"])
    assert p.eta().startswith("ETA ~3.0 min")  # the finished data stage is not counted
    assert p.stage("icl") == " (took 60 s last time)"
    assert p.done("icl", 65.0) == "2/3 stages, 65 s so far, ~2.0 min left"
    assert p.done("eval", 190.0) == "3/3 stages, 3.2 min so far"


def test_lines_without_a_timing_say_so_and_invent_nothing():
    p = Progress(["icl", "eval"], {"eval": 120.0})
    assert "none yet" in p.eta() and "icl" in p.eta() and "~" not in p.eta()
    assert p.stage("icl") == ""
    assert p.done("icl", 50.0) == "1/2 stages, 50 s so far, ~2.0 min left"
    q = Progress(["icl", "eval"], {"icl": 10.0})
    assert q.done("icl", 11.0) == "1/2 stages, 11 s so far, time left unknown (first run of this work here)"
    r = Progress(["icl", "eval", "report"], {"icl": 10.0, "report": 1.0})
    assert r.eta() == "ETA: none yet, no earlier timing of eval here (the progress bars show each step's rate)"
