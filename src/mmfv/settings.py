"""Typed settings: the base of every config section, and the sections every stage shares.

Each stage owns one section (its settings class lives in the stage's own file and is the only
source of its defaults); the sections here are the ones every stage reads: which model, which data,
and how the run executes. :mod:`mmfv.config` assembles them into the run's ``Config``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mmfv import relations as R


class Section(BaseModel):
    """A config section: unknown keys and wrongly typed values are errors (no silent coercion);
    frozen, so a settings object cannot drift from what was hashed."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


MAX_COUNT = 10**7
"""Upper bound of every count in a config (prompts, scenes, heads, epochs, sizes, batch sizes):
more is a typo, and would hang the run instead of failing."""
MAX_SHOTS = 1000
"""Upper bound of demonstrations per prompt: no model reads a longer context."""

Count = Annotated[int, Field(gt=0, le=MAX_COUNT)]
"""A positive count (prompts, scenes, heads, epochs, sizes, batch sizes)."""
Index = Annotated[int, Field(ge=0, le=MAX_COUNT)]
"""A layer number (checked against the model's depth once it is loaded)."""
Shots = Annotated[int, Field(ge=0, le=MAX_SHOTS)]
"""Demonstrations per prompt, 0 (zero-shot) allowed."""
Demos = Annotated[int, Field(gt=0, le=MAX_SHOTS)]
"""Demonstrations per prompt, at least one."""
Rate = Annotated[float, Field(gt=0, allow_inf_nan=False)]
"""A positive, finite number (learning rates, weights)."""
Seed = Annotated[int, Field(ge=-(2**63), lt=2**63)]
"""A seed torch's generators accept."""


def fail(key: str, text: str) -> ValueError:
    """A cross-field check's error, naming the key (``mmfv.config`` prefixes the section)."""
    return ValueError(f"@{key}: {text}")


class ModelSettings(Section):
    name: str = Field("tiny", description="'tiny' (the shipped mmfv-tiny), an mmfv-tiny folder, openflamingo:<folder>, or an HF hub id / folder")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="HF models: weights dtype (auto: the checkpoint's)")
    device: str = Field("", description="HF / OpenFlamingo models: e.g. cuda (empty: the CPU)")
    device_map: str = Field("", description="HF models too big for one GPU: e.g. auto (needs accelerate)")
    spec: str = Field("", description="a Python file defining SPEC (a mmfv.models.specs.Spec): adds that model family; its code runs, so use files you trust")

    @model_validator(mode="after")
    def _check(self) -> "ModelSettings":
        if not self.name:
            raise fail("name", "missing; use 'tiny' for the embedded model")
        if self.device and self.device_map:
            raise fail("device_map", "set model.device or model.device_map, not both")
        return self


SPLITS = ("eval", "train", "val", "test")
DATASETS = ("synthetic", "gqa", "vsr", "tasks")


