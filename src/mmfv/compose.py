"""Composition and analogy with relation vectors, for relations never used to build a vector.

Composition: FV_{above_left} ≈ a·FV_above + b·FV_left (relations.decompose gives the parts).
Analogy A : B :: C : D, solved as FV_B − FV_A + FV_C, where D is defined by grid offsets:
offset(D) = offset(B) − offset(A) + offset(C). An analogy item is any (A, B, C) of spatial relations
with A ≠ B, A ≠ C (not trivial) whose D is a spatial relation; it is evaluated on zero-shot prompts
of relation D. Vectors of diagonal relations used inside an analogy are themselves compositions.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Mapping, Sequence

import torch

from mmfv import relations as R
from mmfv.vectors import FunctionVector

if TYPE_CHECKING:
    from mmfv.injection import Stems
    from mmfv.models.base import LMM
    from mmfv.prompts import Prompt


def composed(fvs: Mapping[str, FunctionVector], relation: str, a: float = 1.0, b: float = 1.0) -> FunctionVector:
    """a·FV_vertical + b·FV_horizontal for a diagonal ``relation`` (raises for any other)."""
    v, h = R.decompose(relation)
    missing = [r for r in (v, h) if r not in fvs]
    if missing:
        raise ValueError(f"composing {relation} needs vectors for {v} and {h}; missing {', '.join(missing)}")
    return a * fvs[v] + b * fvs[h]


def best_pair(scores: Mapping[tuple[float, float], float]) -> tuple[float, float]:
    """The (a, b) with the highest score; ties go to the pair nearest to (1, 1) (the plain sum)."""
    return max(scores, key=lambda ab: (scores[ab], -abs(ab[0] - 1) - abs(ab[1] - 1)))


@torch.no_grad()
def source_weights(lmm: "LMM", source: "Prompt", fvs: Mapping[str, FunctionVector], relation: str, layer: int, grid: Sequence[float],
                   stems: "Stems | None" = None) -> tuple[tuple[float, float], dict[str, float]]:
    """Composition weights from the model's own probabilities on ONE source example of the composite
    ``relation`` (a one-shot prompt: one demonstration of the relation, then a query; never a test item).

    For every (a, b) of ``grid`` x ``grid`` the model reads ``source`` with a·FV_v + b·FV_h added at
    ``layer``, last position; the weights are the pair under which it gives the source's answer the
    highest probability (ties: the pair nearest to (1, 1)). Returns ((a, b), {"a,b": probability}).
    One example instead of the val grid's hundreds: what a user with one labelled example can do.
    ``stems``: cached injection; None: the reference path (a hooked full forward per pair)."""
    from mmfv import evaluate

    if stems is not None:  # cached injection: the source's prefix and residuals computed once
        stem = stems.get([source])
        answer = int(stem.batch.answer_ids[0])
        logits_of = lambda vec: stem.logits(lmm, layer, vec)  # noqa: E731 - (1, V)
    else:  # the reference path: a full forward with the vector hooked in
        batch = lmm.encode([source])
        answer = int(batch.answer_ids[0])

        def logits_of(vec):
            with evaluate.with_vector(lmm, vec, layer)(1):
                return lmm.last_logits(batch)  # (1, V)
    probs = {}
    for a, b in itertools.product(grid, grid):
        probs[(a, b)] = float(logits_of(composed(fvs, relation, a, b).vector).float().softmax(-1)[0, answer])
    return best_pair(probs), {f"{a:g},{b:g}": round(p, 5) for (a, b), p in probs.items()}


def vector_for(fvs: Mapping[str, FunctionVector], relation: str) -> FunctionVector:
    """An extracted vector, or for a diagonal relation the a = b = 1 composition."""
    if relation in fvs:
        return fvs[relation]
    return composed(fvs, relation)


def analogy_items(relations: Sequence[str] = R.SPATIAL, answers: Sequence[str] = R.SPATIAL) -> list[tuple[str, str, str, str]]:
    """Every non-trivial (A, B, C, D) with offset(D) = offset(B) − offset(A) + offset(C), D in ``answers``."""
    out = []
    for a, b, c in itertools.product(relations, repeat=3):
        if a == b or a == c:
            continue
        (ra, ca), (rb, cb), (rc, cc) = R.offset(a), R.offset(b), R.offset(c)
        d = R.from_offset(rb - ra + rc, cb - ca + cc)
        if d is not None and d in answers and d not in (b, c):
            out.append((a, b, c, d))
    return out


def analogy_vector(fvs: Mapping[str, FunctionVector], a: str, b: str, c: str) -> FunctionVector:
    """FV_B − FV_A + FV_C."""
    return vector_for(fvs, b) - vector_for(fvs, a) + vector_for(fvs, c)


ANSWER_KINDS = ("diagonal (correct)", "vertical neighbour", "horizontal neighbour", "query itself", "other neighbour", "elsewhere")


def answer_kinds(relation: str, prompts: Sequence, predicted: Sequence[int], neighbours: Mapping[tuple[str, str], Mapping[str, str]],
                 token_of) -> dict[str, float]:
    """What a composed vector makes the model answer, as shares of ``prompts`` (a diagnostic of *how*
    composition fails): the diagonal answer, the query's vertical or horizontal neighbour (one part
    of the sum wins), the query itself, another neighbour, or something else.

    ``neighbours[(image_id, query)]`` maps each spatial relation to its answer object in that scene;
    ``token_of(name)`` gives an object name's first answer token (comparisons are by first token, in
    the order of ANSWER_KINDS)."""
    v, h = R.decompose(relation)
    counts = dict.fromkeys(ANSWER_KINDS, 0)
    for p, t in zip(prompts, predicted):
        it = p.items[-1]
        nb = neighbours.get((it.image_id, it.query), {})
        firsts = {r: token_of(a) for r, a in nb.items()}
        if t == token_of(it.answer):
            kind = "diagonal (correct)"
        elif firsts.get(v) == t:
            kind = "vertical neighbour"
        elif firsts.get(h) == t:
            kind = "horizontal neighbour"
        elif t == token_of(it.query):
            kind = "query itself"
        elif t in firsts.values():
            kind = "other neighbour"
        else:
            kind = "elsewhere"
        counts[kind] += 1
    n = max(1, len(prompts))
    return {k: round(c / n, 4) for k, c in counts.items()}
