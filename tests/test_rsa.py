"""RSA: RDMs against a loop over pairs, Spearman with ties, the permutation test (exact and seeded)."""

from __future__ import annotations

import math

import pytest
import torch

from mmfv import rsa


def test_rdm_matches_a_loop_over_pairs():
    x = torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    m = rsa.rdm(x, "pearson")
    c = rsa.rdm(x, "cosine")
    for i in range(5):
        for j in range(5):
            a, b = x[i].double(), x[j].double()
            ac, bc = a - a.mean(), b - b.mean()
            assert float(m[i, j]) == pytest.approx(0.0 if i == j else 1 - float(ac @ bc / (ac.norm() * bc.norm())), abs=1e-9)
            assert float(c[i, j]) == pytest.approx(0.0 if i == j else 1 - float(a @ b / (a.norm() * b.norm())), abs=1e-9)
    with pytest.raises(ValueError, match="constant"):
        rsa.rdm(torch.ones(3, 4))
    assert rsa.upper(torch.arange(9.0).view(3, 3)).tolist() == [1.0, 2.0, 5.0]


def test_spearman_with_ties_and_constant():
    assert rsa.ranks(torch.tensor([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]
    assert rsa.spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 20.0, 300.0])) == pytest.approx(1.0)
    assert rsa.spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 2.0, 1.0])) == pytest.approx(-1.0)
    # hand-computed: ranks (1, 2.5, 2.5, 4) vs (1, 2, 3, 4)
    a, b = torch.tensor([1.0, 2.0, 2.0, 4.0]), torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert rsa.spearman(a, b) == pytest.approx(4.5 / math.sqrt(4.5 * 5.0))
    assert math.isnan(rsa.spearman(torch.ones(3), b[:3]))


def test_permutation_test_exact_and_seeded():
    g = torch.Generator().manual_seed(1)
    ma = rsa.rdm(torch.randn(4, 6, generator=g))
    exact = rsa.permutation_test(ma, ma, 1000)
    assert exact["exact"] and exact["n_perm"] == 24 and exact["rho"] == pytest.approx(1.0)
    assert exact["p"] == pytest.approx(1 / 24, abs=1e-6)  # only the identity (and orders giving the same triangle) reach rho 1
    x7 = torch.randn(7, 5, generator=g)
    m7, other = rsa.rdm(x7), rsa.rdm(torch.randn(7, 5, generator=g))
    t = rsa.permutation_test(m7, m7, 1000, seed=3)
    assert not t["exact"] and t["n_perm"] == 1000 and t["p"] < 0.01
    u = rsa.permutation_test(m7, other, 1000, seed=3)
    assert u == rsa.permutation_test(m7, other, 1000, seed=3) and u["p"] > 0.01
    with pytest.raises(ValueError, match="R ≥ 3"):
        rsa.permutation_test(ma[:2, :2], ma[:2, :2])


def test_compare_shares_relations_and_allows_other_widths():
    g = torch.Generator().manual_seed(2)
    a = {r: torch.randn(10, generator=g) for r in ("above", "below", "left", "right")}
    b = {r: 3 * torch.cat([v, v]) + 1 for r, v in a.items()} | {"extra": torch.randn(20, generator=g)}
    res = rsa.compare(a, b)
    assert res["relations"] == ["above", "below", "left", "right"] and res["rho"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 3 relations"):
        rsa.compare({"above": a["above"]}, b)
