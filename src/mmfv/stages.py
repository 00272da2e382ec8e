"""Pipeline stages: each takes a model and settings, writes its results folder, and returns them.

The CLI verbs (``mmfv cma``, ``extract``, ``eval`` …) and the runner (``mmfv run``) call these same
functions, so a verb run by hand and a stage of the pipeline give identical files.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file

from mmfv import cma, evaluate, plots
from mmfv import prompts as P
from mmfv import relations as R
from mmfv import vectors as V
from mmfv.data import synthetic
from mmfv.io import read_json, write_json
from mmfv.models.base import LMM


@dataclass(frozen=True)
class DataSettings:
    """Where items come from: synthetic scenes in the model's scene style, split sizes, seed."""

    dataset: str = "synthetic"
    seed: int = 0
    scenes: dict = field(default_factory=lambda: {"eval": 1000, "train": 1000, "val": 500, "test": 1000})

    def items(self, lmm: LMM, split: str, relations: Sequence[str]) -> dict[str, list[P.Item]]:
        if self.dataset != "synthetic":
            raise ValueError(f"dataset {self.dataset!r} is not available in this stage: use 'synthetic'")
        if split not in self.scenes:
            raise ValueError(f"split {split!r} has no size in the data settings: add it")
        cfg = lmm.scene_config() if hasattr(lmm, "scene_config") else None
        return synthetic.items(split, int(self.scenes[split]), tuple(relations), seed=self.seed, config=cfg)


# --- CMA -----------------------------------------------------------------------------------------
def save_cma(res: cma.CMAResult, lmm: LMM, folder: Path) -> None:
    meta = {"relation": res.relation, "engine": res.engine, "n_mean": str(res.n_mean), "head_set": res.head_set,
            "model_id": lmm.model_id, "config_hash": lmm.config_hash()}
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{res.relation}.safetensors.tmp"
    save_file({"means": res.means.contiguous(), "ie": res.ie.contiguous()}, str(tmp), metadata=meta)
    tmp.replace(folder / f"{res.relation}.safetensors")


def load_cma(folder: str | Path, relation: str) -> cma.CMAResult:
    path = Path(folder) / f"{relation}.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `mmfv cma` for {relation} into {folder} first")
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    t = load_file(str(path))
    return cma.CMAResult(meta["relation"], t["means"], t["ie"], int(meta["n_mean"]), meta["engine"], meta.get("head_set", "self"))


def cma_stage(
    lmm: LMM, data: DataSettings, relations: Sequence[str], out: Path, n_mean: int = 100, n_cma: int = 25, shots: int = 5,
    engine: str = "fast", top_k: int = 10, batch_size: int = 8, only_correct: bool = False, progress: bool = False,
) -> dict:
    """Means on clean ``eval`` prompts, IE on corrupted ones, per relation; heatmaps; results.json."""
    out = Path(out)
    items = data.items(lmm, "eval", R.CARDINAL if set(relations) <= set(R.CARDINAL) else relations)
    results = {}
    for rel in relations:
        R.get(rel)
        t0 = time.time()
        clean = P.build("clean", items[rel], items, shots, n_mean, data.seed)
        corrupt = P.build("corrupted", items[rel], items, shots, n_cma, data.seed + 1)
        res = cma.run_cma(lmm, clean, corrupt, engine=engine, batch_size=batch_size, only_correct=only_correct,
                          checkpoint=out / "checkpoints" / f"{rel}.pt", progress=progress)
        save_cma(res, lmm, out)
        top = res.top_heads(top_k)
        plots.aie_heatmap(res.aie, top, f"AIE, {rel} ({lmm.model_id}); top {top_k} boxed", out / f"aie_{rel}.png")
        layers_of_top = sorted(l for l, _ in top)
        results[rel] = {
            "top_heads": [[l, h, round(float(res.aie[l, h]), 6)] for l, h in top],
            "top_share": round(res.top_share(top_k), 4),
            "top_layers": layers_of_top,
            "n_mean": res.n_mean, "n_cma": len(corrupt), "engine": engine,
            "aie": [[round(float(x), 6) for x in row] for row in res.aie],
            "seconds": round(time.time() - t0, 2),
        }
    summary = {"model": lmm.model_id, "config_hash": lmm.config_hash(), "n_layers": lmm.n_layers, "n_heads": lmm.n_heads,
               "top_k": top_k, "shots": shots, "relations": results}
    write_json(out / "results.json", summary)
    return summary


