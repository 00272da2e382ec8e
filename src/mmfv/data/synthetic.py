"""Relation items from synthetic scenes, per split, in the scene style a model expects."""

from __future__ import annotations

from functools import lru_cache

from mmfv import prompts as P
from mmfv import relations as R
from mmfv.data import scenes as S


@lru_cache(maxsize=16)
def _split(split: str, n: int, seed: int, config: S.SceneConfig) -> tuple[S.Scene, ...]:
    return tuple(S.generate_split(split, n, seed=seed, config=config))


def items(split: str, n_scenes: int, relations: tuple[str, ...], seed: int = 0, config: S.SceneConfig | None = None) -> dict[str, list[P.Item]]:
    """relation -> items of ``split`` (``n_scenes`` scenes; a relation keeps the scenes that have it)."""
    R.validate(relations)
    scenes = _split(split, n_scenes, seed, config or S.SceneConfig())
    return {r: P.items_from_scenes(scenes, r) for r in relations}
