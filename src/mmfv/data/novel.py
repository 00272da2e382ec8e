"""Novel-object items: queries whose answers are objects held out from everything vectors are built,
tuned or chosen on.

Synthetic data has its own split for this (``novel_objects`` in :mod:`mmfv.data.scenes`): every
neighbour of the query, so every answer, is one of the 8 held-out classes that no other split (and
no mmfv-tiny training scene) shows. Real data has no such split; there the novel items are the
``test`` items whose answer never occurs as an answer in the ``eval``, ``train`` or ``val`` items
of any relation — a subset of test, honestly named, and possibly empty for a relation.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from mmfv.prompts import Item

SEEN_SPLITS: tuple[str, ...] = ("eval", "train", "val")
"""The splits vectors are built (eval), tuned (train) and chosen (val) on."""


def held_out(test: Mapping[str, Sequence[Item]], seen: Sequence[Mapping[str, Sequence[Item]]]) -> dict[str, list[Item]]:
    """Per relation, the ``test`` items whose answer is no answer of any item in ``seen``."""
    answers = {it.answer for split in seen for its in split.values() for it in its}
    return {r: [it for it in its if it.answer not in answers] for r, its in test.items()}


def items(data: Any, lmm: Any, relations: tuple[str, ...], n_scenes: int) -> tuple[dict[str, list[Item]], str]:
    """(relation -> novel-object items, how they were chosen) for the run's data settings ``data``."""
    if data.dataset == "synthetic":
        from mmfv.data import synthetic

        cfg = lmm.scene_config() if hasattr(lmm, "scene_config") else None
        out = synthetic.items("novel_objects", n_scenes, tuple(relations), seed=data.seed, config=cfg)
        return out, f"the synthetic novel_objects split ({n_scenes} scenes): every answer is one of 8 held-out object classes"
    test = data.items(lmm, "test", tuple(relations))
    out = held_out(test, [data.items(lmm, s) for s in SEEN_SPLITS])
    return out, "test items whose answer is never an answer in the eval, train or val splits"
