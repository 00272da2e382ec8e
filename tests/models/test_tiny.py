"""mmfv-tiny's own checks: checkpoint folders, its input limits, and the shipped weights. The LMM
contract it shares with every adapter is in test_contract.py."""

from __future__ import annotations

import json

import pytest
import torch

from mmfv import prompts as P
from mmfv.data import synthetic
from mmfv.models import load_model
from mmfv.models.tiny.adapter import TinyLMM, check_folder
from mmfv.testing.tiny import SCENE, random_tiny  # other test modules import these from here too

RELS = ("above", "below", "left", "right")


@pytest.fixture(scope="module")
def lmm() -> TinyLMM:
    return random_tiny()


@pytest.fixture(scope="module")
def data():
    return synthetic.items("test", 60, RELS, seed=0, config=SCENE)


@pytest.fixture(scope="module")
def batch(lmm, data):
    prompts = P.build("clean", data["left"], data, 3, 4, 0) + P.build("corrupted", data["above"], data, 2, 3, 1)
    return lmm.encode(prompts)


def test_save_and_load_round_trip(lmm, batch, tmp_path):
    lmm.module.save_pretrained(tmp_path)
    lmm.tok.save(tmp_path)
    again = load_model(str(tmp_path))
    assert torch.equal(again.forward(batch), lmm.forward(batch))


def test_bad_checkpoint_folders(tmp_path, lmm):
    with pytest.raises(FileNotFoundError, match="missing"):
        check_folder(tmp_path)
    lmm.module.save_pretrained(tmp_path)
    lmm.tok.save(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["model_type"] = "llama"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="not mmfv_tiny"):
        check_folder(tmp_path)


def test_wrong_image_size_and_too_long_prompt(lmm, data):
    with pytest.raises(ValueError, match="takes 3x32x32 images"):
        lmm.module.encode_images(torch.zeros(1, 3, 40, 40))
    long = P.build("clean", data["left"], data, 30, 1, 0)
    with pytest.raises(ValueError, match="exceeds mmfv-tiny's context"):
        lmm.forward(lmm.encode(long))


def test_shipped_mmfv_tiny_loads_and_learns_in_context():
    """The packaged weights: load by name, card present, and accuracy rises with demonstrations."""
    from mmfv.evaluate import icl

    lmm = load_model("tiny")
    assert lmm.card.get("name") == "mmfv-tiny" and "icl_test" in lmm.card
    data = synthetic.items("test", 300, RELS, seed=0, config=lmm.scene_config())
    res = icl(lmm, data, data, [0, 8], 50, kinds=("clean",))
    assert res["clean"]["8"]["mean"]["acc"] > res["clean"]["0"]["mean"]["acc"] + 0.3


def test_shipped_card_records_how_to_reproduce_every_stage():
    """card.json: every training stage with its command, seed, config and history; the whole training
    within the 90-minute budget; stage 4 trains in context on all 8 relations; weights under 20 MB."""
    from pathlib import Path

    import mmfv.models.tiny as tiny_pkg
    from mmfv.models.tiny.train import TrainConfig

    lmm = load_model("tiny")
    card = lmm.card
    assert card["version"] == 5 and [s["name"] for s in card["stages"]] == ["stage1", "stage2", "stage3", "stage4"]
    for s in card["stages"]:
        assert s["reproduce"].split()[-1] != "" and "mmfv train-tiny" in s["reproduce"] and f"--seed {s['train_config']['seed']}" in s["reproduce"]
        assert s["steps_done"] == s["train_config"]["steps"] and s["history"][-1]["step"] == s["steps_done"]
        TrainConfig(**{**s["train_config"], "init_from": ""})  # a valid config of this release
    assert card["stages"][-1]["train_config"]["icl_relations"] == "spatial" and card["stages"][-1]["train_config"]["icl_diagonal_share"] == 0.15
    assert sum(s["train_minutes"] for s in card["stages"]) <= 90
    assert (Path(tiny_pkg.__file__).parent / "weights" / "model.safetensors").stat().st_size < 20e6
    assert set(card["icl_test"]["diagonal"]["relations"]) == {"above_left", "above_right", "below_left", "below_right"}
