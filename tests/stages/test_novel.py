"""Stage novel on a random tiny model: test and novel-object accuracies of the extracted and tuned
vectors, each at its own layer; the off switch; the report section."""

from __future__ import annotations

import json

import pytest

from mmfv import config as C
from mmfv import evaluate
from mmfv import prompts as P
from mmfv import vectors as V
from mmfv.report import html as H
from mmfv.stages import novel
from mmfv.stages.base import Context, StageSkipped
from mmfv.testing import random_tiny, random_vectors


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    lmm = random_tiny(seed=5)
    out = tmp_path_factory.mktemp("novel")
    for r, fv in random_vectors(lmm, ("above", "left")).items():
        fv.at(1).save(out / "eval" / "vectors" / f"{r}.safetensors")
        (fv * 3.0).at(0).save(out / "finetune" / "vectors" / f"{r}.safetensors")
    for s in ("eval", "finetune"):
        (out / s / "results.json").write_text(json.dumps({}))
    return lmm, out


def cfg(**kw):
    return C.from_dict({"data": {"test_scenes": 40, "relations": ["above", "left"]}, "novel": {"n": 6, "scenes": 30, "shots": 2, **kw},
                        "run": {"batch_size": 8}})


def test_both_splits_each_vector_at_its_layer(run_dir):
    lmm, out = run_dir
    ctx = Context(cfg(), out, _lmm=lmm)
    res = novel.run(ctx)
    assert set(res["relations"]) == {"above", "left"} and "novel_objects" in res["how"]
    for r, v in res["relations"].items():
        assert set(v) == {"test", "novel"} and all(set(novel.KEYS) <= set(x) for x in v.values())
        assert v["test"]["icl"] is None and 0 <= v["novel"]["icl"] <= 1  # the ICL reference: novel queries only
    test = ctx.items("test")
    tuned = V.FunctionVector.load(out / "finetune" / "vectors" / "left.safetensors")
    zs = P.build("zero-shot", test["left"], test, 0, 6, 0)
    assert res["relations"]["left"]["test"]["fv_tuned"] == evaluate.accuracy(lmm, zs, tuned.vector, 0, 8)["acc"]
    assert "Novel objects" in novel.section(H.Results(out), out)
    assert {row["split"] for row in novel.table(res)} == {"test", "novel"}


def test_off_switch(run_dir):
    lmm, out = run_dir
    with pytest.raises(StageSkipped, match="novel.enabled"):
        novel.run(Context(cfg(enabled=False), out, _lmm=lmm))
