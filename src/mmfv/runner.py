"""`mmfv run` and the stage verbs: config -> stages (``mmfv.stages``) -> one results folder.

Layout of the results folder::

    config.toml  run.json  log.txt  timings.json  .lock
    icl/ means/ cma/ vectors/ eval/ finetune/ compose/ report/

One process at a time owns a folder (an exclusive lock held for the whole run; a second run fails
at once, naming the holder). A stage is finished when its folder holds ``.done`` with the stage's
hash — the hash of the model, the data, its settings and the stages it needs — so finished stages
are skipped, an interrupted stage resumes from its checkpoints, and a stage whose inputs changed
is never taken for finished. A folder holding another config's results is refused unless
``force`` (or the earlier run failed): then the stages whose inputs changed are cleared and rerun,
the others kept — results of two configs are never mixed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from mmfv import __version__, dist
from mmfv import config as C
from mmfv.execution import Execution
from mmfv.io import read_json, write_bytes, write_csv, write_json
from mmfv.progress import Progress, earlier_timings

log = logging.getLogger("mmfv.run")


class RunError(ValueError):
    """The run cannot start as asked (foreign or busy results folder, unknown stage, missing inputs)."""


def _stages():
    from mmfv import stages

    return stages


def __getattr__(name: str) -> Any:  # STAGES: the stage names, in order (reads the live registry)
    if name == "STAGES":
        return _stages().NAMES
    raise AttributeError(name)


def plan(only: str | None = None, start: str | None = None, until: str | None = None, use: dict | None = None) -> list[str]:
    """The stages to run: all; just ``only``; ``start`` and every later one; or ``until`` and the
    stages it needs (transitively, except those read from elsewhere via ``use``)."""
    S = _stages()
    for flag, v in (("--only", only), ("--from", start), ("stage", until)):
        if v is not None and v not in S.NAMES:
            raise RunError(f"{flag} {v}: unknown stage; stages are {', '.join(S.NAMES)}")
    if only:
        return [only]
    if start:
        return list(S.NAMES[S.NAMES.index(start):])
    if until:
        want, todo = set(), [until]
        while todo:
            s = todo.pop()
            if s in want or (use and s in use and s != until):
                continue
            want.add(s)
            todo.extend(S.get(s).needs)
        return [n for n in S.NAMES if n in want]
    return list(S.NAMES)


# --- the folder: lock, claim, markers ----------------------------------------------------------
@contextlib.contextmanager
def lock(out: Path) -> Iterator[None]:
    """Hold ``out``'s exclusive lock (rank 0 only); a second holder fails at once, naming the first."""
    if not dist.is_main():
        yield
        return
    from filelock import FileLock, Timeout

    out.mkdir(parents=True, exist_ok=True)
    lk = FileLock(str(out / ".lock"))
    try:
        lk.acquire(timeout=0)
    except Timeout:
        owner = (out / ".lock.owner").read_text().strip() if (out / ".lock.owner").exists() else "another process"
        raise RunError(f"{out} is in use by {owner}: wait for it to finish, or choose another output folder") from None
    try:
        write_bytes(out / ".lock.owner", f"mmfv run (pid {os.getpid()})\n".encode())
        yield
    finally:
        (out / ".lock.owner").unlink(missing_ok=True)
        lk.release()


_OURS = {".lock", ".lock.owner"}


def _claim(cfg: Any, out: Path, force: bool, weights: str, hashes: dict[str, str]) -> None:
    S = _stages()
    meta = out / "run.json"
    if meta.exists():
        try:
            old = read_json(meta)
        except ValueError:
            raise RunError(f"{meta} is damaged (not JSON): delete it to start this folder over, or choose another folder") from None
        changed = old.get("config_hash") != cfg.hash()
        if changed or old.get("weights") != weights:
            if not force and old.get("state") != "failed":
                what = (f"another config ({old.get('config_hash')} vs {cfg.hash()})" if changed
                        else f"another version of the model {cfg.model.name!r} (its weights changed)")
                raise RunError(f"{out} holds results of {what}: choose another output folder or pass --force to rerun what changed")
            if dist.is_main():  # keep the stages whose inputs are unchanged; set the rest aside
                for name in S.NAMES:
                    old_hash = _marker(out, name)
                    if old_hash not in (None, hashes[name]):
                        _set_aside(out, name, old_hash, force)
    elif out.exists() and any(p.name not in _OURS for p in out.iterdir()) and not force:
        raise RunError(f"{out} is not empty and holds no mmfv run: choose another output folder or pass --force")


