"""The public Python API: what `import mmfv` offers, that no name shadows a submodule, and that
the quickstart example runs as written (CI executes it)."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

import mmfv

ROOT = Path(__file__).resolve().parents[1]


def test_public_names_resolve_and_submodules_stay_modules():
    for name in mmfv.__all__:
        assert getattr(mmfv, name) is not None, name
    from mmfv import cma, finetune, prompts, relations  # the modules, not API functions of the same name

    assert all(isinstance(m, types.ModuleType) for m in (cma, finetune, prompts, relations))
    assert callable(mmfv.causal_mediation) and callable(mmfv.build_prompts)


def test_items_take_the_model_so_scenes_fit_it():
    lmm = mmfv.load_model("tiny")
    data = mmfv.items(lmm, "test", n_scenes=30)
    (p,) = mmfv.build_prompts("zero-shot", data, "left", n=1)
    px = lmm.scene_config().image_px
    assert p.query.load_image().size == (px, px)
    with pytest.raises(ValueError, match="argument relations"):
        mmfv.items(lmm, "test", relations=["up"])


def test_accuracy_takes_a_function_vector_with_its_layer():
    from mmfv.testing import random_tiny

    lmm = random_tiny(seed=3)
    data = mmfv.items(lmm, "eval", n_scenes=60)
    res = mmfv.causal_mediation(lmm, mmfv.build_prompts("clean", data, "left", k=2, n=6), mmfv.build_prompts("corrupted", data, "left", k=2, n=2))
    fv = mmfv.function_vector(lmm, res, k=2)
    test = mmfv.build_prompts("zero-shot", data, "left", n=8)
    with pytest.raises(ValueError, match="no injection layer"):
        mmfv.accuracy(lmm, test, fv)
    assert mmfv.accuracy(lmm, test, fv.at(1)) == mmfv.accuracy(lmm, test, fv.vector, 1)
    from mmfv import evaluate

    with pytest.raises(ValueError, match="batch_size"):
        evaluate.accuracy(lmm, test, batch_size=-1)
    with pytest.raises(ValueError, match="NaN"):
        mmfv.accuracy(lmm, test, torch.full((lmm.hidden_size,), float("nan")), 0)


def test_quickstart_runs(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py"), str(tmp_path)], capture_output=True, text=True, timeout=600,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "with FV" in proc.stdout and (tmp_path / "left.safetensors").exists() and (tmp_path / "aie_left.png").exists()
    zs, fv = (float(x) for x in proc.stdout.split("zero-shot ")[1].split(" (layer")[0].split(" -> with FV "))
    assert fv > zs  # the vector steers the shipped model


def test_notebook_example_leaves_the_backend_alone(tmp_path, tiny_model_dir):
    """The notebook-style example: Figures from a run's results, the user's backend untouched
    (here a non-Agg one), files written only where asked."""
    from tests.test_runner import SMALL

    from mmfv import config as C

    out = tmp_path / "run"
    cfg = C.from_dict({**SMALL, "model": {"name": str(tiny_model_dir)}})
    for stage in ("icl", "cma"):
        mmfv.run(cfg, str(out), until=stage)
    env = {**__import__("os").environ, "MPLBACKEND": "svg"}
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "notebook.py"), str(out), str(tmp_path)], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "icl.png").exists() and (tmp_path / "heads.svg").exists()
    import pandas  # noqa: F401  (the test extra has it)

    assert list(mmfv.Run(out).to_frame("cma").columns) == ["relation", "layer", "head", "aie", "top_rank"]
