"""The spec registry (one file per family, discovered) and the tiny test models the specs describe
as data (mmfv.testing.hf builds them)."""

from __future__ import annotations

import dataclasses

import pytest

from mmfv.models import specs
from mmfv.testing import hf as hf_testing

FAMILIES = specs.supported()
CROSS = [s.family for s in specs.SPECS if s.cross_layers]


def test_registry_covers_every_family_and_rejects_others():
    assert {"qwen2_vl", "qwen2_5_vl", "qwen3_vl", "idefics2", "idefics3", "smolvlm", "llava", "llava_onevision", "gemma3", "internvl", "idefics", "mllama"} <= set(FAMILIES)
    assert {"idefics", "mllama"} <= set(CROSS)
    assert {"llama", "qwen2", "qwen3", "gemma3_text"} <= {s.family for s in specs.SPECS if not s.images}
    for s in specs.SPECS:
        assert specs.for_config({"model_type": s.model_types[0]}) is s
        assert specs.for_config({"model_type": "custom", "architectures": [s.model_class]}) is s
    with pytest.raises(specs.UnsupportedModel) as e:
        specs.for_config({"model_type": "bert", "architectures": ["BertModel"]})
    msg = str(e.value)
    assert "\n" not in msg and "'bert'" in msg and all(f in msg for f in FAMILIES)


def test_a_new_family_is_one_spec_file(tmp_path, monkeypatch):
    """Any module with a SPEC in the specs package is a family; two files claiming one model_type fail."""
    pkg = tmp_path / "extra_specs"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "fancy.py").write_text("import dataclasses\nfrom mmfv.models import specs\n"
                                  "SPEC = dataclasses.replace(specs.get('llava'), family='fancy', model_types=('fancy_vlm',))\n")
    (pkg / "helpers.py").write_text("X = 1\n")  # no SPEC: not a family
    monkeypatch.syspath_prepend(str(tmp_path))
    found = specs.discover("extra_specs")
    assert [s.family for s in found] == ["fancy"] and found[0].model_types == ("fancy_vlm",)
    (pkg / "twin.py").write_text("import dataclasses\nfrom mmfv.models import specs\n"
                                 "SPEC = dataclasses.replace(specs.get('llava'), family='twin', model_types=('fancy_vlm',))\n")
    with pytest.raises(RuntimeError, match="both claim 'fancy_vlm'"):
        specs.discover("extra_specs")


def test_every_spec_describes_a_tiny_test_model():
    """The contract tests build every discovered family from its ``tiny`` data: a new spec needs it."""
    for s in specs.SPECS:
        need = {"tokens", "image_processor", "processor"} if s.images else {"tokens"}
        assert s.tiny is not None and need <= set(s.tiny), s.family


def test_tiny_data_errors_are_one_line_and_name_the_spec():
    bare = dataclasses.replace(specs.get("llava"), family="bare", tiny=None)
    with pytest.raises(ValueError, match="spec bare has no tiny test model") as e:
        hf_testing.parts(bare)
    assert "\n" not in str(e.value)
    typo = dataclasses.replace(specs.get("llava"), tiny={**specs.get("llava").tiny, "token_ids": {"image_token_index": "<imag>"}})
    with pytest.raises(ValueError, match="'<imag>', which is not a token"):
        hf_testing.parts(typo)


def test_overrides_update_the_spec_data_without_changing_it():
    spec = specs.get("smolvlm")
    before = repr(spec.tiny)
    data = hf_testing._data(spec, {"processor": {"image_seq_len": 64}, "config": {"scale_factor": 4}, "tokens": ["<s>"]})
    assert data["processor"] == ("SmolVLMProcessor", {"image_seq_len": 64})
    assert data["config"]["scale_factor"] == 4 and "vision_config" in data["config"] and data["tokens"] == ["<s>"]
    assert repr(spec.tiny) == before


# --- families from outside the package: register / register_file / --spec -------------------------
@pytest.fixture
def registry(monkeypatch):
    """A clean registry of outside families for one test (none leak into the next)."""
    monkeypatch.setattr(specs, "REGISTERED", {})
    return specs


def _spec_file(tmp_path, body: str, name: str = "my_family.py"):
    f = tmp_path / name
    f.write_text(body)
    return f


MINE = "import dataclasses\nfrom mmfv.models import specs\nSPEC = dataclasses.replace(specs.get('qwen2_vl'), family='my_qwen2_vl')\n"


def _saved_qwen2_vl(folder):
    from tests.models import cases
    from tests.models.test_hf import _save

    _save(cases.model("qwen2_vl"), folder)
    return folder


