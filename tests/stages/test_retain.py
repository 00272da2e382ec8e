"""Stage retain on a random tiny model: every vector (extracted, tuned, composed) scored on the
other relations' prompts and its own ICL, against the same sets without a vector; report and switch."""

from __future__ import annotations

import json

import pytest

from mmfv import config as C
from mmfv import relations as R
from mmfv.report import html as H
from mmfv.stages import retain
from mmfv.stages.base import Context, StageSkipped
from mmfv.testing import random_tiny, random_vectors


def _write(folder, results: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder with vectors, eval, finetune and compose outputs of a random tiny model."""
    lmm = random_tiny(seed=5)
    out = tmp_path_factory.mktemp("retain")
    for r, fv in random_vectors(lmm, R.CARDINAL).items():
        fv.save(out / "vectors" / f"{r}.safetensors")
        fv.at(1).save(out / "eval" / "vectors" / f"{r}.safetensors")
        (fv * 2.0).at(0).save(out / "finetune" / "vectors" / f"{r}.safetensors")
    _write(out / "vectors", {})
    _write(out / "eval", {})
    _write(out / "finetune", {})
    _write(out / "compose", {"relations": {d: {"layer": 1} for d in R.NOVEL}})
    return lmm, out


def cfg(**retain_kw):
    return C.from_dict({"data": {"test_scenes": 60}, "retain": {"n": 6, "shots": 2, **retain_kw}, "run": {"batch_size": 8}})


def test_every_vector_against_the_same_sets_without_it(run_dir):
    lmm, out = run_dir
    res = retain.run(Context(cfg(), out, _lmm=lmm))
    kinds = {(r["vector"], r["kind"]) for r in res["rows"]}
    assert kinds == {(r, k) for r in R.CARDINAL for k in ("extracted", "tuned")} | {(d, "composed") for d in R.NOVEL}
    for r in res["rows"]:
        assert r["base"] == res["baseline"][f"{r['target']}|{r['prompts']}"]
        assert r["delta"] == pytest.approx(r["with"] - r["base"], abs=1e-4)
        assert r["target"] != r["vector"] or r["prompts"] == "icl"  # own relation: ICL only
    assert {r["layer"] for r in res["rows"] if r["kind"] == "tuned"} == {0}  # each vector at its own layer
    assert len([r for r in res["rows"] if (r["vector"], r["kind"]) == ("left", "extracted")]) == 2 * 3 + 1
    assert res["summary"] and (out / "retain" / "results.json").exists()
    page = retain.section(H.Results(out), out)
    assert "other relations, 2-shot ICL" in page and "left" in page


def test_chosen_kinds_and_off_switch(run_dir):
    lmm, out = run_dir
    res = retain.run(Context(cfg(vectors=["extracted"]), out, _lmm=lmm))
    assert res == retain.run(Context(cfg(vectors=["extracted"], cached=False), out, _lmm=lmm))  # cached == reference path
    assert {r["kind"] for r in res["rows"]} == {"extracted"}
    with pytest.raises(StageSkipped, match="retain.enabled"):
        retain.run(Context(cfg(enabled=False), out, _lmm=lmm))
    assert C.Config().retain.enabled  # on by default


def test_cli_flag_of_the_vector_kinds():
    from mmfv.cli import build_parser
    from mmfv.cli.stage_verbs import config_from_args

    a = build_parser().parse_args(["retain", "--vectors", "extracted,tuned"])
    assert config_from_args(a).retain.vectors == ["extracted", "tuned"]
    with pytest.raises(C.ConfigError, match="retain.vectors"):
        config_from_args(build_parser().parse_args(["retain", "--vectors", "nope"]))
