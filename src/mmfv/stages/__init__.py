"""The pipeline's stages, in order. A stage is one module here with a ``STAGE`` object
(:class:`mmfv.stages.base.Stage`); adding one is that file plus its name in :data:`MODULES` (one
line). The runner, the CLI verbs, the config sections and the report all come from this list."""

from __future__ import annotations

from importlib import import_module

from mmfv.stages.base import Context, ReportSection, Stage, StageSkipped

MODULES: tuple[str, ...] = (
    "data",
    "icl",
    "means",
    "cma",
    "vectors",
    "evaluate",  # the eval stage
    "finetune",
    "compose",
    "retain",
    "novel",
    "baselines",
    "transfer",
    "rsa",
    "report",
)
"""The registry: the modules of this package that hold a stage (``STAGE``), in pipeline order."""

STAGES: tuple[Stage, ...] = tuple(import_module(f"{__name__}.{m}").STAGE for m in MODULES)

NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)


def register(stage: Stage, after: str | None = None) -> None:
    """Add a stage from outside the package (after ``after``, default: before the report); its
    settings class, if any, becomes a config section (``mmfv.config`` reads this list). The
    package's own stages are listed above."""
    global STAGES, NAMES
    if stage.name in NAMES:
        raise ValueError(f"a stage called {stage.name!r} exists already")
    for need in stage.needs:
        get(need)
    names = list(NAMES)
    at = names.index(after) + 1 if after else names.index("report")
    STAGES = (*STAGES[:at], stage, *STAGES[at:])
    NAMES = tuple(s.name for s in STAGES)


def unregister(name: str) -> None:
    """Remove a stage added with :func:`register`."""
    global STAGES, NAMES
    STAGES = tuple(s for s in STAGES if s.name != name)
    NAMES = tuple(s.name for s in STAGES)


def get(name: str) -> Stage:
    """The stage called ``name`` (or one of its aliases)."""
    for s in STAGES:
        if name == s.name or name in s.aliases:
            return s
    raise ValueError(f"unknown stage {name!r}; stages are {', '.join(NAMES)}")


__all__ = ["STAGES", "NAMES", "Context", "ReportSection", "Stage", "StageSkipped", "get", "register", "unregister"]