def _set_aside(out: Path, name: str, old_hash: str, force: bool) -> None:
    """A finished stage whose inputs changed: deleted under --force (asked for), else moved to
    ``replaced/<stage>-<old hash>`` so that resuming a failed run with a changed config (or a newer
    mmfv whose settings hash differently) never silently loses finished results."""
    if force:
        shutil.rmtree(out / name, ignore_errors=True)
        return
    dest = out / "replaced" / f"{name}-{old_hash[:12]}"
    i = 1
    while dest.exists():
        dest, i = out / "replaced" / f"{name}-{old_hash[:12]}-{i}", i + 1
    dest.parent.mkdir(parents=True, exist_ok=True)
    (out / name).rename(dest)
    log.warning("[%s] its inputs or settings changed since it finished: rerunning it; the earlier results are kept in %s", name, dest)


def _start(cfg: Any, out: Path, weights: str) -> None:
    """Mark the folder as this config's running run (after every refusal is behind us)."""
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
        _write_meta(out, cfg, weights, "running", provenance())
        write_bytes(out / "config.toml", cfg.to_toml().encode())
    dist.barrier()


def provenance() -> dict[str, Any]:
    """Where and with what a run ran: date, mmfv's git commit (when run from a checkout), software, hardware."""
    import datetime
    import platform
    import subprocess

    import torch
    import transformers

    src = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(src), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "mmfv_commit": commit or None,
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "platform": f"{platform.system()} {platform.machine()}", "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
            "device": device, "processes": dist.world()}


def _write_meta(out: Path, cfg: Any, weights: str, state: str, prov: dict | None = None) -> None:
    old = {}
    if (out / "run.json").exists():
        try:
            old = read_json(out / "run.json")
        except ValueError:
            old = {}
    write_json(out / "run.json", {"config_hash": cfg.hash(), "weights": weights, "mmfv_version": __version__, "model": cfg.model.name, "state": state,
                                  "provenance": prov or old.get("provenance", {})})


def _marker(out: Path, stage: str) -> str | None:
    p = out / stage / ".done"
    return p.read_bytes().decode(errors="replace").strip() if p.exists() else None  # a damaged marker: unfinished


# --- checks before any work -------------------------------------------------------------------
def check_use(cfg: Any) -> None:
    """Every folder ``run.use`` names holds that stage's results."""
    S = _stages()
    for name, folder in cfg.run.use.items():
        if name not in S.NAMES:
            raise RunError(f"config key run.use: unknown stage {name!r}; stages are {', '.join(S.NAMES)}")
        if not (Path(folder) / "results.json").exists():
            raise RunError(f"config key run.use: {folder} holds no {name} results (results.json): run that stage there first")


def check_stages(cfg: Any, names: list[str], lmm: Any) -> None:
    """The model-dependent checks (``Stage.check``: layers, head counts, top_k against the model's
    depth and heads) of the stages ``names``; ``lmm()`` loads the model, only if some stage checks."""
    S = _stages()
    checks = list(dict.fromkeys(S.get(n).check for n in names if S.get(n).check is not None))
    if checks:
        model = lmm()
        for check in checks:
            check(cfg, model)


# --- running -----------------------------------------------------------------------------------
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


