"""`mmfv run`: stage skipping, resume after a kill with byte-identical results, foreign folders,
and torchrun with 2 gloo processes equal to one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmfv import cma, config as C, runner

SMALL = {
    "data": {"eval_scenes": 60, "train_scenes": 80, "val_scenes": 40, "test_scenes": 60},
    "icl": {"shots": [0, 1, 2], "n": 8},
    "cma": {"n_mean": 8, "n_cma": 6, "shots": 2, "top_k": 3, "batch_size": 2},
    "eval": {"n": 8, "head_counts": [1, 2]},
    "finetune": {"sizes": [8, 16], "headline_size": 16, "epochs": 2, "shots": [1, 2], "n": 8, "batch_size": 8, "search_layers": True},
    "compose": {"grid": [1.0, 2.0], "shots": [1], "n": 8},
    "run": {"batch_size": 16, "threads": 1},
}


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir) -> Path:
    return tiny_model_dir


def small_config(model_dir: Path) -> C.Config:
    return C.from_dict({**SMALL, "model": {"name": str(model_dir)}})


def results(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("results.json"))}


@pytest.fixture(scope="module")
def reference_run(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    timings = runner.run(small_config(model_dir), out, quiet=True)
    return out, timings


def test_full_run_writes_every_stage(reference_run):
    out, timings = reference_run
    assert list(timings) == list(runner.STAGES)
    for stage in runner.STAGES:
        assert (out / stage / ".done").exists()
    for stage in ("icl", "means", "cma", "eval", "finetune", "compose"):
        assert (out / stage / "results.json").exists(), stage
    assert (out / "report" / "report.html").exists() and (out / "config.toml").exists() and (out / "log.txt").exists()
    ev = json.loads((out / "eval" / "results.json").read_text())
    assert set(ev["mean"]) >= {"zero_shot", "fv"} and "best_layer" in ev["left"]


def test_progress_lines_use_only_this_folders_earlier_timings(model_dir, reference_run):
    """A first run has no ETA (and says so); a rerun of the same work here estimates from its timings."""
    out, timings = reference_run
    first = (out / "log.txt").read_text().splitlines()
    assert "ETA: none yet" in first[0] and "ETA ~" not in first[0]
    n = len(runner.STAGES)
    assert any("[report] finished in" in l and f"{n}/{n} stages" in l for l in first)
    runner.run(small_config(model_dir), out, start="report", quiet=True)
    log = (out / "log.txt").read_text().splitlines()[len(first):]
    header = next(l for l in log if " run: model " in l)
    assert "ETA ~" in header and "earlier timings" in header
    assert any("[report] running (took" in l for l in log)


def test_rerun_skips_finished_stages(model_dir, reference_run):
    out, _ = reference_run
    before = results(out)
    assert runner.run(small_config(model_dir), out, quiet=True) == {}
    assert results(out) == before


def test_only_and_from(model_dir, reference_run):
    out, _ = reference_run
    before = results(out)
    assert list(runner.run(small_config(model_dir), out, only="vectors", quiet=True)) == []  # done: skipped
    t = runner.run(small_config(model_dir), out, start="finetune", quiet=True)
    assert list(t) == list(runner.STAGES[runner.STAGES.index("finetune"):])
    assert results(out) == before
    with pytest.raises(runner.RunError, match="unknown stage"):
        runner.run(small_config(model_dir), out, only="nope", quiet=True)


def test_a_stage_whose_inputs_are_missing_is_refused_and_the_folder_state_kept(model_dir, tmp_path):
    out = tmp_path / "partial"
    runner.run(small_config(model_dir), out, only="data", quiet=True)
    state = json.loads((out / "run.json").read_text())["state"]
    with pytest.raises(runner.RunError, match="stage cma needs means first"):
        runner.run(small_config(model_dir), out, only="cma", quiet=True)
    assert json.loads((out / "run.json").read_text())["state"] == state != "running"


def test_resume_after_kill_is_byte_identical(model_dir, reference_run, tmp_path, monkeypatch):
    ref_out, _ = reference_run
    out = tmp_path / "killed"
    real, calls = cma.ie_fast, {"n": 0}

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:  # in the middle of the CMA stage (second relation)
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(cma, "ie_fast", dying)
    with pytest.raises(KeyboardInterrupt):
        runner.run(small_config(model_dir), out, quiet=True)
    monkeypatch.setattr(cma, "ie_fast", real)
    assert (out / "means" / ".done").exists() and not (out / "cma" / ".done").exists()
    t = runner.run(small_config(model_dir), out, quiet=True)
    assert "icl" not in t and "cma" in t
    assert results(out) == results(ref_out)


def test_foreign_folder_is_refused_unless_forced(model_dir, reference_run, tmp_path):
    out, _ = reference_run
    other = C.from_dict({**SMALL, "model": {"name": str(model_dir)}, "eval": {"n": 9, "head_counts": [1]}})
    with pytest.raises(runner.RunError, match="another config"):
        runner.run(other, out, only="icl", quiet=True)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "file.txt").write_text("x")
    with pytest.raises(runner.RunError, match="not empty"):
        runner.run(small_config(model_dir), junk, quiet=True)


def test_changed_model_weights_are_not_taken_for_finished(model_dir, tmp_path):
    """Same config, same model path, other weights (a new release, a retrained checkpoint): the
    folder is refused, and --force reruns every stage."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from mmfv.models import fingerprint

    mine = tmp_path / "model"
    shutil.copytree(model_dir, mine)
    assert fingerprint(str(mine)) == fingerprint(str(model_dir))  # content, not location
    cfg = C.from_dict({**SMALL, "model": {"name": str(mine)}})
    out = tmp_path / "out"
    runner.run(cfg, out, only="icl", quiet=True)
    assert runner.run(cfg, out, only="icl", quiet=True) == {}  # unchanged: skipped
    w = load_file(str(mine / "model.safetensors"))
    k = sorted(w)[0]
    w[k] = w[k] + torch.ones_like(w[k])
    save_file(w, str(mine / "model.safetensors"), metadata={"format": "pt"})
    assert fingerprint(str(mine)) != fingerprint(str(model_dir))
    with pytest.raises(runner.RunError, match="another version of the model"):
        runner.run(cfg, out, only="icl", quiet=True)
    assert list(runner.run(cfg, out, only="icl", force=True, quiet=True)) == ["icl"]


