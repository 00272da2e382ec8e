"""Reliability: checkpoints never run code, one writer per results folder, byte-identical reruns,
every file write through mmfv.io, and the model checks of ``mmfv config check`` (the bad inputs
themselves are the table of tests/test_bad_inputs.py)."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import mmfv
from mmfv import config as C
from mmfv import runner
from mmfv.cli import main
from mmfv.models.tiny import train as T
from tests.test_bad_inputs import Env, _finetune, _one_line, items, lmm, merged, small_run, toml  # noqa: F401 (fixtures)

def test_a_config_that_fits_the_model_is_valid(tiny_model_dir, tmp_path, capsys):
    path = tmp_path / "ok.toml"
    path.write_text(toml(merged(tiny_model_dir, {})))
    assert main(["config", "check", str(path)]) == 0
    assert "valid" in capsys.readouterr().out
    path.write_text(toml(merged(tiny_model_dir, {"cma": {"top_k": 1000}})))
    assert main(["config", "check", str(path), "--no-model"]) == 0  # the file alone: top_k is checked against the model only
    assert "not checked against the model" in capsys.readouterr().out


def test_the_default_head_count_sweep_stops_at_the_models_heads(tiny_model_dir, lmm):
    """The default sweep (1..20) on an 8-head model sweeps 1..8; counts the config sets must fit."""
    from mmfv.stages import evaluate as E

    default = C.from_dict({"model": {"name": str(tiny_model_dir)}})
    assert E.head_counts(default, 8, "x") == list(range(1, 9))
    E.check(default.replace(cma={"top_k": 3}), lmm)
    with pytest.raises(ValueError, match="eval.head_counts: 9"):
        E.check(default.replace(eval={"head_counts": [1, 9]}), lmm)


def test_a_damaged_stage_marker_means_unfinished(small_run, tiny_model_dir, tmp_path):
    """A .done that is not text is not a finished stage: the stage reruns, no traceback."""
    out = tmp_path / "run"
    shutil.copytree(small_run, out)
    (out / "icl" / ".done").write_bytes(b"\xff\xfe\x00")
    assert list(runner.run(C.from_dict(merged(tiny_model_dir, {})), out, only="icl", quiet=True)) == ["icl"]


# --- 1. no code from checkpoints ------------------------------------------------------------------------
class Payload:
    """Unpickling this creates ``marker``: if the file appears, a checkpoint ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _payloads(path: Path, marker: Path) -> list[bytes]:
    """The crafted pickle as a plain pickle and as a torch.save zip (what torch.load would read)."""
    zipped = path.with_suffix(".zip")
    torch.save({"state": Payload(marker)}, zipped)
    return [pickle.dumps({"state": Payload(marker)}), zipped.read_bytes()]


@pytest.mark.parametrize("where", ["cma", "finetune", "train-tiny"])
def test_a_pickle_payload_in_a_checkpoint_never_runs(where, lmm, items, tiny_model_dir, tmp_path):
    from mmfv import cma
    from mmfv.execution import Checkpoint, CheckpointError

    e = Env(tiny_model_dir, tiny_model_dir, lmm, items, None, tmp_path)
    marker = tmp_path / "PWNED"
    path = {"cma": tmp_path / "cma" / "checkpoints" / "left.safetensors", "finetune": tmp_path / "ft" / "left_n8.safetensors",
            "train-tiny": tmp_path / "tiny" / "state.safetensors"}[where]
    path.parent.mkdir(parents=True)
    for payload in _payloads(path, marker):
        path.write_bytes(payload)
        with pytest.raises(CheckpointError, match=re.escape(str(path))):
            if where == "cma":
                corrupt = e.prompts("corrupted", 1, 2)
                means = torch.zeros(2, 4, 8)
                cma.indirect_effects(lmm, corrupt, means, "fast", 2, checkpoint=Checkpoint(path, cma.cma_fingerprint(lmm, [], corrupt, "fast", "self", False)))
            elif where == "finetune":
                _finetune(e, path)
            else:
                (path.parent / "state.pt").write_bytes(payload)  # an older release's pickle beside it: never read
                T.train(T.TrainConfig(**{**T.QUICK, "steps": 1}), path.parent, log=lambda *a: None)
        assert not marker.exists(), "a checkpoint ran code"
    pickle.loads(_payloads(path, marker)[0])  # the payload is live: unpickled, it runs
    assert marker.exists()


