"""What a stage is, and what it gets when it runs.

A :class:`Stage` names itself, the stages whose results it needs, its config section (a typed
settings class: the only source of its defaults), the function that runs it, and its report
sections. The runner (`mmfv run`), the stage's CLI verb and the report all work from these objects,
so a new stage is one file plus one line in :mod:`mmfv.stages`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from mmfv.execution import Execution
from mmfv.io import read_json, write_json

if TYPE_CHECKING:
    from mmfv.models.base import LMM
    from mmfv.report.html import Results

Section = Callable[["Results", Path], str]
"""A report section: (the run's results, the folder for figures) -> HTML."""


@dataclass(frozen=True)
class ReportSection:
    anchor: str
    title: str
    render: Section


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline (see the module docstring)."""

    name: str
    help: str
    run: Callable[["Context"], Any]
    needs: tuple[str, ...] = ()
    section: str | None = None  # the config section it owns or shares (e.g. means, cma, vectors share [cma])
    settings: type | None = None  # the settings class of that section (defined in the owner's file)
    reads: tuple[str, ...] = ()  # other config sections it reads
    report: tuple[ReportSection, ...] = ()
    table: Callable[[dict], list[dict]] | None = None  # results.json -> tidy rows (results.csv, Run.to_frame)
    aliases: tuple[str, ...] = ()
    uses_model: bool = True
    check: Callable[[Any, "LMM"], None] | None = None  # (config, loaded model) -> raise a one-line ValueError naming the key
    """What can only be checked once the model is loaded (layers, heads, top_k against its depth and
    heads); the runner calls it for every planned stage before any stage runs."""
    folders: Callable[[Any], tuple[str, ...]] | None = None  # config -> other run folders it reads (their content enters its hash)


class StageSkipped(Exception):
    """Raised by a stage that cannot apply to this run (e.g. composition without diagonal relations);
    the runner records why and the report says so."""


@dataclass
class Context:
    """What a running stage sees: the config, its folders, the model (loaded once, on first use),
    the data, and the execution helper (progress, logging, sharding, checkpoints)."""

    cfg: Any
    out: Path
    ex: Execution = field(default_factory=Execution)
    _lmm: Any = None
    _relations: list[str] | None = None

    @property
    def lmm(self) -> "LMM":
        if self._lmm is None:
            from mmfv.models import load_model

            m = self.cfg.model
            self._lmm = load_model(m.name, m.dtype, m.device, m.device_map, m.spec or None)
            if not self._lmm.use_protocol(self.cfg.run.protocol) and self.ex is not None:
                self.ex.info("protocol %s: %s has no such prompt text; it keeps its own template", self.cfg.run.protocol, self._lmm.model_id)
            if self.cfg.cma.head_set not in self._lmm.head_sets:
                raise ValueError(f"config key cma.head_set: {self._lmm.model_id} has no {self.cfg.cma.head_set!r} heads (it has {', '.join(self._lmm.head_sets)})")
        return self._lmm

    def dir(self, stage: str) -> Path:
        """Where ``stage`` writes (this run's folder)."""
        return self.out / stage

    def input(self, stage: str) -> Path:
        """Where ``stage``'s results are read from: this run's folder, or the one ``run.use`` names."""
        use = self.cfg.run.use.get(stage)
        return Path(use) if use else self.dir(stage)

    def results(self, stage: str) -> dict:
        path = self.input(stage) / "results.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: run the {stage} stage first (or point run.use at a folder that has it)")
        return read_json(path)

    def write(self, stage: str, results: dict) -> None:
        write_json(self.dir(stage) / "results.json", results)

    def items(self, split: str, relations: tuple[str, ...] | None = None) -> dict:
        """relation -> items of ``split`` (by default every relation the prompts may draw on)."""
        return self.cfg.data.items(self.lmm, split, relations)

    @property
    def relations(self) -> list[str]:
        """The relations vectors are built for (presets and phrases of real data resolved)."""
        if self._relations is None:
            self._relations = self.cfg.data.relation_names(self.lmm)
        return list(self._relations)

    @property
    def protocol(self) -> str:
        """How prompts are built: mmfv, or the paper's construction for this dataset (fu2025 / fu2025_gqa)."""
        return self.cfg.data.prompt_protocol(self.cfg.run.protocol)

    @property
    def seed(self) -> int:
        return self.cfg.data.seed


def folder_digest(folder: Path) -> str:
    """Content hash of a folder's files (for stage results read from another run)."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(folder).rglob("*") if p.is_file() and "checkpoints" not in p.parts):
        h.update(str(f.relative_to(folder)).encode() + b"\0")
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()[:16]


def _file_digest(path: Path) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"config key model.spec: model spec file {path} does not exist")
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def stage_hashes(cfg: Any, stages: tuple[Stage, ...], model_fingerprint: str) -> dict[str, str]:
    """Per stage, the hash of everything its results depend on: the model, the data, the run's
    scoring batch size, its own and the sections it reads, and the hashes of the stages it needs
    (or the content of the folder ``run.use`` points to). A changed input changes exactly the
    hashes of the stages downstream of it."""
    out: dict[str, str] = {}
    for st in stages:
        parts: dict[str, Any] = {"stage": st.name, "model": cfg.section_hash("model"), "weights": model_fingerprint,
                                 "data": cfg.section_hash("data"), "run": cfg.section_hash("run")}
        if cfg.model.spec:  # the spec file's content (its template, paths) shapes every result
            parts["spec"] = _file_digest(Path(cfg.model.spec).expanduser())
        for sec in (st.section, *st.reads):
            if sec:
                parts[sec] = cfg.section_hash(sec)
        for folder in (st.folders(cfg) if st.folders else ()):
            parts[f"folder:{folder}"] = folder_digest(Path(folder))
        for need in st.needs:
            use = cfg.run.use.get(need)
            parts[f"needs:{need}"] = f"use:{folder_digest(Path(use))}" if use else out[need]
        out[st.name] = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
    return out
