"""Stage baselines on a random tiny model: off by default; when on, every method at every size,
trained at the finetune stage's budget, beside the FV's numbers and parameter count."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("peft")

from mmfv import config as C  # noqa: E402
from mmfv.finetune import weights_digest  # noqa: E402
from mmfv.report import html as H  # noqa: E402
from mmfv.stages import baselines  # noqa: E402
from mmfv.stages.base import Context, StageSkipped  # noqa: E402
from mmfv.testing import random_tiny  # noqa: E402


def test_off_by_default_then_every_method_and_size(tmp_path, monkeypatch):
    lmm = random_tiny(seed=5)
    ft = {"relations": {"left": {"fv": 0.25, "by_size": {"8": {"fv_tuned": 0.5}, "16": {"fv_tuned": 0.75}}}}}
    (tmp_path / "finetune").mkdir()
    (tmp_path / "finetune" / "results.json").write_text(json.dumps(ft))
    d = {"data": {"train_scenes": 40, "val_scenes": 30, "test_scenes": 30, "relations": ["left"]},
         "finetune": {"sizes": [8, 16], "headline_size": 16, "epochs": 1, "n": 6, "batch_size": 8}, "run": {"batch_size": 8}}
    with pytest.raises(StageSkipped, match="opt-in"):
        baselines.run(Context(C.from_dict(d), tmp_path, _lmm=lmm))
    before = weights_digest(lmm)
    cfg = C.from_dict({**d, "baselines": {"enabled": True, "lora_ranks": [1], "prompt_tokens": [2], "sizes": [8]}})
    res = baselines.run(Context(cfg, tmp_path, _lmm=lmm))
    assert weights_digest(lmm) == before
    assert res["sizes"] == [8] and set(res["methods"]) == {"LoRA r=1", "prompt 2 tokens"}
    assert res["methods"]["prompt 2 tokens"]["params"] == 2 * lmm.hidden_size and res["params_fv"] == lmm.hidden_size
    left = res["relations"]["left"]
    assert left["fv_tuned"] == {"8": 0.5} and set(left["LoRA r=1"]) == {"8"} and 0 <= left["LoRA r=1"]["8"]["acc"] <= 1
    assert len(baselines.table(res)) == 2
    page = baselines.section(H.Results(tmp_path), tmp_path)
    assert "LoRA r=1" in page and "trained parameters" in page
    from mmfv import baselines as B

    def no_training(*a, **k):
        raise AssertionError("a finished training ran again")

    monkeypatch.setattr(B, "train", no_training)
    again = baselines.run(Context(cfg, tmp_path, _lmm=lmm))  # resumed from the per-training checkpoints
    assert again == res