def test_a_spec_file_adds_a_family_that_load_model_picks(registry, tmp_path):
    from mmfv.models import load_model

    folder = _saved_qwen2_vl(tmp_path / "model")
    assert load_model(str(folder)).spec.family == "qwen2_vl"  # before: the built-in family
    lmm = load_model(str(folder), spec=_spec_file(tmp_path, MINE))
    assert lmm.spec.family == "my_qwen2_vl" and list(registry.REGISTERED) == ["my_qwen2_vl"]
    assert registry.supported()[0] == "my_qwen2_vl" and registry.get("my_qwen2_vl") is lmm.spec
    registry.unregister("my_qwen2_vl")
    assert registry.for_config({"model_type": "qwen2_vl"}).family == "qwen2_vl"


def test_register_takes_a_spec_object_and_a_list_in_a_file(registry, tmp_path):
    from mmfv import models

    a = dataclasses.replace(specs.get("llava"), family="mine_a", model_types=("mine_a",))
    assert models.register(a) is a and specs.for_config({"model_type": "mine_a"}) is a
    both = _spec_file(tmp_path, "import dataclasses\nfrom mmfv.models import specs\nbase = specs.get('llava')\n"
                      "SPECS = [dataclasses.replace(base, family=f, model_types=(f,)) for f in ('mine_b', 'mine_c')]\n")
    assert [s.family for s in models.register_file(both)] == ["mine_b", "mine_c"]
    assert models.register(a) is a  # the same name again: replaced, not refused


def test_the_cli_spec_flag_serves_the_model_with_that_family(registry, tmp_path, monkeypatch):
    from mmfv.cli import main

    folder = _saved_qwen2_vl(tmp_path / "model")
    picked, real = [], specs.for_config
    monkeypatch.setattr(specs, "for_config", lambda c: picked.append(real(c).family) or real(c))
    out = tmp_path / "out"
    assert main(["data", "--model", str(folder), "--spec", str(_spec_file(tmp_path, MINE)), "--out", str(out), "--quiet"]) == 0
    assert picked == ["my_qwen2_vl"] and "my_qwen2_vl" in registry.REGISTERED
    assert 'spec = "' in (out / "config.toml").read_text()
    assert main(["data", "--model", str(folder), "--spec", str(tmp_path / "nope.py"), "--out", str(tmp_path / "o2"), "--quiet"]) == 2


@pytest.mark.parametrize("body,name,match", [
    (None, "missing.py", r"model spec file .*missing\.py does not exist"),
    ("X = 1\n", "none.py", r"none\.py defines no SPEC \(or SPECS\)"),
    ("SPEC = 'qwen2_vl'\n", "str.py", r"str\.py: SPEC must be mmfv\.models\.specs\.Spec, got str"),
    ("SPECS = 3\n", "int.py", r"int\.py: SPECS is a int"),
    ("import dataclasses\nfrom mmfv.models import specs\nSPEC = dataclasses.replace(specs.get('llava'), model_types=('x',))\n", "clash.py",
     r"clash\.py: model family 'llava' is built in: give your spec another family name"),
    ("import dataclasses\nfrom mmfv.models import specs\nSPEC = dataclasses.replace(specs.get('llava'), family='n', model_class='NoSuchModel')\n",
     "cls.py", r"model_class 'NoSuchModel' is not a transformers class"),
    ("x = 1\ny = undefined_name\n", "boom.py", r"boom\.py:2: NameError: name 'undefined_name' is not defined"),
    ("def f(:\n", "syntax.py", r"syntax\.py:1: SyntaxError"),
    ("SPEC = 1\n", "notpy.txt", r"is not a Python file"),
])
def test_bad_spec_files_are_one_line_errors(registry, tmp_path, body, name, match):
    f = tmp_path / name if body is None else _spec_file(tmp_path, body, name)
    with pytest.raises(specs.SpecError, match=match) as e:
        specs.register_file(f)
    assert "\n" not in str(e.value) and not registry.REGISTERED


def test_two_outside_families_cannot_claim_one_model_type(registry):
    specs.register(dataclasses.replace(specs.get("llava"), family="one", model_types=("shared",)))
    with pytest.raises(specs.SpecError, match="one and two both claim model_type 'shared'"):
        specs.register(dataclasses.replace(specs.get("llava"), family="two", model_types=("shared",)))
    with pytest.raises(specs.SpecError, match="takes a mmfv.models.specs.Spec, got dict"):
        specs.register({"family": "three"})
