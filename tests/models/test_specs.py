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
