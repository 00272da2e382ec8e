"""Retained ability: does injecting a vector break what the model could already do?

For a vector (D,) added at its layer, the accuracy of named prompt sets (other relations' zero-shot
and k-shot ICL prompts, clean k-shot ICL of the vector's own relation) with and without it. The
sets are built by the caller (any relations, any data); this module only scores and summarises.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from mmfv import evaluate
from mmfv import prompts as P
from mmfv.execution import LOCAL, Execution
from mmfv.injection import Stems
from mmfv.models.base import LMM
from mmfv.prompts import Item, Prompt


@dataclass(frozen=True)
class Injection:
    """One vector to inject: ``kind`` (extracted, tuned, composed) of ``relation``, at ``layer``."""

    relation: str
    kind: str
    vector: torch.Tensor  # (D,)
    layer: int

    @property
    def name(self) -> str:
        return f"{self.relation} ({self.kind})"


Key = tuple[str, str]
"""A prompt set's name: (relation, "zero-shot" | "icl")."""


def prompt_sets(test: Mapping[str, Sequence[Item]], relations: Sequence[str], shots: int, n: int, seed: int,
                protocol: str = "mmfv", kinds: Sequence[str] = ("zero-shot", "icl")) -> dict[Key, list[Prompt]]:
    """(relation, kind) -> ``n`` test prompts: zero-shot, or clean ICL with ``shots`` demonstrations."""
    out: dict[Key, list[Prompt]] = {}
    for r in relations:
        for kind in kinds:
            out[(r, kind)] = P.build("zero-shot", test[r], test, 0, n, seed) if kind == "zero-shot" else \
                P.build("clean", test[r], test, shots, n, seed, protocol)
    return out


def scores(lmm: LMM, sets: Mapping[Key, Sequence[Prompt]], injection: Injection | None = None, batch_size: int = 64,
           ex: Execution = LOCAL, stems: Stems | None = None) -> dict[Key, float]:
    """Accuracy of each prompt set, with ``injection`` added at its layer (last position) or without.
    ``stems``: cached injection, each set prepared once for every vector (see :mod:`mmfv.injection`)."""
    out = {}
    for key, prompts in sets.items():
        if injection is None:
            out[key] = evaluate.accuracy(lmm, prompts, batch_size=batch_size, ex=ex)["acc"]
        else:
            out[key] = evaluate.accuracy(lmm, prompts, injection.vector, injection.layer, batch_size, ex, stems)["acc"]
    return out


def targets(injection: Injection, relations: Sequence[str]) -> list[Key]:
    """The sets an injection is scored on: every other relation's zero-shot and ICL, and its own ICL."""
    return [(r, k) for r in relations if r != injection.relation for k in ("zero-shot", "icl")] + [(injection.relation, "icl")]


def summary(rows: Sequence[Mapping], shots: int, top: int = 3, threshold: float = 0.05) -> list[str]:
    """Plain-words sentences for the largest drops among ``rows`` (each: vector, kind, layer, target,
    prompts, base, with), e.g. "injecting above's extracted vector (layer 3) drops left's 4-shot ICL
    from 0.97 to 0.41"; one sentence saying so when no drop exceeds ``threshold``."""
    what = lambda r: f"{r['target']}'s {'zero-shot accuracy' if r['prompts'] == 'zero-shot' else f'{shots}-shot ICL'}"  # noqa: E731
    drops = sorted((r for r in rows if r["base"] - r["with"] > threshold), key=lambda r: (r["with"] - r["base"], r["vector"], r["target"]))
    if not drops:
        return [f"No injected vector lowers any accuracy by more than {threshold:.2f}."]
    out = [f"Injecting {r['vector']}'s {r['kind']} vector (layer {r['layer']}) drops {what(r)} from {r['base']:.2f} to {r['with']:.2f}."
           for r in drops[:top]]
    own = [r for r in rows if r["target"] == r["vector"]]
    if own:
        worst = min(own, key=lambda r: r["with"] - r["base"])
        out.append(f"On its own relation's {shots}-shot ICL the largest change is {worst['with'] - worst['base']:+.2f} "
                   f"({worst['vector']}, {worst['kind']}: {worst['base']:.2f} → {worst['with']:.2f}).")
    out.append(f"{len(drops)} of {len(rows)} (vector, prompt set) pairs lose more than {threshold:.2f}.")
    return out