class DataSettings(Section):
    """Where the relation items come from and how many; ``seed`` fixes scenes, splits and prompts.

    ``synthetic``: scenes drawn in the model's style (``*_scenes`` per split). ``gqa``: GQA scene
    graphs or the paper's processed JSON (``files``, ``gqa_format``) with images in ``image_dir``.
    ``vsr``: VSR JSONL files. ``tasks``: the user's own JSONL (query, answer, relation, optional
    image, candidates) or Todd et al.'s JSON task files (``.json``). Real data is split by image
    (by query for text-only items) into eval/train/val/test, leak-free."""

    dataset: Literal["synthetic", "gqa", "vsr", "tasks"] = Field("synthetic", description="where items come from: synthetic, gqa, vsr or tasks")
    seed: Seed = Field(0, description="seed of scenes, splits and prompts")
    eval_scenes: Count = Field(1000, description="synthetic scenes of the eval split (means, CMA)")
    train_scenes: Count = Field(1500, description="synthetic scenes of the train split (fine-tuning)")
    val_scenes: Count = Field(600, description="synthetic scenes of the val split (every choice: layers, epochs, weights)")
    test_scenes: Count = Field(1000, description="synthetic scenes of the test split (every reported number)")
    relations: list[str] | str = Field(default_factory=lambda: list(R.CARDINAL),
                                       description="relations to build vectors for; gqa: also a preset (cardinal, spatial, agentic, fu2025_spatial); tasks: [] = every relation in the files")
    files: list[str] = Field(default_factory=list, description="gqa: scene-graph or processed JSON files; vsr: JSONL files; tasks: JSONL (or Todd et al.'s .json) files")
    image_dir: str = Field("", description="gqa / vsr / tasks: folder of the images the files name")
    gqa_format: Literal["scene_graphs", "fu2025"] = Field("scene_graphs", description="gqa files: GQA's *_sceneGraphs.json or the paper's processed subsets")
    gqa_filters: Literal["mmfv", "fu2025"] = Field("mmfv", description="gqa object/image filters: ours or the paper's (area 0.05-0.5, blacklist, 3-30 objects)")
    direction: Literal["mmfv", "fu2025"] = Field("mmfv", description="gqa question direction: mmfv (Q = object, A = subject) or the paper's (Q = subject, A = object)")
    vsr_reference_frames: list[int] = Field(default_factory=list, description="vsr: keep only these reference_frame codes (empty: all)")
    vsr_vertical: Literal["merge", "separate"] = Field("merge", description="vsr: under/beneath/on top of as below/above (merge) or as their own relations")

    @model_validator(mode="after")
    def _check(self) -> "DataSettings":
        rels = self.relations
        if self.dataset == "synthetic":
            if isinstance(rels, str) or not rels:
                raise fail("relations", "name at least one relation (a list): synthetic scenes have above, below, left, right")
            try:
                R.validate(rels, R.CARDINAL)
            except ValueError as e:
                raise fail("relations", str(e)) from None
            if self.files or self.image_dir:
                raise fail("files", "synthetic scenes are drawn, not read: remove data.files / data.image_dir, or set data.dataset")
            return self
        if isinstance(rels, str):
            if self.dataset != "gqa":
                raise fail("relations", f"a preset name ({rels!r}) is for gqa; list the relation names")
            from mmfv.data.gqa import RELATION_PRESETS

            if rels not in RELATION_PRESETS:
                raise fail("relations", f"unknown preset {rels!r}: choose one of {', '.join(RELATION_PRESETS)}")
        elif not rels and self.dataset != "tasks":
            raise fail("relations", f"name at least one relation for {self.dataset}")
        if not self.files:
            raise fail("files", f"dataset {self.dataset!r} needs its data files: set data.files")
        if self.dataset in ("gqa", "vsr") and not self.image_dir:
            raise fail("image_dir", f"dataset {self.dataset!r} needs the folder of its images: set data.image_dir")
        return self

    def scenes(self, split: str) -> int:
        if split not in SPLITS:
            raise ValueError(f"split {split!r} has no size in the data settings: use one of {', '.join(SPLITS)}")
        return getattr(self, f"{split}_scenes")

    def pool_relations(self) -> tuple[str, ...] | None:
        """Relations whose items are loaded: corrupted prompts draw demonstrations from every
        cardinal relation, even when vectors are built for fewer (synthetic); real data: the asked ones."""
        if self.dataset != "synthetic":
            return None
        rels = tuple(self.relations)
        return R.CARDINAL if set(rels) <= set(R.CARDINAL) else rels

    def prompt_protocol(self, protocol: str) -> str:
        """How prompts are built under a run protocol: the paper's synthetic or GQA construction."""
        if protocol == "mmfv":
            return "mmfv"
        return "fu2025_gqa" if self.dataset == "gqa" else "fu2025"

    def items(self, lmm: Any, split: str, relations: tuple[str, ...] | None = None, report: dict | None = None) -> dict:
        """relation -> items of ``split`` (in the scene style ``lmm`` expects, for synthetic data)."""
        if self.dataset == "synthetic":
            from mmfv.data import synthetic

            cfg = lmm.scene_config() if hasattr(lmm, "scene_config") else None
            return synthetic.items(split, self.scenes(split), tuple(relations or self.pool_relations()), seed=self.seed, config=cfg)
        rels: Any = relations if relations is not None else (self.relations or None)
        common = {"seed": self.seed, "report": report}
        if self.dataset == "gqa":
            from mmfv.data import gqa

            src = {"fu_json" if self.gqa_format == "fu2025" else "scene_graphs": self.files}
            filters = None if self.gqa_format == "fu2025" and self.gqa_filters == "mmfv" else self.gqa_filters
            return gqa.items(split, rels, image_dir=self.image_dir, filters=filters, direction=self.direction, **src, **common)
        if self.dataset == "vsr":
            from mmfv.data import vsr

            frames = self.vsr_reference_frames or None
            return vsr.items(split, tuple(rels or R.CARDINAL), jsonl=self.files, image_dir=self.image_dir, reference_frames=frames,
                             vertical=self.vsr_vertical, **common)
        from mmfv.data import tasks

        jsonl = [f for f in self.files if not f.endswith(".json")]
        todd = [f for f in self.files if f.endswith(".json")]
        if jsonl and todd:
            raise ValueError("config key data.files: mix of task JSONL and Todd .json files; convert one kind or run them apart")
        return tasks.items(split, rels, jsonl=jsonl or None, todd=todd or None, image_dir=self.image_dir or None, **common)

    def relation_names(self, lmm: Any) -> list[str]:
        """The relations vectors are built for, as item relation names (presets and phrases resolved)."""
        if self.dataset == "synthetic":
            return list(self.relations)
        return list(self.items(lmm, "eval"))


class RunSettings(Section):
    """How a run executes; ``out`` and ``threads`` do not change results (not hashed)."""

    out: str = Field("runs/default", description="results folder")
    batch_size: Count = Field(64, description="prompts per forward pass when scoring")
    threads: Annotated[int, Field(ge=0, le=4096)] = Field(0, description="CPU threads (0: torch's default)")
    use: dict[str, str] = Field(default_factory=dict, description="stage -> folder: read that stage's results from another run instead of computing them")
    protocol: Literal["mmfv", "fu2025"] = Field("mmfv", description="mmfv (ours) or fu2025: the paper's released protocol (docs/protocols.md)")
