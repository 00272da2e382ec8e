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
    p.add_argument("--seed", type=int, default=0)
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
        kw[key] = type(default)(val) if not isinstance(default, bool) else val.lower() in ("1", "true", "yes")
    if a.steps:
        kw["steps"] = a.steps
    kw["seed"] = a.seed
    torch.set_num_threads(max(1, torch.get_num_threads()))
    card = T.train(T.TrainConfig(**kw), a.out, minutes=a.minutes)
    last = card["history"][-1] if card["history"] else {}
    print(f"trained {card['steps_done']} steps in {card['train_minutes']} min -> {a.out}; eval accuracy by shots: {last.get('eval_acc_by_k')}")
    return 0


def _icl_args(p: argparse.ArgumentParser) -> None:
    _model_args(p)
    p.add_argument("--shots", type=_int_list, default=[0, 1, 2, 4, 8])
    p.add_argument("--n", type=_positive_int, default=400, help="prompts per (kind, shots, relation) cell")
    p.add_argument("--split", default="test")
    p.add_argument("--scenes", type=_positive_int, default=1000, help="scenes in the split")
    p.add_argument("--relations", type=_rel_list, default=None, help="comma-separated (default: the 4 cardinal)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=_positive_int, default=64)
    p.add_argument("--out", type=Path, default=None, help="folder for results.json")


@verb("icl", "in-context accuracy by number of demonstrations, clean and corrupted", _icl_args)
def _icl(a: argparse.Namespace) -> int:
    import time

    from mmfv import relations as R
    from mmfv.data import synthetic
    from mmfv.evaluate import format_icl_table, icl
    from mmfv.io import write_json

    rels = tuple(a.relations or R.CARDINAL)
    t0 = time.time()
    lmm = _load(a)
    data = synthetic.items(a.split, a.scenes, rels, seed=a.seed, config=lmm.scene_config())
    res = icl(lmm, data, data, a.shots, a.n, seed=a.seed, batch_size=a.batch_size, progress=True)
    print(format_icl_table(res, rels))
    print(f"({a.n} prompts per cell, {a.split} split, {time.time() - t0:.1f}s)")
    if a.out:
        write_json(a.out / "results.json", {"model": lmm.model_id, "split": a.split, "n": a.n, "seed": a.seed, "relations": list(rels), **res})
    return 0


def _model_args(p: argparse.ArgumentParser, default: str | None = "tiny", help: str | None = None) -> None:
    p.add_argument("--model", default=default, help=help or "'tiny', an mmfv-tiny folder, openflamingo:<folder>, or an HF model (hub id or folder)")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default=None, help="HF models: weights dtype (default: the checkpoint's)")
    p.add_argument("--device", default=None, help="HF / OpenFlamingo models: e.g. cuda")
    p.add_argument("--device-map", default=None, help="HF models too big for one GPU: e.g. auto (needs accelerate)")


def _load(a: argparse.Namespace, name: str | None = None):
    """The model named by --model (or ``name``), with --dtype / --device / --device-map."""
    from mmfv.models import load_model

    return load_model(name or a.model, a.dtype, a.device, a.device_map)


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0, help="seed of scenes and prompts")


def _cma_args(p: argparse.ArgumentParser) -> None:
    _model_args(p)
    p.add_argument("--relations", type=_rel_list, default=None, help="comma-separated (default: the 4 cardinal)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--n-mean", type=_positive_int, default=100, help="clean prompts for the mean activations")
    p.add_argument("--n-cma", type=_positive_int, default=25, help="corrupted prompts for the indirect effects")
    p.add_argument("--shots", type=_positive_int, default=5)
    p.add_argument("--engine", choices=("fast", "reference"), default="fast")
    p.add_argument("--top-k", type=_positive_int, default=10)
    p.add_argument("--only-correct", action="store_true", help="average only prompts the model answers correctly")
    p.add_argument("--head-set", default="self", help="self, or cross for cross-attention (Flamingo-style) models")
    _data_args(p)


@verb("cma", "causal mediation analysis: the indirect effect of every attention head", _cma_args)
def _cma(a: argparse.Namespace) -> int:
    from mmfv import relations as R
    from mmfv.stages import DataSettings, cma_stage

    lmm = _load(a)
    rels = a.relations or list(R.CARDINAL)
    if a.head_set not in lmm.head_sets:
        raise ValueError(f"--head-set {a.head_set}: {lmm.model_id} has only {', '.join(lmm.head_sets)} heads")
    hs = lmm.head_sets[a.head_set]
    if a.top_k > hs.n_layers * hs.n_heads:
        raise ValueError(f"--top-k {a.top_k} is larger than the model's {hs.n_layers * hs.n_heads} {a.head_set} heads")
    res = cma_stage(lmm, DataSettings(seed=a.seed), rels, a.out, a.n_mean, a.n_cma, a.shots, a.engine, a.top_k,
                    only_correct=a.only_correct, progress=True, head_set=a.head_set)
    for r, v in res["relations"].items():
        print(f"{r:>6}: top-{a.top_k} heads carry {v['top_share']:.0%} of positive AIE; top heads (layer, head, AIE) {v['top_heads'][:3]}")
    print(f"wrote {a.out}/results.json and aie_*.png")
    return 0


