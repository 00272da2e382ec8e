"""The stage verbs end to end on a small random model: cma -> extract (vectors) -> eval, reading
results of another folder with --use, and their one-line errors."""

from __future__ import annotations

import json

import pytest

from mmfv.cli import main

SMALL = ["--set", "data.eval_scenes=60", "--set", "data.val_scenes=40", "--set", "data.test_scenes=60", "--quiet"]
CMA = ["--n-mean", "6", "--n-cma", "3", "--shots", "2", "--top-k", "3", "--relations", "left,above"]


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cma")
    assert main(["cma", "--model", str(tiny_model_dir), "--out", str(out), *CMA, *SMALL]) == 0
    return out


def test_cma_runs_its_needs_and_writes_results(run_dir):
    res = json.loads((run_dir / "cma" / "results.json").read_text())
    assert set(res["relations"]) == {"left", "above"}
    assert len(res["relations"]["left"]["top_heads"]) == 3
    assert (run_dir / "cma" / "aie_left.png").read_bytes()[:4] == b"\x89PNG"
    assert (run_dir / "means" / ".done").exists() and not (run_dir / "icl").exists()  # only what cma needs


def test_extract_and_eval_with_results_of_another_folder(run_dir, tiny_model_dir, tmp_path):
    other = tmp_path / "other"
    use = ["--use", f"cma={run_dir / 'cma'}"]
    assert main(["extract", "--model", str(tiny_model_dir), "--out", str(other), *use, *CMA, "--top-k", "2", *SMALL]) == 0
    assert sorted(p.name for p in (other / "vectors").glob("*.safetensors")) == ["above.safetensors", "left.safetensors"]
    assert not (other / "cma").exists() and not (other / "means").exists()
    use += ["--use", f"vectors={other / 'vectors'}"]
    ev = tmp_path / "eval"
    assert main(["eval", "--model", str(tiny_model_dir), "--out", str(ev), *use, "--relations", "left,above", "--n", "6", "--set", "icl.shots=[0,1]", "--set", "icl.n=4", *SMALL]) == 0
    res = json.loads((ev / "eval" / "results.json").read_text())
    for r in ("left", "above"):
        assert set(res[r]) == {"zero_shot", "fv", "best_layer"}
        assert len(res["relations"][r]["layer_sweep_val"]) == 2
        assert list(res["relations"][r]["icl_by_shots"]) == ["0", "1"]
    assert set(res["mean"]) == {"zero_shot", "fv"}
    for png in ("layer_sweep.png", "head_count.png", "context_size.png"):
        assert (ev / "eval" / png).exists()
    assert (ev / "icl" / ".done").exists() and not (ev / "vectors").exists()


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["cma", "--relations", "up"], "unknown relation"),
        (["cma", "--top-k", "0"], "cma.top_k"),
        (["eval", "--use", "vectors=NOPE"], "holds no vectors results"),
        (["eval", "--use", "vectors"], "expected STAGE=DIR"),
        (["run", "--set", "cma.nope=1"], "unknown config key cma.nope"),
    ],
)
def test_bad_input_is_one_line(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([*argv, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1


def test_top_k_larger_than_heads_and_foreign_vectors(run_dir, tiny_model_dir, tmp_path, capsys):
    use = ["--use", f"cma={run_dir / 'cma'}"]
    assert main(["extract", "--model", str(tiny_model_dir), "--out", str(tmp_path / "v"), *use, *CMA, "--top-k", "999", *SMALL]) == 2
    assert "larger than the 8 heads" in capsys.readouterr().err
    assert main(["extract", "--model", str(tiny_model_dir), "--out", str(tmp_path / "v2"), *use, *CMA, *SMALL]) == 0
    use += ["--use", f"vectors={tmp_path / 'v2' / 'vectors'}"]
    assert main(["eval", "--model", "tiny", "--out", str(tmp_path / "e"), *use, "--relations", "left,above", "--n", "4", "--set", "icl.shots=[0]", "--set", "icl.n=4", *SMALL]) == 2
    assert "not from this model" in capsys.readouterr().err
