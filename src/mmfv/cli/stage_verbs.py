"""CLI verbs made from the stages: ``mmfv <stage>`` runs that stage (and any unfinished stage it
needs) in a results folder, exactly as ``mmfv run`` would — same config, same defaults, same files.

Every verb takes an optional TOML config, the common flags (model, relations, seed, …), a flag per
key of the stage's own config section (its help says what it is and its default), ``--use
STAGE=DIR`` to read a needed stage's results from another folder, and ``--set SECTION.KEY=VALUE``
for any other key.
"""

from __future__ import annotations

import argparse
import json
import typing
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel


def _parse_list(inner: type) -> Callable[[str], list]:
    def parse(s: str) -> list:
        try:
            return [inner(x.strip()) for x in s.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {inner.__name__} values, got {s!r}") from None

    return parse


def _base(tp: Any) -> Any:
    """The plain type under Annotated[...] (PositiveInt, …)."""
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def add_section_flags(p: argparse.ArgumentParser, section: str, cls: type[BaseModel]) -> None:
    """A flag per key of ``cls`` (``n_mean`` -> ``--n-mean``); unset flags keep the config's value."""
    g = p.add_argument_group(f"[{section}] settings (default: the config's value, shown)")
    for key, f in cls.model_fields.items():
        tp = _base(f.annotation)
        default = f.get_default(call_default_factory=True)
        shown = json.dumps(default) if not isinstance(default, str) else repr(default)
        help_ = f"{f.description or key} (default: {shown})"
        flag = "--" + key.replace("_", "-")
        kw: dict[str, Any] = {"dest": f"set__{section}__{key}", "default": None, "help": help_}
        origin = typing.get_origin(tp)
        if tp is bool:
            g.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif origin is typing.Literal:
            g.add_argument(flag, choices=typing.get_args(tp), **kw)
        elif origin is list:
            inner = _base(typing.get_args(tp)[0])
            if typing.get_origin(inner) is typing.Literal:  # a list of choices: read as text, the settings class checks them
                inner = str
            g.add_argument(flag, type=_parse_list(inner), metavar="A,B,…", **kw)
        elif origin is dict:
            continue  # e.g. run.use: its own flag
        else:
            g.add_argument(flag, type=tp, metavar=key.upper(), **kw)


def add_common(p: argparse.ArgumentParser) -> None:
    from mmfv.settings import ModelSettings

    p.add_argument("config", nargs="?", type=Path, default=None, help="TOML config (default: the built-in one, see `mmfv config show`)")
    p.add_argument("--out", type=Path, default=None, help="results folder (default: run.out of the config, runs/default)")
    p.add_argument("--force", action="store_true", help="rerun what changed in a folder that holds another config's results")
    p.add_argument("--quiet", action="store_true", help="no progress bars or log lines on the terminal (log.txt is still written)")
    g = p.add_argument_group("model and data (default: the config's)")
    m = ModelSettings.model_fields
    g.add_argument("--model", dest="set__model__name", default=None, help=m["name"].description)
    g.add_argument("--dtype", dest="set__model__dtype", default=None, choices=("auto", "float32", "bfloat16", "float16"), help=m["dtype"].description)
    g.add_argument("--device", dest="set__model__device", default=None, help=m["device"].description)
    g.add_argument("--device-map", dest="set__model__device_map", default=None, help=m["device_map"].description)
    g.add_argument("--spec", dest="set__model__spec", default=None, metavar="FILE.py", type=lambda s: str(Path(s).expanduser().resolve()),
                   help="add a model family: a Python file defining SPEC = mmfv.models.specs.Spec(...) (or SPECS, a list); "
                        "mmfv runs the file's code, so give only files you trust (docs/adding-a-model-family.md)")
    g.add_argument("--relations", dest="set__data__relations", type=_parse_list(str), default=None, metavar="R1,R2,…",
                   help="relations to build vectors for (default: above,below,left,right)")
    g.add_argument("--seed", dest="set__data__seed", type=int, default=None, help="seed of scenes, splits and prompts (default: 0)")
    g.add_argument("--use", action="append", default=[], metavar="STAGE=DIR", help="read STAGE's results from DIR (another run's stage folder)")
    g.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="any other config key; VALUE is TOML (e.g. --set run.batch_size=32)")


def config_from_args(a: argparse.Namespace) -> Any:
    """The config file (or the defaults) with the flags laid over it, validated as a whole."""
    import tomllib

    from mmfv import config as C

    d = C.load(a.config).to_dict()
    for k, v in vars(a).items():
        if k.startswith("set__") and v is not None:
            _, sec, key = k.split("__", 2)
            d[sec][key] = v
    for item in a.set:
        key, eq, val = item.partition("=")
        sec, dot, name = key.partition(".")
        if not eq or not dot:
            raise C.ConfigError(f"--set {item}: expected SECTION.KEY=VALUE, e.g. --set run.batch_size=32")
        try:
            d.setdefault(sec, {})[name] = tomllib.loads(f"v = {val}")["v"]
        except tomllib.TOMLDecodeError:
            d.setdefault(sec, {})[name] = val  # a bare word is a string
    for item in a.use:
        stage, eq, folder = item.partition("=")
        if not eq or not folder:
            raise C.ConfigError(f"--use {item}: expected STAGE=DIR, e.g. --use vectors=runs/a/vectors")
        d["run"]["use"] = {**d["run"]["use"], stage: str(Path(folder).resolve())}
    if getattr(a, "out", None) is not None:
        d["run"]["out"] = str(a.out)
    return C.from_dict(d)


def _run_stage(name: str) -> Callable[[argparse.Namespace], int]:
    def fn(a: argparse.Namespace) -> int:
        from mmfv import dist, runner

        cfg = config_from_args(a)
        timings = runner.run(cfg, cfg.run.out, force=a.force, quiet=a.quiet, until=name)
        if dist.is_main():
            ran = ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()) or "nothing (finished already)"
            print(f"{name}: ran {ran}; results in {Path(cfg.run.out) / name}")
        return 0

    return fn


def register(verb: Callable, known: Any = ()) -> None:
    """Add one verb per stage (and its aliases) through the CLI's ``verb`` registrar, except ``known`` ones."""
    from mmfv import config as C
    from mmfv.stages import STAGES

    secs = C.sections()
    for st in STAGES:
        def args(p: argparse.ArgumentParser, st=st) -> None:
            add_common(p)
            if st.section:
                add_section_flags(p, st.section, secs[st.section])
            if st.needs:
                p.epilog = f"Needs: {', '.join(st.needs)} (run first when unfinished, or read from elsewhere with --use)."

        for name in (st.name, *st.aliases):
            if name in known:
                continue
            verb(name, st.help + ("" if name == st.name else f" (= mmfv {st.name})"), args)(_run_stage(st.name))
