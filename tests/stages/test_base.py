"""Stage hashes: what a stage's results depend on, including an outside model spec file."""

from __future__ import annotations

import pytest

from mmfv import config as C
from mmfv.stages import STAGES
from mmfv.stages.base import stage_hashes


def test_a_spec_file_and_its_content_enter_every_stage_hash(tmp_path):
    plain = C.from_dict({})
    f = tmp_path / "fam.py"
    f.write_text("SPEC = None  # version 1\n")
    with_spec = C.from_dict({"model": {"spec": str(f)}})
    h0, h1 = stage_hashes(plain, STAGES, "w"), stage_hashes(with_spec, STAGES, "w")
    assert all(h0[s] != h1[s] for s in h0)
    assert plain.hash() == C.from_dict({"model": {"spec": ""}}).hash()  # no spec: the hash of a config without the key
    f.write_text("SPEC = None  # version 2\n")
    h2 = stage_hashes(with_spec, STAGES, "w")
    assert all(h1[s] != h2[s] for s in h1)  # same path, other content: nothing is taken for finished
    f.unlink()
    with pytest.raises(FileNotFoundError, match="config key model.spec: model spec file .* does not exist"):
        stage_hashes(with_spec, STAGES, "w")
