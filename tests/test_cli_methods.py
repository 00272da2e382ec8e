"""The method verbs end to end on a small random model: cma -> extract -> eval, and their errors."""

from __future__ import annotations

import json

import pytest

from mmfv.cli import main


@pytest.fixture(scope="module")
def cma_dir(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cma")
    assert main(["cma", "--model", str(tiny_model_dir), "--out", str(out), "--n-mean", "6", "--n-cma", "3", "--shots", "2", "--top-k", "3", "--relations", "left,above"]) == 0
    return out


def test_cma_writes_results_and_heatmaps(cma_dir):
    res = json.loads((cma_dir / "results.json").read_text())
    assert set(res["relations"]) == {"left", "above"}
    assert len(res["relations"]["left"]["top_heads"]) == 3
    assert (cma_dir / "aie_left.png").read_bytes()[:4] == b"\x89PNG"


def test_extract_and_eval(cma_dir, tiny_model_dir, tmp_path, capsys):
    vec_dir = tmp_path / "vectors"
    assert main(["extract", "--cma", str(cma_dir), "--k", "2", "--out", str(vec_dir), "--model", str(tiny_model_dir)]) == 0
    assert sorted(p.name for p in vec_dir.glob("*.safetensors")) == ["above.safetensors", "left.safetensors"]
    one = tmp_path / "left.safetensors"
    assert main(["extract", "--cma", str(cma_dir), "--k", "2", "--out", str(one), "--relations", "left", "--model", str(tiny_model_dir)]) == 0
    assert one.exists()
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(tiny_model_dir), "--fv", str(vec_dir), "--out", str(out), "--n", "6", "--cma", str(cma_dir)]) == 0
    res = json.loads((out / "results.json").read_text())
    for r in ("left", "above"):
        assert set(res[r]) == {"zero_shot", "fv", "best_layer"}
        assert len(res["relations"][r]["layer_sweep_val"]) == 2
    assert set(res["mean"]) == {"zero_shot", "fv"}
    for png in ("layer_sweep.png", "head_count.png", "context_size.png"):
        assert (out / png).exists()


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["cma", "--relations", "up", "--out", "X"], "unknown relation"),
        (["extract", "--cma", "NOPE", "--out", "X"], "results.json not found"),
        (["eval", "--fv", "missing.safetensors", "--out", "X"], "does not exist"),
    ],
)
def test_bad_input_is_one_line(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) if argv[0] == "cma" else _nothing():
        code = main(argv)
        assert code == 2
    err = capsys.readouterr().err
    assert needle in err


def test_k_larger_than_heads_and_foreign_vector(cma_dir, tiny_model_dir, tmp_path, capsys):
    assert main(["extract", "--cma", str(cma_dir), "--k", "999", "--out", str(tmp_path / "v"), "--model", str(tiny_model_dir)]) == 2
    assert "larger than the model's 8 heads" in capsys.readouterr().err
    vec = tmp_path / "left.safetensors"
    assert main(["extract", "--cma", str(cma_dir), "--k", "2", "--out", str(vec), "--relations", "left", "--model", str(tiny_model_dir)]) == 0
    assert main(["eval", "--model", "tiny", "--fv", str(vec), "--out", str(tmp_path / "e"), "--n", "4"]) == 2
    assert "not from this model" in capsys.readouterr().err
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    assert main(["eval", "--model", str(tiny_model_dir), "--fv", str(bad), "--out", str(tmp_path / "e2"), "--n", "4"]) == 2
    assert "not a readable mmfv function vector" in capsys.readouterr().err


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False
