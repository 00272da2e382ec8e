"""Representational similarity analysis (RSA) of relations between two representations.

Each representation is one feature vector per relation (a layer's mean head activations, a function
vector, ...), of any size: two models or two layers need not share a width. Its representational
dissimilarity matrix (RDM, R × R) holds 1 − Pearson correlation or cosine distance between
relations; two representations are compared by the Spearman correlation of their RDMs' upper
triangles, with a permutation test over relation labels (the rows and columns of one RDM permuted
together; exact over all R! orders when there are no more of them than permutations asked for).
"""

from __future__ import annotations

import itertools
import math
from typing import Literal, Mapping, Sequence

import torch

Metric = Literal["pearson", "cosine"]


def rdm(x: torch.Tensor, metric: Metric = "pearson") -> torch.Tensor:
    """(R, R) dissimilarities of the rows of ``x`` (R, F): 1 − Pearson r, or 1 − cosine similarity."""
    if x.dim() != 2 or x.shape[0] < 2:
        raise ValueError(f"an RDM needs at least 2 relations as rows of a (R, F) tensor, got shape {tuple(x.shape)}")
    x = x.double()
    if metric == "pearson":
        x = x - x.mean(1, keepdim=True)
    elif metric != "cosine":
        raise ValueError(f"unknown RDM metric {metric!r}: choose pearson or cosine")
    norms = x.norm(dim=1, keepdim=True)
    if (norms == 0).any():
        raise ValueError(f"a relation's features are constant: its {metric} distance is undefined")
    u = x / norms
    return (1 - u @ u.T).clamp(min=0).fill_diagonal_(0)


def upper(m: torch.Tensor) -> torch.Tensor:
    """The strict upper triangle of a square matrix, row by row: (R(R−1)/2,)."""
    i, j = torch.triu_indices(m.shape[0], m.shape[0], 1)
    return m[i, j]


def ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n of ``x`` (n,), ties given their average rank."""
    order = torch.argsort(x, stable=True)
    r = torch.empty_like(x, dtype=torch.float64)
    r[order] = torch.arange(1, len(x) + 1, dtype=torch.float64)
    for v in torch.unique(x):  # average tied ranks
        tied = x == v
        if int(tied.sum()) > 1:
            r[tied] = r[tied].mean()
    return r


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rho of two (n,) tensors (Pearson r of their average ranks); NaN if one is constant."""
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(ra.norm() * rb.norm())
    return float(ra @ rb) / den if den > 0 else math.nan


def permutation_test(rdm_a: torch.Tensor, rdm_b: torch.Tensor, n_perm: int = 1000, seed: int = 0) -> dict:
    """Spearman rho of the two RDMs' upper triangles and its one-sided p-value under relabelling:
    ``rdm_b``'s rows and columns permuted together. Exact (all R! orders, identity included) when
    R! ≤ ``n_perm``; else ``n_perm`` seeded random orders, p = (1 + as large) / (1 + n_perm)."""
    if rdm_a.shape != rdm_b.shape or rdm_a.shape[0] < 3:
        raise ValueError(f"RDMs must be the same R × R with R ≥ 3 relations, got {tuple(rdm_a.shape)} and {tuple(rdm_b.shape)}")
    if n_perm < 1:
        raise ValueError(f"n_perm must be positive, got {n_perm}")
    R = rdm_a.shape[0]
    ua = upper(rdm_a)
    rho = spearman(ua, upper(rdm_b))
    exact = math.factorial(R) <= n_perm
    if exact:
        perms = [torch.tensor(p) for p in itertools.permutations(range(R))]
    else:
        g = torch.Generator().manual_seed(seed)
        perms = [torch.randperm(R, generator=g) for _ in range(n_perm)]
    null = [spearman(ua, upper(rdm_b[p][:, p])) for p in perms]
    ge = sum(1 for x in null if x >= rho - 1e-12)
    p = ge / len(null) if exact else (1 + ge) / (1 + len(null))
    return {"rho": round(rho, 6), "p": round(p, 6), "n_perm": len(null), "exact": exact, "seed": None if exact else seed}


def compare(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], metric: Metric = "pearson", n_perm: int = 1000,
            seed: int = 0, relations: Sequence[str] | None = None) -> dict:
    """RSA of two representations, each relation -> features (any shape, flattened): the relations
    they share (or ``relations``), both RDMs, and :func:`permutation_test`'s rho and p."""
    rels = list(relations) if relations is not None else [r for r in a if r in b]
    missing = [r for r in rels if r not in a or r not in b]
    if missing:
        raise ValueError(f"relation {missing[0]!r} is missing from one representation")
    if len(rels) < 3:
        raise ValueError(f"RSA needs at least 3 relations shared by both representations, got {len(rels)} ({', '.join(rels) or 'none'})")
    ma = rdm(torch.stack([a[r].reshape(-1) for r in rels]), metric)
    mb = rdm(torch.stack([b[r].reshape(-1) for r in rels]), metric)
    return {"relations": rels, "metric": metric, "rdm_a": _rounded(ma), "rdm_b": _rounded(mb), **permutation_test(ma, mb, n_perm, seed)}


def _rounded(m: torch.Tensor) -> list[list[float]]:
    return [[round(float(v), 6) for v in row] for row in m]
