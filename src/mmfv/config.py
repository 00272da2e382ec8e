"""The run configuration (TOML): ``[model]``, ``[data]``, one section per stage, ``[run]``.

The sections are the stages' own settings classes (``mmfv.stages``), so a stage's defaults live in
one place and `mmfv run`, the stage's CLI verb and the Python API all use them. Unknown keys and
wrongly typed values are errors that name the key. `mmfv config show` prints the built-in default.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from mmfv.settings import DataSettings, ModelSettings, RunSettings, Section


class ConfigError(ValueError):
    """A config file is wrong; the message names the key."""


def sections() -> dict[str, type[Section]]:
    """Section name -> settings class, in file order: model, data, each stage's own, run."""
    from mmfv.stages import STAGES

    out: dict[str, type[Section]] = {"model": ModelSettings, "data": DataSettings}
    for st in STAGES:
        if st.settings is not None and st.section not in out:
            out[st.section] = st.settings
    out["run"] = RunSettings
    return out


class _ConfigBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def _hashed(self) -> dict[str, Any]:
        d = self.to_dict()
        if not d["model"].get("spec"):  # no spec file: hashes as before the key existed
            d["model"] = {k: v for k, v in d["model"].items() if k != "spec"}
        return d

    def hash(self, exclude_out: bool = True) -> str:
        """Hash of everything that changes results (the output folder and thread count do not)."""
        d = self._hashed()
        if exclude_out:
            d["run"] = {k: v for k, v in d["run"].items() if k not in ("out", "threads")}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def section_hash(self, name: str) -> str:
        """Hash of one section (what a stage's marker is built from)."""
        d = self._hashed()[name]
        if name == "run":  # run.use enters through the hashes of the stages read from elsewhere
            d = {k: v for k, v in d.items() if k not in ("out", "threads", "use")}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def to_toml(self, comments: bool = False) -> str:
        """The config as TOML; with ``comments`` each key is preceded by its description."""
        lines = ["# mmfv run configuration", ""]
        for name in type(self).model_fields:
            lines.append(f"[{name}]")
            sec = getattr(self, name)
            for k, f in type(sec).model_fields.items():
                if comments and f.description:
                    lines.append(f"# {f.description}")
                lines.append(f"{k} = {_toml_value(getattr(sec, k))}")
            lines.append("")
        return "\n".join(lines)

    def replace(self, **changes: dict[str, Any]) -> "_ConfigBase":
        """A copy with some keys of some sections changed (validated): ``cfg.replace(cma={"top_k": 5})``."""
        d = self.to_dict()
        for sec, kv in changes.items():
            d.setdefault(sec, {}).update(kv)
        return from_dict(d)


def _build() -> type:
    cls = create_model("Config", __base__=_ConfigBase, **{n: (c, Field(default_factory=c)) for n, c in sections().items()})
    cls.__doc__ = "The whole run configuration: one frozen, validated section per name of :func:`sections`."
    return cls


_built: dict[str, Any] = {}


def config_class() -> type:
    """The ``Config`` class for the current stage list (re-assembled after ``mmfv.stages.register``)."""
    from mmfv.stages import STAGES

    key = tuple(id(s) for s in STAGES)
    if _built.get("key") != key:
        _built.update(key=key, cls=_build())
    return _built["cls"]


def __getattr__(name: str) -> Any:  # ``config.Config``: always the class of the current stage list
    if name == "Config":
        return config_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _message(section: str, e: ValidationError) -> str:
    err = e.errors()[0]
    loc = "".join(f"[{x}]" if isinstance(x, int) else f".{x}" for x in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if msg.startswith("@"):  # a cross-field check names its own key
        key, _, text = msg[1:].partition(": ")
        return f"config key {section}.{key}: {text}"
    if err["type"] == "extra_forbidden":
        known = ", ".join(sections()[section].model_fields)
        return f"unknown config key {section}{loc}: [{section}] takes {known}"
    got = err.get("input")
    shown = f", got {type(got).__name__} {got!r}" if not isinstance(got, dict) else ""
    return f"config key {section}{loc}: {msg}{shown}"


PROTOCOLS: dict[str, dict[str, dict[str, Any]]] = {
    "mmfv": {},
    "fu2025": {"cma": {"shots": 4, "only_correct": True, "fv_bias": True}, "data": {"gqa_filters": "fu2025", "direction": "fu2025"},
               "icl": {"shots": [0, 1, 2, 3, 4]}},
}
"""Per protocol, the values its preset gives keys the config does not set (docs/protocols.md)."""


def from_dict(d: dict[str, Any]) -> Any:
    """Build a Config from nested dicts; unknown sections/keys and wrong types raise ConfigError.
    Under ``run.protocol = "fu2025"`` keys the dict leaves unset take the paper's values."""
    secs = sections()
    built = {}
    protocol = d.get("run", {}).get("protocol", "mmfv") if isinstance(d.get("run", {}), dict) else "mmfv"
    preset = PROTOCOLS.get(protocol, {})
    d = {**{s: {} for s in preset}, **d}
    for name, body in d.items():
        if name in preset and isinstance(body, dict):
            body = {**preset[name], **body}
        if name not in secs:
            raise ConfigError(f"unknown config section [{name}]: known sections are {', '.join(secs)}")
        if not isinstance(body, dict):
            raise ConfigError(f"config key {name}: expected a [{name}] table")
        try:
            built[name] = secs[name].model_validate(body)
        except ValidationError as e:
            raise ConfigError(_message(name, e)) from None
    cfg = config_class()(**built)
    _check_across(cfg)
    return cfg


def _check_across(cfg: Any) -> None:
    """Checks that join two sections."""
    if cfg.run.protocol == "fu2025" and cfg.data.dataset == "synthetic":
        k = max([*cfg.icl.shots, cfg.cma.shots])
        if k > 4:
            key = "icl.shots" if max(cfg.icl.shots) > 4 else "cma.shots"
            raise ConfigError(f"config key {key}: {k} demonstrations, but the paper's corrupted prompts (protocol fu2025) rotate answers over "
                              "the 4 cardinal relations: use at most 4")


def load(path: str | Path | None) -> Any:
    """The config in ``path`` (TOML) over the built-in defaults; None gives the defaults."""
    if path is None:
        return config_class()()
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file {p} does not exist")
    try:
        d = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {p} is not valid TOML: {str(e).splitlines()[0]}") from None
    return from_dict(d)