def _extract_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cma", required=True, type=Path, help="folder written by `mmfv cma`")
    p.add_argument("--k", type=_positive_int, default=10, help="number of top heads")
    p.add_argument("--out", required=True, type=Path, help="a .safetensors file (one relation) or a folder")
    p.add_argument("--relations", type=_rel_list, default=None)
    _model_args(p, None, "defaults to the model the CMA was run on")


@verb("extract", "build function vectors from the top-k heads of a CMA run", _extract_args)
def _extract(a: argparse.Namespace) -> int:
    from mmfv.io import read_json
    from mmfv.stages import extract_stage

    meta_path = a.cma / "results.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{meta_path} not found: --cma must be a folder written by `mmfv cma`")
    meta = read_json(meta_path)
    rels = a.relations or list(meta["relations"])
    lmm = _load(a, a.model or ("tiny" if meta["model"] == "mmfv-tiny" else meta["model"]))
    if a.k > lmm.n_layers * lmm.n_heads:
        raise ValueError(f"--k {a.k} is larger than the model's {lmm.n_layers * lmm.n_heads} heads")
    if a.out.suffix == ".safetensors":
        if len(rels) != 1:
            raise ValueError(f"--out {a.out} is one file but {len(rels)} relations were asked: pass --relations R or a folder")
        paths = extract_stage(lmm, a.cma, rels, a.k, a.out.parent / ".extract-tmp")
        paths[rels[0]].replace(a.out)
        (a.out.parent / ".extract-tmp").rmdir()
        paths = {rels[0]: a.out}
    else:
        paths = extract_stage(lmm, a.cma, rels, a.k, a.out)
    for r, p in paths.items():
        print(f"{r}: {p}")
    return 0


def _eval_args(p: argparse.ArgumentParser) -> None:
    _model_args(p)
    p.add_argument("--fv", nargs="+", required=True, type=Path, help="function vector files or folders of them")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--n", type=_positive_int, default=200, help="prompts per relation and split")
    p.add_argument("--cma", type=Path, default=None, help="CMA folder, for the head-count sweep")
    _data_args(p)


@verb("eval", "zero-shot accuracy with function vectors: layer, head-count and context-size sweeps", _eval_args)
def _eval(a: argparse.Namespace) -> int:
    from mmfv.stages import DataSettings, eval_stage

    lmm = _load(a)
    fvs = _load_fvs(lmm, a.fv)
    res = eval_stage(lmm, DataSettings(seed=a.seed), fvs, a.out, a.n, a.cma, progress=True)
    print(f"mean zero-shot {res['mean']['zero_shot']:.3f} -> with FV {res['mean']['fv']:.3f}; wrote {a.out}/results.json")
    return 0


def _load_fvs(lmm, paths: list[Path]) -> dict:
    from mmfv.vectors import FunctionVector

    files = [f for p in paths for f in (sorted(p.glob("*.safetensors")) if p.is_dir() else [p])]
    if not files:
        raise FileNotFoundError(f"no .safetensors function vectors in {', '.join(map(str, paths))}")
    out = {}
    for f in files:
        fv = FunctionVector.load(f, lmm)
        out[fv.relation] = fv
    return out


def _choose_layers(lmm, data, fvs: dict, n: int) -> dict[str, int]:
    """Per relation, the injection layer with the best zero-shot accuracy on val."""
    from mmfv import evaluate
    from mmfv import prompts as P
    from mmfv import relations as R

    out = {}
    for rel, fv in fvs.items():
        val = data.items(lmm, "val", R.CARDINAL if rel in R.CARDINAL else [rel])
        out[rel] = evaluate.best_layer(evaluate.layer_sweep(lmm, P.build("zero-shot", val[rel], val, 0, n, data.seed), fv.vector))
    return out


def _finetune_args(p: argparse.ArgumentParser) -> None:
    _model_args(p)
    p.add_argument("--fv", nargs="+", required=True, type=Path, help="extracted function vector files or folders")
    p.add_argument("--relation", type=_rel_list, default=None, help="restrict to these relations")
    p.add_argument("--layer", type=int, default=None, help="injection layer (default: chosen on val per relation)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--sizes", type=_int_list, default=[25, 50, 100, 200, 400], help="training-set sizes")
    p.add_argument("--headline-size", type=_positive_int, default=200)
    p.add_argument("--epochs", type=_positive_int, default=20)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--schedule", choices=("cosine", "constant"), default="cosine")
    p.add_argument("--n", type=_positive_int, default=200, help="val/test prompts per relation")
    _data_args(p)


