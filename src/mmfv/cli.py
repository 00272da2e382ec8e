"""The command-line face: ``mmfv <verb> ...``. Each verb is a small function over the library."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from mmfv import __version__

Verb = Callable[[argparse.Namespace], int]
_VERBS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Verb]] = {}


def verb(name: str, help: str, args: Callable[[argparse.ArgumentParser], None]):
    """Register a CLI verb: ``args`` adds its arguments, the decorated function runs it."""

    def deco(fn: Verb) -> Verb:
        _VERBS[name] = (help, args, fn)
        return fn

    return deco


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _scenes_args(p: argparse.ArgumentParser) -> None:
    from mmfv.data.scenes import SPLITS

    p.add_argument("--out", required=True, type=Path, help="folder to write PNGs and metadata.jsonl into")
    p.add_argument("--n", type=_positive_int, default=100, help="number of scenes (default 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="test", choices=SPLITS)
    p.add_argument("--grid", type=int, default=5, help="cells per side (default 5)")
    p.add_argument("--cell-px", type=int, default=10, help="pixels per cell side (default 10)")
    p.add_argument("--contact-sheet", action="store_true", help="also write contact_sheet.png of the first 8 scenes")
    p.add_argument("--force", action="store_true", help="overwrite scenes already in --out")


@verb("scenes", "render synthetic relational scenes to PNG + metadata.jsonl", _scenes_args)
def _scenes(a: argparse.Namespace) -> int:
    from collections import Counter

    from mmfv import relations as R
    from mmfv.data import scenes as S

    cfg = S.SceneConfig(grid=a.grid, cell_px=a.cell_px)
    scenes = S.generate_split(a.split, a.n, seed=a.seed, config=cfg)
    S.save(scenes, a.out, force=a.force)
    if a.contact_sheet:
        S.contact_sheet(scenes[:8]).save(a.out / "contact_sheet.png")
    have = Counter(r for s in scenes for r in R.SPATIAL if s.has(r))
    per = " ".join(f"{r}={have[r]}" for r in R.CARDINAL)
    print(f"wrote {len(scenes)} {a.split} scenes ({cfg.image_px}x{cfg.image_px} px, grid {cfg.grid}) to {a.out}; items per relation: {per}; digest {S.digest(scenes)[:12]}")
    return 0


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--relation", default="left")
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)


@verb("demo", "print a clean, a corrupted and a zero-shot prompt (smoke test)", _demo_args)
def _demo(a: argparse.Namespace) -> int:
    from mmfv import prompts as P
    from mmfv import relations as R
    from mmfv.data import scenes as S

    R.get(a.relation)
    scenes = S.generate_split("test", 60, seed=a.seed)
    pools = {r: P.items_from_scenes(scenes, r) for r in R.CARDINAL}
    for kind in P.KINDS:
        (p,) = P.build(kind, pools[a.relation], pools, a.k if kind != "zero-shot" else 0, 1, a.seed)
        demos = ", ".join(f"{d.relation}" for d in p.demos) or "none"
        print(f"[{kind}] relation={p.relation} demos=({demos}) answer={p.answer!r}\n  {P.FLAMINGO.render(p)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    # Verbs from later modules register themselves on import.
    _load_verbs()
    ap = argparse.ArgumentParser(prog="mmfv", description="Multimodal function vectors: find, build, steer and compose relation vectors in vision-language models.")
    ap.add_argument("--version", action="version", version=f"mmfv {__version__}")
    sub = ap.add_subparsers(dest="verb", metavar="VERB")
    for name, (help, args, fn) in _VERBS.items():
        p = sub.add_parser(name, help=help, description=help)
        args(p)
        p.set_defaults(_fn=fn)
    return ap


def _load_verbs() -> None:
    import importlib

    for mod in ("mmfv.models.cli_verbs",):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    if not getattr(a, "_fn", None):
        ap.print_help()
        return 0
    try:
        return a._fn(a)
    except KeyboardInterrupt:
        print("mmfv: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, KeyError, RuntimeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"mmfv {a.verb}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
