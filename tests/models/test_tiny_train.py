"""mmfv-tiny training: --quick runs end to end, the loss falls, the checkpoint loads and resumes."""

from __future__ import annotations

import json

import pytest
import torch

from mmfv.cli import main
from mmfv.models import load_model
from mmfv.models.tiny import train as T


def test_quick_training_loss_falls_and_checkpoint_loads(tmp_path, capsys):
    out = tmp_path / "tiny"
    assert main(["train-tiny", "--quick", "--out", str(out), "--seed", "1", "--set", "easy_start=0.5"]) == 0
    card = json.loads((out / "card.json").read_text())
    hist = card["history"]
    assert card["steps_done"] == T.QUICK["steps"] and len(hist) >= 3
    assert hist[-1]["train_loss"] < 0.8 * hist[0]["train_loss"]
    lmm = load_model(str(out))
    assert lmm.n_layers == T.QUICK["layers"] and lmm.scene_config().grid == card["scene_config"]["grid"]
    assert "trained" in capsys.readouterr().out


def test_resume_refuses_another_config(tmp_path):
    cfg = T.TrainConfig(**{**T.QUICK, "steps": 4, "eval_every": 2, "bank": 200, "eval_sequences": 8})
    T.train(cfg, tmp_path, log=lambda *_: None)
    other = T.TrainConfig(**{**T.QUICK, "steps": 6, "eval_every": 2, "bank": 200, "eval_sequences": 8})
    with pytest.raises(ValueError, match="belongs to other work"):  # another training config
        T.train(other, tmp_path, log=lambda *_: None)


def test_unknown_setting_is_a_one_line_error(tmp_path, capsys):
    assert main(["train-tiny", "--quick", "--out", str(tmp_path), "--set", "bogus=1"]) == 2
    assert "bogus" in capsys.readouterr().err