# --- vectors ---------------------------------------------------------------------------------------
def extract_stage(lmm: LMM, cma_dir: Path, relations: Sequence[str], k: int, out: Path) -> dict[str, Path]:
    """Build FV_r from the top-k heads of each relation's CMA; write ``<out>/<rel>.safetensors``."""
    paths = {}
    for rel in relations:
        res = load_cma(cma_dir, rel)
        fv = V.build(lmm, res.means, res.top_heads(k), rel, head_set=res.head_set, extra={"cma_engine": res.engine, "n_mean": res.n_mean, "n_cma": int(res.ie.shape[0])})
        paths[rel] = fv.save(Path(out) / f"{rel}.safetensors")
    return paths


# --- evaluation ------------------------------------------------------------------------------------
def eval_stage(
    lmm: LMM, data: DataSettings, fvs: dict[str, V.FunctionVector], out: Path, n_eval: int = 200,
    cma_dir: Path | None = None, head_counts: Sequence[int] = tuple(range(1, 21)), shots: Sequence[int] = (0, 1, 2, 4, 8),
    batch_size: int = 64, progress: bool = False,
) -> dict:
    """Zero-shot accuracy with/without each FV: layer sweep on ``val``, the chosen layer on ``test``;
    head-count sweep (needs the CMA folder) and context-size sweep (ICL by shots) on ``test``."""
    out = Path(out)
    rels = list(fvs)
    val = data.items(lmm, "val", R.CARDINAL if set(rels) <= set(R.CARDINAL) else rels)
    test = data.items(lmm, "test", R.CARDINAL if set(rels) <= set(R.CARDINAL) else rels)
    res: dict = {"relations": {}}
    for rel, fv in fvs.items():
        fv.check_model(lmm)
        zs_val = P.build("zero-shot", val[rel], val, 0, n_eval, data.seed)
        zs_test = P.build("zero-shot", test[rel], test, 0, n_eval, data.seed)
        sweep = evaluate.layer_sweep(lmm, zs_val, fv.vector, batch_size)
        best = evaluate.best_layer(sweep)
        r = {
            "zero_shot": evaluate.accuracy(lmm, zs_test, batch_size=batch_size)["acc"],
            "fv": evaluate.accuracy(lmm, zs_test, fv.vector, best, batch_size)["acc"],
            "best_layer": best,
            "layer_sweep_val": sweep,
            "layer_sweep_test": evaluate.layer_sweep(lmm, zs_test, fv.vector, batch_size),
        }
        if cma_dir is not None:
            cres = load_cma(cma_dir, rel)
            max_k = lmm.n_layers * lmm.n_heads
            ks = [k for k in head_counts if k <= max_k]
            r["head_count"] = {str(k): evaluate.accuracy(lmm, zs_test, V.build(lmm, cres.means, cres.top_heads(k), rel).vector, best, batch_size)["acc"] for k in ks}
        icl = evaluate.icl(lmm, {rel: test[rel]}, test, shots, n_eval, kinds=("clean",), seed=data.seed, batch_size=batch_size)
        r["icl_by_shots"] = {k: icl["clean"][k][rel]["acc"] for k in icl["clean"]}
        res["relations"][rel] = r
        if progress:
            print(f"  {rel}: zero-shot {r['zero_shot']:.3f}  fv {r['fv']:.3f} @ layer {best}")
    keys = ("zero_shot", "fv")
    res["mean"] = {k: round(sum(res["relations"][r][k] for r in rels) / len(rels), 4) for k in keys}
    for r in rels:  # the flat per-relation keys
        res[r] = {k: res["relations"][r][k] for k in ("zero_shot", "fv", "best_layer")}
    L = list(range(lmm.n_layers))
    plots.curves({r: res["relations"][r]["layer_sweep_test"] for r in rels}, L, "injection layer", "zero-shot accuracy (test)",
                 f"FV layer sweep ({lmm.model_id})", out / "layer_sweep.png")
    if cma_dir is not None:
        hc = {r: list(res["relations"][r]["head_count"].values()) for r in rels}
        plots.curves(hc, [int(k) for k in next(iter(res["relations"].values()))["head_count"]], "heads in the FV (k)", "zero-shot accuracy (test)",
                     "FV head-count sweep", out / "head_count.png")
    plots.curves({r: list(res["relations"][r]["icl_by_shots"].values()) for r in rels}, [int(s) for s in shots], "demonstrations (k)", "accuracy (test)",
                 "ICL by context size (FV: dashed)", out / "context_size.png", hlines={"FV mean": res["mean"]["fv"]})
    write_json(out / "results.json", {"model": lmm.model_id, "n_eval": n_eval, **res})
    return res