def test_checkpoints_are_never_unpickled_anywhere():
    """No module loads a pickle from a run folder: torch.load only with weights_only=True, no pickle.load."""
    src = Path(mmfv.__file__).parent
    for f in src.rglob("*.py"):
        text = f.read_text()
        assert "pickle.load" not in text and "weights_only=False" not in text, f
        for m in re.finditer(r"torch\.load\(([^)]*)\)", text):
            assert "weights_only=True" in m.group(1), f"{f}: {m.group(0)}"


# --- 2. one writer per results folder ---------------------------------------------------------------------
WAITER = """
import pathlib, sys, time
import mmfv.evaluate as E
from mmfv import config as C, runner
real, go = E.icl, pathlib.Path(sys.argv[2])
def waiting(*a, **k):  # hold the folder (inside the icl stage) until the test says go
    deadline = time.monotonic() + 300
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return real(*a, **k)
E.icl = waiting
cfg = C.load(sys.argv[1])
runner.run(cfg, cfg.run.out, until="icl", quiet=True)
"""


@pytest.mark.parametrize("second", ["same config", "other config"])
def test_a_second_writer_process_is_refused_and_the_first_run_is_intact(second, tiny_model_dir, tmp_path):
    out = tmp_path / "new-folder"
    first = merged(tiny_model_dir, {"run": {"out": str(out)}})
    other = merged(tiny_model_dir, {"run": {"out": str(out)}, "icl": {"n": 5}}) if second == "other config" else first
    (tmp_path / "first.toml").write_text(toml(first))
    (tmp_path / "second.toml").write_text(toml(other))
    env = {**os.environ, "PYTHONPATH": str(Path(mmfv.__file__).parents[1]), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    go = tmp_path / "go"
    p1 = subprocess.Popen([sys.executable, "-c", WAITER, str(tmp_path / "first.toml"), str(go)], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / ".lock.owner").exists() and p1.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (out / ".lock.owner").exists(), p1.stderr.read() if p1.poll() is not None else "the first run never took the folder"
        p2 = subprocess.run([sys.executable, "-m", "mmfv", "icl", str(tmp_path / "second.toml"), "--quiet"], env=env, capture_output=True,
                            text=True, timeout=300)
        assert p2.returncode == 2, p2.stderr
        assert _one_line(p2.stderr) and f"in use by mmfv run (pid {p1.pid})" in p2.stderr, p2.stderr
    finally:
        go.touch()
        _, err = p1.communicate(timeout=300)
    assert p1.returncode == 0, err
    meta = json.loads((out / "run.json").read_text())
    assert meta["config_hash"] == C.from_dict(first).hash() and meta["state"] == "partial"
    res = json.loads((out / "icl" / "results.json").read_text())
    assert res["n"] == 4 and (out / "icl" / ".done").exists()
    assert not (out / ".lock.owner").exists() and not list(out.glob(".*.tmp"))


# --- 6. deterministic tensors ------------------------------------------------------------------------------
def test_identical_runs_write_byte_identical_tensors(small_run, tiny_model_dir, tmp_path):
    again = tmp_path / "again"
    runner.run(C.from_dict(merged(tiny_model_dir, {})), again, until="vectors", quiet=True)
    files = sorted(str(p.relative_to(small_run)) for s in ("means", "cma", "vectors") for p in (small_run / s).glob("*.safetensors"))
    assert len(files) == 6
    for f in files:
        assert (again / f).read_bytes() == (small_run / f).read_bytes(), f


def test_every_result_writer_goes_through_mmfv_io():
    """Files mmfv writes are written atomically, durably and with the user's umask (mmfv.io); the
    writers listed here write into a fresh temporary folder that is moved or copied in whole."""
    allowed = {"io.py": 1, "models/openflamingo/folder.py": 4, "models/tiny/train.py": 1, "data/scenes.py": 2,
               "testing/gguf.py": 1}  # a test builder writing (and truncating) a GGUF file into a fresh temporary folder
    src = Path(mmfv.__file__).parent
    for f in src.rglob("*.py"):
        rel = str(f.relative_to(src))
        text = f.read_text()
        n = len(re.findall(r"\.write_text\(|\.write_bytes\(|open\([^)]*['\"][wa]b?['\"]|torch\.save\(|save_pretrained\(|save_file\(|\.save\(tmp", text))
        assert n <= allowed.get(rel, 0), f"{rel}: {n} direct file writes; use mmfv.io.write_bytes / write_json / write_safetensors"