def test_two_gloo_processes_equal_one(model_dir, reference_run, tmp_path):
    ref_out, _ = reference_run
    cfg_path = tmp_path / "cfg.toml"
    cfg_path.write_text(small_config(model_dir).to_toml())
    out = tmp_path / "dist"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517", "-m", "mmfv", "run", str(cfg_path), "--out", str(out), "--quiet"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 processes" in (out / "log.txt").read_text()
    assert results(out) == results(ref_out)


def test_finetune_layer_is_chosen_on_val(reference_run):
    """Every layer is tried at the headline size; the kept one has the best val accuracy (ties: the
    extracted FV's layer, then the lowest), and the saved tuned vector says which layer it is for."""
    from mmfv.vectors import FunctionVector

    out, _ = reference_run
    ft = json.loads((out / "finetune" / "results.json").read_text())
    ev = json.loads((out / "eval" / "results.json").read_text())
    for rel, r in ft["relations"].items():
        search = {int(l): a for l, a in r["layer_search_val"].items()}
        assert sorted(search) == list(range(len(ev["relations"][rel]["layer_sweep_val"])))
        want = max(search, key=lambda l: (search[l], l == ev["relations"][rel]["best_layer"], -l))
        assert r["layer"] == want
        assert r["by_size"]["16"]["val_acc"] == search[want]
        assert FunctionVector.load(out / "finetune" / "vectors" / f"{rel}.safetensors").extra["layer"] == want


def test_stage_verb_equals_the_stage_of_a_run(model_dir, reference_run, tmp_path):
    """`mmfv finetune CONFIG` (no stage options) writes the finetune results of `mmfv run CONFIG`:
    one config, one set of defaults, the same stage object."""
    from mmfv.cli import main

    ref_out, _ = reference_run
    cfg_path = tmp_path / "cfg.toml"
    cfg_path.write_text(small_config(model_dir).to_toml())
    out = tmp_path / "verb"
    assert main(["finetune", str(cfg_path), "--out", str(out), "--quiet"]) == 0
    assert (out / "finetune" / "results.json").read_bytes() == (ref_out / "finetune" / "results.json").read_bytes()
    assert not (out / "compose").exists() and not (out / "report").exists()  # only finetune and what it needs


def test_a_second_writer_is_refused_and_the_first_run_intact(model_dir, reference_run, tmp_path):
    """While one process holds a results folder, a second run on it fails at once, naming the holder."""
    from mmfv.runner import lock

    out, _ = reference_run
    before = results(out)
    with lock(out):
        with pytest.raises(runner.RunError, match=r"in use by mmfv run \(pid \d+\)"):
            runner.run(small_config(model_dir), out, quiet=True)
    assert results(out) == before


def test_a_corrected_config_after_a_failed_stage_keeps_finished_stages(model_dir, tmp_path):
    """A run that failed (here: a fine-tuning size larger than the train split) may be resumed with a
    corrected config without --force; the stages whose inputs did not change are not rerun."""
    bad = C.from_dict({**SMALL, "model": {"name": str(model_dir)}, "finetune": {**SMALL["finetune"], "sizes": [8, 16, 999], "headline_size": 16}})
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="training size 999"):
        runner.run(bad, out, quiet=True)
    assert json.loads((out / "run.json").read_text())["state"] == "failed"
    t = runner.run(small_config(model_dir), out, quiet=True)
    assert list(t) == list(runner.STAGES[runner.STAGES.index("finetune"):])
    assert not (out / "replaced").exists()


def test_a_finished_stage_whose_settings_changed_after_a_failure_is_kept_aside(model_dir, tmp_path):
    """Resuming a failed run with a config that changes a finished stage reruns that stage and keeps
    its earlier results in replaced/ (never deleted without --force)."""
    bad = C.from_dict({**SMALL, "model": {"name": str(model_dir)}, "finetune": {**SMALL["finetune"], "sizes": [8, 16, 999], "headline_size": 16}})
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="training size 999"):
        runner.run(bad, out, quiet=True)
    before = (out / "eval" / "results.json").read_bytes()
    fixed = C.from_dict({**SMALL, "model": {"name": str(model_dir)}, "eval": {**SMALL["eval"], "n": 6}})
    assert list(runner.run(fixed, out, quiet=True)) == list(runner.STAGES[runner.STAGES.index("eval"):])
    kept = [p for p in (out / "replaced").iterdir() if p.name.startswith("eval-")]
    assert len(kept) == 1 and (kept[0] / "results.json").read_bytes() == before
