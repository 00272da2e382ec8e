"""Typed settings: the base of every config section, and the sections every stage shares.

Each stage owns one section (its settings class lives in the stage's own file and is the only
source of its defaults); the sections here are the ones every stage reads: which model, which data,
and how the run executes. :mod:`mmfv.config` assembles them into the run's ``Config``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, field_validator, model_validator

from mmfv import relations as R


class Section(BaseModel):
    """A config section: unknown keys and wrongly typed values are errors (no silent coercion);
    frozen, so a settings object cannot drift from what was hashed."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def fail(key: str, text: str) -> ValueError:
    """A cross-field check's error, naming the key (``mmfv.config`` prefixes the section)."""
    return ValueError(f"@{key}: {text}")


class ModelSettings(Section):
    name: str = Field("tiny", description="'tiny' (the shipped mmfv-tiny), an mmfv-tiny folder, openflamingo:<folder>, or an HF hub id / folder")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="HF models: weights dtype (auto: the checkpoint's)")
    device: str = Field("", description="HF / OpenFlamingo models: e.g. cuda (empty: the CPU)")
    device_map: str = Field("", description="HF models too big for one GPU: e.g. auto (needs accelerate)")

    @model_validator(mode="after")
    def _check(self) -> "ModelSettings":
        if not self.name:
            raise fail("name", "missing; use 'tiny' for the embedded model")
        if self.device and self.device_map:
            raise fail("device_map", "set model.device or model.device_map, not both")
        return self


SPLITS = ("eval", "train", "val", "test")


class DataSettings(Section):
    """Where the relation items come from and how many; ``seed`` fixes scenes and prompts."""

    dataset: Literal["synthetic"] = Field("synthetic", description="where items come from")
    seed: int = Field(0, description="seed of scenes, splits and prompts")
    eval_scenes: PositiveInt = Field(1000, description="synthetic scenes of the eval split (means, CMA)")
    train_scenes: PositiveInt = Field(1500, description="synthetic scenes of the train split (fine-tuning)")
    val_scenes: PositiveInt = Field(600, description="synthetic scenes of the val split (every choice: layers, epochs, weights)")
    test_scenes: PositiveInt = Field(1000, description="synthetic scenes of the test split (every reported number)")
    relations: list[str] = Field(default_factory=lambda: list(R.CARDINAL), description="relations to build vectors for")

    @field_validator("relations")
    @classmethod
    def _relations(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("no relations: name at least one")
        return R.validate(v, R.CARDINAL)

    def scenes(self, split: str) -> int:
        if split not in SPLITS:
            raise ValueError(f"split {split!r} has no size in the data settings: use one of {', '.join(SPLITS)}")
        return getattr(self, f"{split}_scenes")

    def pool_relations(self) -> tuple[str, ...]:
        """Relations whose items are loaded: corrupted prompts draw demonstrations from every
        cardinal relation, even when vectors are built for fewer."""
        rels = tuple(self.relations)
        return R.CARDINAL if set(rels) <= set(R.CARDINAL) else rels

    def items(self, lmm: Any, split: str, relations: tuple[str, ...] | None = None) -> dict:
        """relation -> items of ``split`` in the scene style ``lmm`` expects."""
        from mmfv.data import synthetic

        cfg = lmm.scene_config() if hasattr(lmm, "scene_config") else None
        return synthetic.items(split, self.scenes(split), tuple(relations or self.pool_relations()), seed=self.seed, config=cfg)


class RunSettings(Section):
    """How a run executes; ``out`` and ``threads`` do not change results (not hashed)."""

    out: str = Field("runs/default", description="results folder")
    batch_size: PositiveInt = Field(64, description="prompts per forward pass when scoring")
    threads: NonNegativeInt = Field(0, description="CPU threads (0: torch's default)")
    use: dict[str, str] = Field(default_factory=dict, description="stage -> folder: read that stage's results from another run instead of computing them")
