"""Stage ``means``: mean head outputs at the last position over clean ``eval`` prompts, per relation.

Its settings are the ``[cma]`` section (the means are the first half of the causal mediation
analysis: the same prompts, shots and head set)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mmfv import prompts as P
from mmfv.io import write_safetensors
from mmfv.stages.base import Context, Stage
from mmfv.stages.cma import heads

BATCH = 32  # prompts per forward pass; the float64 sums are added in this grouping


def run(ctx: Context) -> dict:
    from mmfv import cma

    c, lmm = ctx.cfg.cma, ctx.lmm
    items = ctx.items("eval")
    res = {}
    for rel in ctx.relations:
        clean = P.build("clean", items[rel], items, c.shots, c.n_mean, ctx.seed, ctx.protocol)
        with ctx.ex.scope(rel):
            m, n = cma.mean_activations(lmm, clean, BATCH, c.only_correct, head_set=c.head_set, ex=ctx.ex)
        write_safetensors(ctx.dir("means") / f"{rel}.safetensors", {"means": m},
                          {"n": str(n), "relation": rel, "config_hash": lmm.config_hash(), "head_set": c.head_set})
        res[rel] = {"n_used": n, "n_prompts": len(clean), "shots": c.shots, "only_correct": c.only_correct, "head_set": c.head_set,
                    "mean_norm": round(float(m.norm()), 5)}
    ctx.write("means", {"model": lmm.model_id, "relations": res})
    return res


def check(cfg: Any, lmm: Any) -> None:
    """Before any stage runs: the model has the config's head set (cma.head_set)."""
    heads(cfg, lmm)


def load(folder: str | Path, relation: str, head_set: str = "self", lmm: Any = None) -> tuple[torch.Tensor, int]:
    """(means (L, H, d), prompts used) of one relation from a means folder (with ``lmm``: checked to be that model's)."""
    from mmfv.stages.cma import read

    path = Path(folder) / f"{relation}.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the means stage for {relation} first")
    t, meta = read(path, "means", lmm)
    if meta.get("head_set", "self") != head_set:
        raise ValueError(f"{path} holds means of the {meta.get('head_set', 'self')!r} heads, not {head_set!r}: rerun the means stage")
    try:
        return t["means"], int(meta["n"])
    except (KeyError, ValueError) as e:
        raise ValueError(f"{path} is damaged (no {e}): delete it and rerun the means stage") from None


STAGE = Stage("means", "mean head activations at the last position over clean prompts", run, section="cma", check=check)
