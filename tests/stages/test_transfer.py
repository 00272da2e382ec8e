"""Stage transfer on a random tiny model: another run's vectors on this run's data, at the source's
layer and at one chosen on this run's val; off by default; vectors of another model refused."""

from __future__ import annotations

import json

import pytest
import torch

from mmfv import config as C
from mmfv import evaluate
from mmfv import prompts as P
from mmfv import vectors as V
from mmfv.report import html as H
from mmfv.stages import transfer
from mmfv.stages.base import Context, StageSkipped
from mmfv.testing import random_tiny

RELS = ["above", "left"]


def _vectors(lmm, folder, scale: float, layer: int, tuned: bool = True) -> None:
    torch.manual_seed(int(scale * 10))
    means = torch.randn(lmm.n_layers, lmm.n_heads, lmm.head_dim)
    for i, r in enumerate(RELS):
        fv = V.build(lmm, means, [(i % lmm.n_layers, i)], r) * scale
        fv.at(layer).save(folder / "eval" / "vectors" / f"{r}.safetensors")
        if tuned:
            (fv * 2.0).at(0).save(folder / "finetune" / "vectors" / f"{r}.safetensors")
    (folder / "eval" / "results.json").write_text(json.dumps({}))


def cfg(source: str = "", **kw):
    return C.from_dict({"data": {"val_scenes": 30, "test_scenes": 30, "relations": RELS, "seed": 7}, "transfer": {"source": source, "n": 6, **kw},
                        "run": {"batch_size": 8}})


def test_source_vectors_on_this_runs_data(tmp_path):
    lmm = random_tiny(seed=5)
    src, here = tmp_path / "src", tmp_path / "here"
    _vectors(lmm, src, 1.0, 1)
    _vectors(lmm, here, 3.0, 0, tuned=False)
    with pytest.raises(StageSkipped, match="opt-in"):
        transfer.run(Context(cfg(), here, _lmm=lmm))
    ctx = Context(cfg(str(src)), here, _lmm=lmm)
    res = transfer.run(ctx)
    assert set(res["relations"]) == set(RELS)
    assert res == transfer.run(Context(cfg(str(src), cached=False), here, _lmm=lmm))  # cached == reference path
    left = res["relations"]["left"]
    assert left["layer_source"] == 1 and left["layer_here"] == 0 and 0 <= left["layer_val"] < lmm.n_layers
    test = ctx.items("test")
    zt = P.build("zero-shot", test["left"], test, 0, 6, 7)
    fv = V.FunctionVector.load(src / "eval" / "vectors" / "left.safetensors")
    assert left["fv_source"] == evaluate.accuracy(lmm, zt, fv.vector, 1, 8)["acc"]  # on this run's test prompts
    assert "fv_tuned_source_val" in left
    assert "vectors built in" in transfer.section(H.Results(here), here)


def test_vectors_of_another_model_are_refused(tmp_path):
    lmm = random_tiny(seed=5)
    _vectors(random_tiny(seed=9), tmp_path / "src", 1.0, 1)
    _vectors(lmm, tmp_path / "here", 1.0, 1)
    with pytest.raises(ValueError, match="another model|built from|model"):
        transfer.run(Context(cfg(str(tmp_path / "src")), tmp_path / "here", _lmm=lmm))
    with pytest.raises(FileNotFoundError, match="transfer.source"):
        transfer.run(Context(cfg(str(tmp_path / "nowhere")), tmp_path / "here", _lmm=lmm))


def test_the_source_folders_content_enters_the_stage_hash(tmp_path):
    from mmfv.stages import STAGES
    from mmfv.stages.base import stage_hashes

    src = tmp_path / "src"
    _vectors(random_tiny(seed=5), src, 1.0, 1)
    h = lambda: stage_hashes(cfg(str(src)), STAGES, "w")  # noqa: E731
    before = h()
    (fv := V.FunctionVector.load(src / "eval" / "vectors" / "left.safetensors")).at(0).save(src / "eval" / "vectors" / "left.safetensors")
    after = h()
    assert after["transfer"] != before["transfer"] and {k for k in before if before[k] != after[k]} == {"transfer"}
    assert fv.layer == 1
