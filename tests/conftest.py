"""Shared fixtures: a small random mmfv-tiny saved as a checkpoint folder (no training needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from mmfv.testing import random_tiny

    d = tmp_path_factory.mktemp("random-tiny")
    lmm = random_tiny(seed=6)
    lmm.module.save_pretrained(d)
    lmm.tok.save(d)
    (d / "card.json").write_text(json.dumps({"scene_config": lmm.card["scene_config"]}))
    return d
