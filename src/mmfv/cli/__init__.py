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
    p.add_argument("--seed", type=int, default=0, help="seed of the scenes (default 0)")
    p.add_argument("--split", default="test", choices=SPLITS, help="which split's scenes (default test; splits never share a scene)")
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
        import io

        from mmfv.io import write_bytes

        buf = io.BytesIO()
        S.contact_sheet(scenes[:8]).save(buf, format="PNG")
        write_bytes(a.out / "contact_sheet.png", buf.getvalue())
    have = Counter(r for s in scenes for r in R.SPATIAL if s.has(r))
    per = " ".join(f"{r}={have[r]}" for r in R.CARDINAL)
    print(f"wrote {len(scenes)} {a.split} scenes ({cfg.image_px}x{cfg.image_px} px, grid {cfg.grid}) to {a.out}; items per relation: {per}; digest {S.digest(scenes)[:12]}")
    return 0


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--relation", default="left", help="relation of the query (default left)")
    p.add_argument("--k", type=int, default=3, help="demonstrations per prompt (default 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of scenes and prompts (default 0)")


@verb("demo", "print a clean, a corrupted and a zero-shot prompt (smoke test)", _demo_args)
def _demo(a: argparse.Namespace) -> int:
    from mmfv import prompts as P
    from mmfv import relations as R
    from mmfv.data import scenes as S

    R.get(a.relation)
    scenes = S.generate_split("test", 60, seed=a.seed)
    pools = {r: P.items_from_scenes(scenes, r) for r in dict.fromkeys((*R.CARDINAL, a.relation))}
    for kind in P.KINDS:
        (p,) = P.build(kind, pools[a.relation], pools, a.k if kind != "zero-shot" else 0, 1, a.seed)
        demos = ", ".join(f"{d.relation}" for d in p.demos) or "none"
        print(f"[{kind}] relation={p.relation} demos=({demos}) answer={p.answer!r}\n  {P.FLAMINGO.render(p)}")
    return 0


def _int_list(s: str) -> list[int]:
    try:
        out = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None
    if not out or min(out) < 0:
        raise argparse.ArgumentTypeError(f"expected non-negative integers, got {s!r}")
    return out


def _rel_list(s: str) -> list[str]:
    from mmfv import relations as R

    try:
        return R.validate([x.strip() for x in s.split(",") if x.strip()])
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, help="checkpoint folder (resumes from its state.pt)")
    p.add_argument("--minutes", type=float, default=None, help="stop after this many minutes (the schedule still spans --steps)")
    p.add_argument("--steps", type=_positive_int, default=None, help="optimizer steps (the schedule's length)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial weights and the training stream (default 0)")
    p.add_argument("--quick", action="store_true", help="a ~1 minute run of a 2-layer model (tests, smoke)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a TrainConfig field (repeatable)")


@verb("train-tiny", "train mmfv-tiny from scratch on synthetic scene sequences", _train_args)
def _train(a: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from mmfv.models.tiny import train as T

    kw: dict = dict(T.QUICK) if a.quick else {}
    fields = {f.name: f for f in dataclasses.fields(T.TrainConfig)}
    for kv in a.set:
        key, _, val = kv.partition("=")
        if key not in fields:
            raise ValueError(f"--set {key}: no such training setting; known: {', '.join(fields)}")
        default = getattr(T.TrainConfig(), key)
        try:
            kw[key] = type(default)(val) if not isinstance(default, bool) else val.lower() in ("1", "true", "yes")
        except ValueError:
            raise ValueError(f"--set {key}={val}: expected {type(default).__name__} (the default is {default!r})") from None
    if a.steps:
        kw["steps"] = a.steps
    kw["seed"] = a.seed
    torch.set_num_threads(max(1, torch.get_num_threads()))
    card = T.train(T.TrainConfig(**kw), a.out, minutes=a.minutes)
    last = card["history"][-1] if card["history"] else {}
    print(f"trained {card['steps_done']} steps in {card['train_minutes']} min -> {a.out}; eval accuracy by shots: {last.get('eval_acc_by_k')}")
    return 0


def _run_args(p: argparse.ArgumentParser) -> None:
    from mmfv.cli.stage_verbs import add_common
    from mmfv.stages import NAMES

    add_common(p)
    p.add_argument("--only", default=None, choices=NAMES, help="run just this stage (its needs must be finished)")
    p.add_argument("--from", dest="start", default=None, choices=NAMES, help="re-run from this stage on")


@verb("run", "the whole pipeline from a config to a report (resumable)", _run_args)
def _run(a: argparse.Namespace) -> int:
    from mmfv import dist, runner
    from mmfv.cli.stage_verbs import config_from_args

    cfg = config_from_args(a)
    timings = runner.run(cfg, cfg.run.out, a.only, a.start, a.force, a.quiet)
    if dist.is_main():
        print("stage      seconds")
        for k, v in timings.items():
            print(f"{k:<10} {v:7.1f}")
        print(f"{'total':<10} {sum(timings.values()):7.1f}")
        if (Path(cfg.run.out) / "report" / "report.html").exists():
            print(f"report: {Path(cfg.run.out) / 'report' / 'report.html'}")
    return 0


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("show", "check"), help="show: print the config (the built-in one, or FILE over it); check: validate FILE")
    p.add_argument("file", nargs="?", type=Path, default=None)
    p.add_argument("--comments", action="store_true", help="show: each key with its description")
    p.add_argument("--no-model", action="store_true", help="check: the file alone, without loading the model to check layers, heads and top_k")


