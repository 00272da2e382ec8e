"""The stages that inject vectors give the same results with cached injection on and off ([eval] /
[compose] / [finetune] cached), on a small run of a random mmfv-tiny: eval and compose byte for byte;
fine-tuning rounds differently (vectors within ~1e-6), so its accuracies and chosen epochs are
equal and its mean training losses within 1e-4."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmfv import config as C
from mmfv import runner
from tests.test_runner import SMALL, results


def _run(model_dir: Path, out: Path, cached: bool) -> dict[str, bytes]:
    d = {k: dict(v) for k, v in SMALL.items()}
    for stage in ("eval", "finetune", "compose"):
        d[stage]["cached"] = cached
    runner.run(C.from_dict({**d, "model": {"name": str(model_dir)}}), out, quiet=True)
    return results(out)


def _same(a: Any, b: Any, path: str = "") -> None:
    """Equal, except each ``train_loss`` within 1e-4."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), path
        for k in a:
            _same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{path}[{i}]")
    elif path.endswith(".train_loss"):
        assert abs(a - b) <= 1e-4, path
    else:
        assert a == b, path


def test_cached_and_reference_paths_write_the_same_results(tiny_model_dir, tmp_path):
    ref = _run(tiny_model_dir, tmp_path / "reference", False)
    got = _run(tiny_model_dir, tmp_path / "cached", True)
    assert set(ref) == set(got) and {"eval/results.json", "finetune/results.json", "compose/results.json"} <= set(ref)
    for name in ref:
        if name == "finetune/results.json":
            _same(json.loads(ref[name]), json.loads(got[name]))
        else:
            assert got[name] == ref[name], name
