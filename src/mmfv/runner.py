"""`mmfv run`: config -> stages -> one results folder; finished stages are skipped, interrupted
ones resume (CMA per prompt batch, fine-tuning per epoch), every result is written atomically.

Layout of the results folder::

    config.toml  run.json  log.txt  timings.json
    icl/ means/ cma/ vectors/ eval/ finetune/ compose/ report/

A stage is finished when its folder holds ``.done`` with the config hash. The folder's
``run.json`` records the config hash and mmfv version; a folder from another config is refused
unless ``force`` (which clears it first — results of two configs are never mixed).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mmfv import __version__, dist
from mmfv import config as C
from mmfv import relations as R
from mmfv.io import read_json, write_bytes, write_json

STAGES = ("icl", "means", "cma", "vectors", "eval", "finetune", "compose", "report")
NEEDS = {"icl": (), "means": (), "cma": ("means",), "vectors": ("cma",), "eval": ("vectors", "cma", "icl"),
         "finetune": ("vectors", "eval"), "compose": ("vectors", "eval", "finetune"), "report": ()}

log = logging.getLogger("mmfv.run")


class RunError(ValueError):
    """The run cannot start as asked (foreign results folder, unknown stage, missing inputs)."""


@dataclass
class Context:
    cfg: C.Config
    out: Path
    progress: bool
    run_hash: str  # config hash + model weights fingerprint, computed once per run
    _lmm: object = None

    @property
    def lmm(self):
        if self._lmm is None:
            from mmfv.models import load_model

            m = self.cfg.model
            self._lmm = load_model(m.name, m.dtype, m.device, m.device_map)
            if self.cfg.cma.head_set not in self._lmm.head_sets:
                raise ValueError(f"config key cma.head_set: {self._lmm.model_id} has no {self.cfg.cma.head_set!r} heads (it has {', '.join(self._lmm.head_sets)})")
        return self._lmm

    @property
    def data(self):
        from mmfv.stages import DataSettings

        d = self.cfg.data
        return DataSettings(d.dataset, d.seed, {"eval": d.eval_scenes, "train": d.train_scenes, "val": d.val_scenes, "test": d.test_scenes})

    def dir(self, stage: str) -> Path:
        return self.out / stage


# --- stages ----------------------------------------------------------------------------------------
def _icl(ctx: Context) -> None:
    from mmfv import evaluate

    c = ctx.cfg
    test = ctx.data.items(ctx.lmm, "test", c.data.relations)
    res = evaluate.icl(ctx.lmm, test, test, c.icl.shots, c.icl.n, seed=c.data.seed, batch_size=c.run.batch_size, progress=ctx.progress)
    table = evaluate.format_icl_table(res, c.data.relations)
    log.info("ICL accuracy (test):\n%s", table)
    from mmfv import plots

    kinds = {f"{kind} (mean)": [res[kind][str(k)]["mean"]["acc"] for k in c.icl.shots] for kind in res}
    plots.curves(kinds, c.icl.shots, "demonstrations (k)", "accuracy (test)", f"ICL by shots ({ctx.lmm.model_id})", ctx.dir("icl") / "icl_curve.png")
    write_json(ctx.dir("icl") / "results.json", {"model": ctx.lmm.model_id, "split": "test", "n": c.icl.n, "seed": c.data.seed, "relations": c.data.relations, **res})


def _means(ctx: Context) -> None:
    from mmfv.stages import means_stage

    c = ctx.cfg
    means_stage(ctx.lmm, ctx.data, c.data.relations, ctx.dir("means"), c.cma.n_mean, c.cma.shots, c.cma.only_correct,
                progress=ctx.progress, head_set=c.cma.head_set)


def _cma(ctx: Context) -> None:
    from mmfv.stages import cma_stage

    c = ctx.cfg.cma
    res = cma_stage(ctx.lmm, ctx.data, ctx.cfg.data.relations, ctx.dir("cma"), c.n_mean, c.n_cma, c.shots, c.engine, c.top_k, c.batch_size,
                    c.only_correct, ctx.progress, means_dir=ctx.dir("means"), head_set=c.head_set)
    for r, v in res["relations"].items():
        log.info("CMA %s: top-%d share %.3f, top heads %s", r, c.top_k, v["top_share"], v["top_heads"][:3])


def _vectors(ctx: Context) -> None:
    from mmfv.stages import extract_stage

    extract_stage(ctx.lmm, ctx.dir("cma"), ctx.cfg.data.relations, ctx.cfg.cma.top_k, ctx.dir("vectors"))
    write_json(ctx.dir("vectors") / "results.json", {"model": ctx.lmm.model_id, "k": ctx.cfg.cma.top_k, "relations": ctx.cfg.data.relations})


def _fvs(ctx: Context, folder: Path) -> dict:
    from mmfv.vectors import FunctionVector

    return {r: FunctionVector.load(folder / f"{r}.safetensors", ctx.lmm) for r in ctx.cfg.data.relations}


def _eval(ctx: Context) -> None:
    from mmfv.stages import eval_stage

    c = ctx.cfg
    res = eval_stage(ctx.lmm, ctx.data, _fvs(ctx, ctx.dir("vectors")), ctx.dir("eval"), c.eval.n, ctx.dir("cma"), c.eval.head_counts,
                     c.icl.shots, c.run.batch_size, ctx.progress, icl_results=read_json(ctx.dir("icl") / "results.json"))
    log.info("FV (test, layer chosen on val): zero-shot %.3f -> %.3f", res["mean"]["zero_shot"], res["mean"]["fv"])


def _finetune(ctx: Context) -> None:
    from mmfv.finetune import FinetuneSettings
    from mmfv.stages import finetune_stage

    c = ctx.cfg.finetune
    ev = read_json(ctx.dir("eval") / "results.json")
    layers = {r: ev["relations"][r]["best_layer"] for r in ctx.cfg.data.relations}
    st = FinetuneSettings(epochs=c.epochs, lr=c.lr, schedule=c.schedule, batch_size=c.batch_size, seed=ctx.cfg.data.seed)
    res = finetune_stage(ctx.lmm, ctx.data, _fvs(ctx, ctx.dir("vectors")), layers, ctx.dir("finetune"), c.sizes, c.headline_size, c.shots,
                         c.n, st, ctx.cfg.run.batch_size, ctx.progress, search_layers=c.layers if c.search_layers else None)
    log.info("fine-tuning (test): %s", res["mean"])


def _compose(ctx: Context) -> None:
    from mmfv.stages import compose_stage

    c = ctx.cfg.compose
    if set(ctx.cfg.data.relations) != set(R.CARDINAL):
        log.info("compose: skipped, it needs all four cardinal relations")
        write_json(ctx.dir("compose") / "results.json", {"skipped": "needs all four cardinal relations"})
        return
    res = compose_stage(ctx.lmm, ctx.data, _fvs(ctx, ctx.dir("vectors")), ctx.dir("compose"), _fvs(ctx, ctx.dir("finetune") / "vectors"),
                        c.grid, c.shots, c.n, ctx.cfg.run.batch_size, ctx.progress)
    log.info("composition (test): %s", res["mean"])


def _report(ctx: Context) -> None:
    from mmfv.report import build_report

    if not dist.is_main():  # the report reads back the files it writes, which only rank 0 does
        return
    path = build_report(ctx.out, ctx.lmm)
    log.info("report: %s", path)


RUNNERS: dict[str, Callable[[Context], None]] = {
    "icl": _icl, "means": _means, "cma": _cma, "vectors": _vectors, "eval": _eval, "finetune": _finetune, "compose": _compose, "report": _report,
}


# --- orchestration ---------------------------------------------------------------------------------
def _setup_logging(out: Path, quiet: bool) -> None:
    log.handlers.clear()
    log.setLevel(logging.INFO)
    log.propagate = False
    if dist.is_main():
        fh = logging.FileHandler(out / "log.txt")
        fh.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(fh)
        if not quiet:
            sh = logging.StreamHandler(sys.stdout)
            sh.setFormatter(logging.Formatter("%(message)s"))
            log.addHandler(sh)


def run_hash(cfg: C.Config) -> str:
    """What a finished stage is marked with: the config's hash and the model weights' fingerprint."""
    from mmfv.models import fingerprint

    return hashlib.sha256(f"{cfg.hash()}:{fingerprint(cfg.model.name)}".encode()).hexdigest()[:16]


def _claim_folder(cfg: C.Config, out: Path, force: bool, rh: str) -> None:
    meta = out / "run.json"
    if meta.exists():
        old = read_json(meta)
        if old.get("config_hash") != cfg.hash():
            if not force:
                raise RunError(f"{out} holds results of another config ({old.get('config_hash')} vs {cfg.hash()}): choose another output folder or pass --force to clear it")
            if dist.is_main():
                for stage in STAGES:
                    shutil.rmtree(out / stage, ignore_errors=True)
        elif old.get("run_hash") != rh:
            if not force:
                raise RunError(f"{out} holds results of another version of the model {cfg.model.name!r} (its weights changed): "
                               "choose another output folder or pass --force to clear it")
            if dist.is_main():
                for stage in STAGES:
                    shutil.rmtree(out / stage, ignore_errors=True)
    elif out.exists() and any(out.iterdir()) and not force:
        raise RunError(f"{out} is not empty and holds no mmfv run: choose another output folder or pass --force")
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
        write_json(meta, {"config_hash": cfg.hash(), "run_hash": rh, "mmfv_version": __version__, "model": cfg.model.name})
        write_bytes(out / "config.toml", cfg.to_toml().encode())
    dist.barrier()


def _is_done(ctx: Context, stage: str) -> bool:
    marker = ctx.dir(stage) / ".done"
    return marker.exists() and marker.read_text().strip() == ctx.run_hash


def plan(only: str | None = None, start: str | None = None) -> list[str]:
    for name, v in (("--only", only), ("--from", start)):
        if v is not None and v not in STAGES:
            raise RunError(f"{name} {v}: unknown stage; stages are {', '.join(STAGES)}")
    if only:
        return [only]
    return list(STAGES[STAGES.index(start):]) if start else list(STAGES)


def run(cfg: C.Config, out: Path | None = None, only: str | None = None, start: str | None = None,
        force: bool = False, quiet: bool = False) -> dict[str, float]:
    """Run the pipeline; returns seconds per stage run now (skipped stages are absent)."""
    out = Path(out or cfg.run.out)
    stages = plan(only, start)
    dist.init()
    if cfg.run.threads:
        import torch

        torch.set_num_threads(cfg.run.threads)
    rh = run_hash(cfg)
    _claim_folder(cfg, out, force, rh)
    _setup_logging(out, quiet)
    ctx = Context(cfg, out, not quiet and dist.is_main(), rh)
    log.info("mmfv %s run: model %s, config %s -> %s (%d process%s)", __version__, cfg.model.name, cfg.hash(), out, dist.world(), "es" if dist.world() > 1 else "")
    if start and dist.is_main():
        for s in stages:
            (ctx.dir(s) / ".done").unlink(missing_ok=True)
    dist.barrier()
    timings: dict[str, float] = {}
    for stage in stages:
        if _is_done(ctx, stage):
            log.info("[%s] done already, skipped", stage)
            continue
        missing = [n for n in NEEDS[stage] if not _is_done(ctx, n)]
        if missing:
            raise RunError(f"stage {stage} needs {', '.join(missing)} first: run without --only, or with --from {missing[0]}")
        log.info("[%s] running", stage)
        t0 = time.perf_counter()
        ctx.dir(stage).mkdir(parents=True, exist_ok=True)
        RUNNERS[stage](ctx)
        dist.barrier()
        timings[stage] = round(time.perf_counter() - t0, 2)
        write_bytes(ctx.dir(stage) / ".done", (ctx.run_hash + "\n").encode())  # rank 0 only
        dist.barrier()  # every process sees the marker before deciding on the next stage
        log.info("[%s] finished in %.1fs", stage, timings[stage])
    if dist.is_main():
        old = read_json(out / "timings.json") if (out / "timings.json").exists() else {}
        write_json(out / "timings.json", {**old, **timings})
    log.info("stage timings (s): %s; total %.1fs", "  ".join(f"{k} {v:.1f}" for k, v in timings.items()), sum(timings.values()))
    return timings