@verb("config", "print the built-in run config, or check a config file", _config_args)
def _config(a: argparse.Namespace) -> int:
    from mmfv import config as C

    if a.action == "show":
        print(C.load(a.file).to_toml(comments=a.comments))
    else:
        if a.file is None:
            raise ValueError("config check needs a file: mmfv config check FILE")
        cfg = C.load(a.file)
        from mmfv import runner

        runner.check_use(cfg)
        if a.no_model:
            print(f"{a.file}: valid (hash {cfg.hash()}; not checked against the model)")
            return 0
        from mmfv.models import load_model
        from mmfv.stages import NAMES

        m = cfg.model
        lmm = load_model(m.name, m.dtype, m.device, m.device_map, m.spec or None)
        runner.check_stages(cfg, list(NAMES), lambda: lmm)
        print(f"{a.file}: valid (hash {cfg.hash()}; checked against {lmm.model_id}: {lmm.n_layers} layers, {lmm.n_heads} heads per layer)")
    return 0


def _rsa_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_a", type=Path, help="a results folder (with means/ or vectors/)")
    p.add_argument("run_b", type=Path, help="another results folder, or the same one with other layers")
    p.add_argument("--what", choices=("means", "vectors"), default="means", help="mean head activations per relation, or function vectors (default means)")
    p.add_argument("--layer-a", type=int, default=-1, help="means: layer of RUN_A (default -1: all layers concatenated)")
    p.add_argument("--layer-b", type=int, default=-1, help="means: layer of RUN_B (default -1: all layers concatenated)")
    p.add_argument("--metric", choices=("pearson", "cosine"), default="pearson", help="RDM distance (default pearson: 1 - r)")
    p.add_argument("--perms", type=_positive_int, default=1000, help="label permutations (default 1000; exact over all orders when fewer)")
    p.add_argument("--seed", type=int, default=0, help="seed of the permutations (default 0)")
    p.add_argument("--json", type=Path, default=Path("rsa.json"), help="where to write the results (default ./rsa.json)")


@verb("rsa", "representational similarity (RDMs, Spearman, permutation test) of two runs' means or vectors", _rsa_args)
def _rsa(a: argparse.Namespace) -> int:
    from mmfv.io import write_json
    from mmfv.stages.rsa import compare_runs, format_table

    res = compare_runs(a.run_a, a.run_b, a.what, a.layer_a, a.layer_b, a.metric, a.perms, a.seed)
    write_json(a.json, res)
    print(format_table(res))
    print(f"written to {a.json}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mmfv", description="Multimodal function vectors: find, build, steer and compose relation vectors in vision-language models.")
    ap.add_argument("--version", action="version", version=f"mmfv {__version__}")
    from mmfv.cli import stage_verbs

    stage_verbs.register(verb, known=_VERBS)
    sub = ap.add_subparsers(dest="verb", metavar="VERB")
    for name, (help, args, fn) in _VERBS.items():
        p = sub.add_parser(name, help=help, description=help)
        args(p)
        p.set_defaults(_fn=fn)
    return ap


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
    except (ValueError, OSError, KeyError, RuntimeError, ImportError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"mmfv {a.verb}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