def run(cfg: Any, out: str | Path | None = None, only: str | None = None, start: str | None = None,
        force: bool = False, quiet: bool = False, until: str | None = None) -> dict[str, float]:
    """Run the pipeline (or part of it, see :func:`plan`); returns seconds per stage run now
    (finished stages are skipped and absent)."""
    from mmfv.models import fingerprint
    from mmfv.stages.base import Context, StageSkipped, stage_hashes

    S = _stages()
    out = Path(out or cfg.run.out)
    todo = plan(only, start, until, cfg.run.use)
    check_use(cfg)
    dist.init()
    if cfg.run.threads:
        import torch

        torch.set_num_threads(cfg.run.threads)
    weights = fingerprint(cfg.model.name)
    hashes = stage_hashes(cfg, S.STAGES, weights)
    t_start = time.perf_counter()
    with lock(out):
        # Under torchrun every process reads the folder only after rank 0 holds the lock (its lock files
        # are written) and before rank 0 writes anything else: all ranks see the same folder.
        dist.barrier()
        known = earlier_timings(out, todo, hashes, cfg.hash(), weights)  # before the folder changes
        _claim(cfg, out, force, weights, hashes)
        prog = Progress(todo, known, done=[n for n in todo if not start and _marker(out, n) == hashes[n]])
        for i, name in enumerate(todo):  # refused before run.json says "running": it keeps its state
            missing = [n for n in S.get(name).needs if n not in cfg.run.use and n not in todo[:i] and _marker(out, n) != hashes[n]]
            if missing:
                raise RunError(f"stage {name} needs {', '.join(missing)} first: run without --only, or with --from {missing[0]}")
        dist.barrier()  # every rank has checked the folder before rank 0 marks it running
        _start(cfg, out, weights)
        _setup_logging(out, quiet)
        ctx = Context(cfg, out, Execution(not quiet, log))
        log.info("mmfv %s run: model %s, config %s -> %s (%d process%s); stages: %s; %s", __version__, cfg.model.name, cfg.hash(), out,
                 dist.world(), "es" if dist.world() > 1 else "", " ".join(todo), prog.eta())
        timings: dict[str, float] = {}
        old_t = read_json(out / "timings.json") if dist.is_main() and (out / "timings.json").exists() else {}
        try:
            # layers, heads, top_k against the loaded model: a bad value fails before the first stage
            check_stages(cfg, [n for n in todo if start or _marker(out, n) != hashes[n]], lambda: ctx.lmm)
            if start and dist.is_main():
                for s in todo:
                    (out / s / ".done").unlink(missing_ok=True)
            dist.barrier()
            for name in todo:
                st = S.get(name)
                if _marker(out, name) == hashes[name]:
                    log.info("[%s] done already, skipped (%s)", name, prog.done(name, time.perf_counter() - t_start))
                    continue
                log.info("[%s] running%s", name, prog.stage(name))
                t0 = time.perf_counter()
                ctx.dir(name).mkdir(parents=True, exist_ok=True)
                with ctx.ex.scope(name):
                    try:
                        st.run(ctx)
                    except StageSkipped as e:
                        log.info("[%s] skipped: %s", name, e)
                        ctx.write(name, {"skipped": str(e)})
                if st.table is not None and dist.is_main() and (ctx.dir(name) / "results.json").exists():
                    write_csv(ctx.dir(name) / "results.csv", st.table(read_json(ctx.dir(name) / "results.json")))
                dist.barrier()
                timings[name] = round(time.perf_counter() - t0, 2)
                write_bytes(out / name / ".done", (hashes[name] + "\n").encode())  # rank 0 only
                write_json(out / "timings.json", {**old_t, **timings})  # after each stage: the report (last) shows the others
                dist.barrier()  # every process sees the marker before deciding on the next stage
                log.info("[%s] finished in %.1fs; %s", name, timings[name], prog.done(name, time.perf_counter() - t_start))
        except BaseException:
            if dist.is_main():
                _write_meta(out, cfg, weights, "failed")
            raise
        if dist.is_main():
            _write_meta(out, cfg, weights, "complete" if all(_marker(out, n) == hashes[n] for n in S.NAMES) else "partial")
        log.info("stage timings (s): %s; total %.1fs", "  ".join(f"{k} {v:.1f}" for k, v in timings.items()), sum(timings.values()))
    return timings
