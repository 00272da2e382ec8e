"""Stage ``vectors``: a function vector per relation from the top-k heads of its CMA (``[cma] top_k``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmfv.stages.base import Context, Stage
from mmfv.stages.cma import check


def run(ctx: Context) -> dict:
    from mmfv import vectors as V
    from mmfv.stages import cma as CMA

    lmm, k = ctx.lmm, ctx.cfg.cma.top_k
    for rel in ctx.relations:
        res = CMA.load(ctx.input("cma"), rel, lmm)
        if k > res.aie.numel():
            raise ValueError(f"config key cma.top_k: {k} is larger than the {res.aie.numel()} heads of the CMA results in {ctx.input('cma')}")
        extra = {"cma_engine": res.engine, "n_mean": res.n_mean, "n_cma": int(res.ie.shape[0])}
        if ctx.cfg.cma.fv_bias:
            extra["bias"] = True
        fv = V.build(lmm, res.means, res.top_heads(k), rel, head_set=res.head_set, extra=extra, bias=ctx.cfg.cma.fv_bias)
        fv.save(ctx.dir("vectors") / f"{rel}.safetensors")
    out = {"model": lmm.model_id, "k": k, "relations": ctx.relations}
    ctx.write("vectors", out)
    return out


def load(folder: str | Path, relations: list[str], lmm: Any) -> dict:
    """relation -> FunctionVector from a vectors folder, checked against ``lmm``."""
    from mmfv.vectors import FunctionVector

    return {r: FunctionVector.load(Path(folder) / f"{r}.safetensors", lmm) for r in relations}


STAGE = Stage("vectors", "function vectors from the top-k heads of each relation's CMA", run, needs=("cma",), section="cma", aliases=("extract",), check=check)
