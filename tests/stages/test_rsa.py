"""RSA of two random tiny runs (means from the means stage), the stage within one run, and `mmfv rsa`."""

from __future__ import annotations

import json

import pytest

from mmfv import config as C
from mmfv import vectors as V
from mmfv.report import html as H
from mmfv.stages import means, rsa
from mmfv.stages.base import Context, StageSkipped
from mmfv.stages.cma import read
from mmfv.testing import random_tiny

SMALL = {"data": {"eval_scenes": 40}, "cma": {"n_mean": 6, "shots": 2}, "rsa": {"perms": 200}}


def _run(folder, seed: int, layers: int):
    """A run folder with means (the means stage, on a random tiny model) and a vector per relation."""
    lmm = random_tiny(seed=seed, layers=layers)
    means.run(Context(C.from_dict(SMALL), folder, _lmm=lmm))
    for i, r in enumerate(C.Config().data.relations):
        m = read(folder / "means" / f"{r}.safetensors", "means")[0]["means"]
        V.build(lmm, m, [(0, i)], r).save(folder / "vectors" / f"{r}.safetensors")
    return lmm


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    a, b = tmp_path_factory.mktemp("a"), tmp_path_factory.mktemp("b")
    _run(a, 1, 2)
    _run(b, 2, 3)  # another model, another depth
    return a, b


def test_two_runs_of_different_depth(runs):
    a, b = runs
    res = rsa.compare_runs(a, b, "means", 1, 2, perms=200)
    assert res["relations"] == ["above", "below", "left", "right"] and res["exact"] and res["n_perm"] == 24
    assert len(res["by_layer"]) == 2 and len(res["by_layer"][0]) == 3
    assert res["by_layer"][1][2] == pytest.approx(res["rho"], abs=1e-4)  # the headline pair is that cell
    same = rsa.compare_runs(a, a, "means", 1, 1)
    assert same["rho"] == pytest.approx(1.0) and same["p"] == pytest.approx(1 / 24, abs=1e-6)
    assert rsa.compare_runs(a, b, "vectors")["rdm_a"] != rsa.compare_runs(b, a, "vectors")["rdm_a"]
    with pytest.raises(ValueError, match="layer 5 is out of range"):
        rsa.compare_runs(a, b, "means", 5)
    with pytest.raises(FileNotFoundError, match="no means results"):
        rsa.features(a / "nowhere")


def test_cli_prints_and_writes_json(runs, tmp_path, capsys):
    from mmfv.cli import main

    a, b = runs
    out = tmp_path / "r.json"
    assert main(["rsa", str(a), str(b), "--layer-a", "0", "--layer-b", "1", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Spearman rho" in text and "rho by layer" in text
    j = json.loads(out.read_text())
    assert j == json.loads(json.dumps(rsa.compare_runs(a, b, "means", 0, 1)))
    assert main(["rsa", str(a), str(b), "--what", "vectors", "--layer-a", "0", "--json", str(out)]) == 2  # a layer of a vector: one-line error


def test_stage_within_one_run_and_against_another(runs):
    a, b = runs
    res = rsa.run(Context(C.from_dict(SMALL), a))
    assert (res["layer_a"], res["layer_b"]) == (0, 1) and len(res["vs_vectors"]) == 2
    assert "Representational" not in rsa.section(H.Results(a), a) and "RDM a" in rsa.section(H.Results(a), a)
    other = rsa.run(Context(C.from_dict({**SMALL, "rsa": {"other": str(b), "what": "vectors"}}), a))
    assert other["b"] == str(b) and "by_layer" not in other
    with pytest.raises(StageSkipped, match="rsa.enabled"):
        rsa.run(Context(C.from_dict({**SMALL, "rsa": {"enabled": False}}), a))


def test_stage_skips_with_fewer_than_three_relations(runs, tmp_path):
    a, _ = runs
    cfg = C.from_dict({**SMALL, "data": {**SMALL["data"], "relations": ["above", "left"]}})
    with pytest.raises(StageSkipped, match="at least 3 relations"):
        rsa.run(Context(cfg, a))
