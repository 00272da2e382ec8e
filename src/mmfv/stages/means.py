"""Stage ``means``: mean head outputs at the last position over clean ``eval`` prompts, per relation.

Its settings are the ``[cma]`` section (the means are the first half of the causal mediation
analysis: the same prompts, shots and head set)."""

from __future__ import annotations

from pathlib import Path

import torch

from mmfv import prompts as P
from mmfv.io import write_safetensors
from mmfv.stages.base import Context, Stage

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


def load(folder: str | Path, relation: str, head_set: str = "self") -> tuple[torch.Tensor, int]:
    """(means (L, H, d), prompts used) of one relation from a means folder."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(folder) / f"{relation}.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the means stage for {relation} first")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    if meta.get("head_set", "self") != head_set:
        raise ValueError(f"{path} holds means of the {meta.get('head_set', 'self')!r} heads, not {head_set!r}: rerun the means stage")
    return load_file(str(path))["means"], int(meta["n"])


STAGE = Stage("means", "mean head activations at the last position over clean prompts", run, section="cma")
