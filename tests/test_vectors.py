"""Function vectors: the W_O formula, arithmetic with provenance, safetensors round trip, errors."""

from __future__ import annotations

import pytest
import torch

from mmfv import vectors as V
from mmfv.testing import random_tiny


@pytest.fixture(scope="module")
def lmm():
    return random_tiny(seed=2)


@pytest.fixture(scope="module")
def means(lmm):
    torch.manual_seed(0)
    return torch.randn(lmm.n_layers, lmm.n_heads, lmm.head_dim)


def test_build_is_sum_of_wo_slices(lmm, means):
    heads = [(0, 1), (1, 3)]
    fv = V.build(lmm, means, heads, "left")
    d = lmm.head_dim
    expect = sum(lmm.o_proj(l).weight[:, h * d : (h + 1) * d] @ means[l, h] for l, h in heads)
    assert torch.allclose(fv.vector, expect, atol=1e-6)
    assert fv.heads == ((0, 1), (1, 3)) and fv.k == 2 and fv.hidden_size == lmm.hidden_size


def test_equals_o_proj_of_patched_input(lmm, means):
    """The FV is exactly what o_proj writes when only those heads carry their means (bias-free)."""
    x = torch.zeros(1, lmm.n_heads * lmm.head_dim)
    x[0, 2 * lmm.head_dim : 3 * lmm.head_dim] = means[1, 2]
    fv = V.build(lmm, means, [(1, 2)], "above")
    assert torch.allclose(lmm.o_proj(1)(x)[0], fv.vector, atol=1e-6)


def test_arithmetic_keeps_provenance(lmm, means):
    a = V.build(lmm, means, [(0, 0)], "above")
    b = V.build(lmm, means, [(1, 1)], "left")
    c = a + b
    assert torch.allclose(c.vector, a.vector + b.vector)
    assert c.relation == "(above + left)" and set(c.heads) == {(0, 0), (1, 1)}
    assert c.extra["op"] == "+" and [o["relation"] for o in c.extra["operands"]] == ["above", "left"]
    d = (b - a) * 0.5
    assert torch.allclose(d.vector, 0.5 * (b.vector - a.vector))
    assert d.relation == "0.5*(left - above)" and d.extra["operands"][0]["extra"]["op"] == "-"
    assert (2 * a).relation == "2*above"
    other = V.FunctionVector(a.vector, "x", "other", "deadbeef", a.n_layers, a.hidden_size)
    with pytest.raises(V.VectorError, match="different models"):
        a + other


def test_save_load_round_trip(lmm, means, tmp_path):
    fv = V.build(lmm, means, [(0, 3), (1, 0)], "right", extra={"n_mean": 7}) + V.build(lmm, means, [(0, 1)], "above")
    path = fv.save(tmp_path / "fv.safetensors")
    back = V.FunctionVector.load(path, lmm)
    assert torch.equal(back.vector, fv.vector)
    assert back.provenance == fv.provenance


def test_load_into_another_model_and_corrupt_files(lmm, means, tmp_path):
    path = V.build(lmm, means, [(0, 0)], "left").save(tmp_path / "fv.safetensors")
    other = random_tiny(seed=3, hidden=48, heads=4)
    with pytest.raises(V.VectorError, match="not from this model"):
        V.FunctionVector.load(path, other)
    retrained = random_tiny(seed=5)  # the same architecture and config, other weights
    assert retrained.module.config.to_dict() == lmm.module.config.to_dict()
    with pytest.raises(V.VectorError, match="not from this model"):
        V.FunctionVector.load(path, retrained)
    assert V.FunctionVector.load(path, random_tiny(seed=2)).relation == "left"  # equal weights: fine
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(path.read_bytes()[:40])
    with pytest.raises(V.VectorError, match="not a readable mmfv function vector"):
        V.FunctionVector.load(bad)
    with pytest.raises(FileNotFoundError):
        V.FunctionVector.load(tmp_path / "missing.safetensors")


def test_head_out_of_range(lmm, means):
    with pytest.raises(V.VectorError, match="out of range"):
        V.build(lmm, means, [(lmm.n_layers, 0)], "left")
