"""The run configuration (TOML): one schema for `mmfv run` and the defaults of every CLI verb.

Unknown keys and wrongly typed values are errors that name the key. `mmfv config show` prints the
built-in default, which is what `mmfv run` uses with no config file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmfv import relations as R


class ConfigError(ValueError):
    """A config file is wrong; the message names the key."""


@dataclass(frozen=True)
class ModelSection:
    name: str = "tiny"  # "tiny", an mmfv-tiny folder, or an HF hub id / folder
    dtype: str = "auto"  # HF models: auto (the checkpoint's), float32, bfloat16, float16
    device: str = ""  # HF / OpenFlamingo models: e.g. "cuda" (empty: where from_pretrained puts it, the CPU)
    device_map: str = ""  # HF models too big for one GPU: "auto" (needs accelerate)


@dataclass(frozen=True)
class DataSection:
    dataset: str = "synthetic"
    seed: int = 0
    eval_scenes: int = 1000
    train_scenes: int = 1500
    val_scenes: int = 600
    test_scenes: int = 1000
    relations: list[str] = field(default_factory=lambda: list(R.CARDINAL))


@dataclass(frozen=True)
class ICLSection:
    shots: list[int] = field(default_factory=lambda: [0, 1, 2, 4, 8])
    n: int = 400


@dataclass(frozen=True)
class CMASection:
    n_mean: int = 100
    n_cma: int = 25
    shots: int = 5
    engine: str = "fast"
    top_k: int = 10
    only_correct: bool = False
    batch_size: int = 8
    head_set: str = "self"  # "self", or "cross" for cross-attention (Flamingo-style) models


@dataclass(frozen=True)
class EvalSection:
    n: int = 200
    head_counts: list[int] = field(default_factory=lambda: list(range(1, 21)))


@dataclass(frozen=True)
class FinetuneSection:
    sizes: list[int] = field(default_factory=lambda: [25, 50, 100, 200, 400])
    headline_size: int = 200
    epochs: int = 20
    lr: float = 1e-2
    schedule: str = "cosine"
    search_layers: bool = False  # tune at each candidate layer (headline size), keep the best on val (else: the FV's layer)
    layers: list[int] = field(default_factory=list)  # candidate layers; empty: every layer
    batch_size: int = 16
    shots: list[int] = field(default_factory=lambda: list(range(1, 9)))
    n: int = 200


@dataclass(frozen=True)
class ComposeSection:
    grid: list[float] = field(default_factory=lambda: [0.5, 1.0, 1.5, 2.0])
    shots: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    n: int = 200


@dataclass(frozen=True)
class RunSection:
    out: str = "runs/default"
    batch_size: int = 64
    threads: int = 0  # 0: torch's default


@dataclass(frozen=True)
class Config:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    icl: ICLSection = field(default_factory=ICLSection)
    cma: CMASection = field(default_factory=CMASection)
    eval: EvalSection = field(default_factory=EvalSection)
    finetune: FinetuneSection = field(default_factory=FinetuneSection)
    compose: ComposeSection = field(default_factory=ComposeSection)
    run: RunSection = field(default_factory=RunSection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hash(self, exclude_out: bool = True) -> str:
        """Hash of everything that changes results (the output folder does not)."""
        d = self.to_dict()
        if exclude_out:
            d["run"] = {k: v for k, v in d["run"].items() if k not in ("out", "threads")}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def to_toml(self) -> str:
        lines = ["# mmfv run configuration", ""]
        for sec in dataclasses.fields(self):
            lines.append(f"[{sec.name}]")
            for k, v in dataclasses.asdict(getattr(self, sec.name)).items():
                lines.append(f"{k} = {_toml_value(v)}")
            lines.append("")
        return "\n".join(lines)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _check(key: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"config key {key}: expected a list of {inner.__name__}, got {type(value).__name__}")
        return [_check(f"{key}[{i}]", x, inner) for i, x in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, bool) or not isinstance(value, tp):
        raise ConfigError(f"config key {key}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def from_dict(d: dict[str, Any]) -> Config:
    """Build a Config from nested dicts; unknown sections/keys and wrong types raise ConfigError."""
    sections = {f.name: f for f in dataclasses.fields(Config)}
    kwargs = {}
    for name, body in d.items():
        if name not in sections:
            raise ConfigError(f"unknown config section [{name}]: known sections are {', '.join(sections)}")
        if not isinstance(body, dict):
            raise ConfigError(f"config key {name}: expected a [{name}] table")
        cls = sections[name].default_factory  # the section's dataclass
        hints = typing.get_type_hints(cls)
        vals = {}
        for k, v in body.items():
            if k not in hints:
                raise ConfigError(f"unknown config key {name}.{k}: [{name}] takes {', '.join(hints)}")
            vals[k] = _check(f"{name}.{k}", v, hints[k])
        kwargs[name] = cls(**vals)
    cfg = Config(**kwargs)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Value checks beyond types, each naming its key."""
    try:
        R.validate(cfg.data.relations, R.CARDINAL)
    except ValueError as e:
        raise ConfigError(f"config key data.relations: {e}") from None
    for key, v in [("data.eval_scenes", cfg.data.eval_scenes), ("data.train_scenes", cfg.data.train_scenes), ("data.val_scenes", cfg.data.val_scenes),
                   ("data.test_scenes", cfg.data.test_scenes), ("icl.n", cfg.icl.n), ("cma.n_mean", cfg.cma.n_mean), ("cma.n_cma", cfg.cma.n_cma),
                   ("cma.top_k", cfg.cma.top_k), ("eval.n", cfg.eval.n), ("finetune.epochs", cfg.finetune.epochs), ("compose.n", cfg.compose.n),
                   ("cma.batch_size", cfg.cma.batch_size), ("run.batch_size", cfg.run.batch_size), ("finetune.batch_size", cfg.finetune.batch_size)]:
        if v <= 0:
            raise ConfigError(f"config key {key}: must be positive, got {v}")
    if cfg.cma.engine not in ("fast", "reference"):
        raise ConfigError(f"config key cma.engine: must be 'fast' or 'reference', got {cfg.cma.engine!r}")
    if cfg.model.dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise ConfigError(f"config key model.dtype: must be auto, float32, bfloat16 or float16, got {cfg.model.dtype!r}")
    if cfg.model.device and cfg.model.device_map:
        raise ConfigError("config keys model.device and model.device_map: set one of them, not both")
    if cfg.cma.head_set not in ("self", "cross"):
        raise ConfigError(f"config key cma.head_set: must be 'self' or 'cross', got {cfg.cma.head_set!r}")
    if cfg.finetune.schedule not in ("cosine", "constant"):
        raise ConfigError(f"config key finetune.schedule: must be 'cosine' or 'constant', got {cfg.finetune.schedule!r}")
    if cfg.finetune.headline_size not in cfg.finetune.sizes:
        raise ConfigError(f"config key finetune.headline_size: {cfg.finetune.headline_size} is not in finetune.sizes {cfg.finetune.sizes}")
    if not cfg.model.name:
        raise ConfigError("config key model.name: missing; use 'tiny' for the embedded model")
    if cfg.data.dataset != "synthetic":
        raise ConfigError(f"config key data.dataset: only 'synthetic' runs end to end for now, got {cfg.data.dataset!r}")


def load(path: str | Path | None) -> Config:
    """The config in ``path`` (TOML) over the built-in defaults; None gives the defaults."""
    if path is None:
        return Config()
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file {p} does not exist")
    try:
        d = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {p} is not valid TOML: {e}") from None
    return from_dict(d)