@verb("finetune", "fine-tune function vectors with the model frozen; compare with ICL", _finetune_args)
def _finetune(a: argparse.Namespace) -> int:
    from mmfv.finetune import FinetuneSettings
    from mmfv.stages import DataSettings, finetune_stage

    lmm = _load(a)
    fvs = _load_fvs(lmm, a.fv)
    if a.relation:
        missing = [r for r in a.relation if r not in fvs]
        if missing:
            raise ValueError(f"no vector for {', '.join(missing)} among {', '.join(fvs)}")
        fvs = {r: fvs[r] for r in a.relation}
    data = DataSettings(seed=a.seed, scenes={"eval": 1000, "train": max(1000, 3 * max(a.sizes)), "val": 500, "test": 1000})
    if a.layer is not None and not 0 <= a.layer < lmm.n_layers:
        raise ValueError(f"--layer {a.layer} is out of range: the model has layers 0..{lmm.n_layers - 1}")
    layers = {r: a.layer for r in fvs} if a.layer is not None else _choose_layers(lmm, data, fvs, a.n)
    st = FinetuneSettings(epochs=a.epochs, lr=a.lr, schedule=a.schedule, seed=a.seed)
    res = finetune_stage(lmm, data, fvs, layers, a.out, a.sizes, a.headline_size, n_eval=a.n, settings=st, progress=True)
    m = res["mean"]
    print(f"mean: icl_best {m['icl_best']:.3f}  fv {m['fv']:.3f}  fv_tuned {m['fv_tuned']:.3f}  fv_random_init {m['fv_random_init']:.3f}; wrote {a.out}/results.json")
    return 0


def _compose_args(p: argparse.ArgumentParser) -> None:
    _model_args(p)
    p.add_argument("--fv", nargs="+", required=True, type=Path, help="the 4 cardinal vectors (files or folders)")
    p.add_argument("--tuned", nargs="+", type=Path, default=None, help="fine-tuned cardinal vectors (optional)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--n", type=_positive_int, default=200)
    _data_args(p)


@verb("compose", "compose cardinal vectors into untrained diagonal relations; analogies", _compose_args)
def _compose(a: argparse.Namespace) -> int:
    from mmfv.stages import DataSettings, compose_stage

    lmm = _load(a)
    fvs = _load_fvs(lmm, a.fv)
    tuned = _load_fvs(lmm, a.tuned) if a.tuned else None
    res = compose_stage(lmm, DataSettings(seed=a.seed), fvs, a.out, tuned, n_eval=a.n, progress=True)
    m = res["mean"]
    print(f"mean over diagonals: chance {m['chance']:.3f}  single_best {m['single_best']:.3f}  composed {m['composed']:.3f}; "
          f"analogies: cardinal {res['analogies']['cardinal']['mean_acc']:.3f}, diagonal {res['analogies']['diagonal']['mean_acc']:.3f}; wrote {a.out}/results.json")
    return 0


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", type=Path, default=None, help="TOML config (default: the built-in one, see `mmfv config show`)")
    p.add_argument("--out", type=Path, default=None, help="results folder (default: run.out of the config)")
    p.add_argument("--only", default=None, help="run just this stage")
    p.add_argument("--from", dest="start", default=None, help="re-run from this stage on")
    p.add_argument("--force", action="store_true", help="clear a results folder that holds another config's results")
    p.add_argument("--quiet", action="store_true", help="no progress bars; the log file is still written")


@verb("run", "the whole pipeline from a config to a report (resumable)", _run_args)
def _run(a: argparse.Namespace) -> int:
    from mmfv import config as C
    from mmfv import runner

    cfg = C.load(a.config)
    timings = runner.run(cfg, a.out, a.only, a.start, a.force, a.quiet)
    from mmfv import dist

    if dist.is_main():
        out = a.out or Path(cfg.run.out)
        print("stage      seconds")
        for k, v in timings.items():
            print(f"{k:<10} {v:7.1f}")
        print(f"{'total':<10} {sum(timings.values()):7.1f}\nreport: {out / 'report' / 'report.html'}")
    return 0


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("show", "check"), help="show: print the default config; check: validate a file")
    p.add_argument("file", nargs="?", type=Path, default=None)


@verb("config", "print the built-in run config, or check a config file", _config_args)
def _config(a: argparse.Namespace) -> int:
    from mmfv import config as C

    if a.action == "show":
        print(C.load(a.file).to_toml())
    else:
        if a.file is None:
            raise ValueError("config check needs a file")
        cfg = C.load(a.file)
        print(f"{a.file}: valid (hash {cfg.hash()})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mmfv", description="Multimodal function vectors: find, build, steer and compose relation vectors in vision-language models.")
    ap.add_argument("--version", action="version", version=f"mmfv {__version__}")
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
