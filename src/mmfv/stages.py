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
from safetensors.torch import load_file

from mmfv import cma, evaluate, plots
from mmfv import prompts as P
from mmfv import relations as R
from mmfv import vectors as V
from mmfv.data import synthetic
from mmfv.io import read_json, write_json, write_safetensors
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
    write_safetensors(folder / f"{res.relation}.safetensors", {"means": res.means, "ie": res.ie}, meta)


def load_cma(folder: str | Path, relation: str) -> cma.CMAResult:
    path = Path(folder) / f"{relation}.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `mmfv cma` for {relation} into {folder} first")
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    t = load_file(str(path))
    return cma.CMAResult(meta["relation"], t["means"], t["ie"], int(meta["n_mean"]), meta["engine"], meta.get("head_set", "self"))


def means_stage(lmm: LMM, data: DataSettings, relations: Sequence[str], out: Path, n_mean: int = 100, shots: int = 5,
                only_correct: bool = False, batch_size: int = 32, progress: bool = False, head_set: str = "self") -> dict:
    """Mean head activations over clean ``eval`` prompts: ``<out>/<rel>.safetensors`` (means, n)."""
    out = Path(out)
    items = data.items(lmm, "eval", R.CARDINAL if set(relations) <= set(R.CARDINAL) else relations)
    res = {}
    for rel in relations:
        clean = P.build("clean", items[rel], items, shots, n_mean, data.seed)
        m, n = cma.mean_activations(lmm, clean, batch_size, only_correct, head_set=head_set, progress=progress)
        write_safetensors(out / f"{rel}.safetensors", {"means": m}, {"n": str(n), "relation": rel, "config_hash": lmm.config_hash(), "head_set": head_set})
        res[rel] = {"n_used": n, "n_prompts": len(clean), "shots": shots, "only_correct": only_correct, "head_set": head_set,
                    "mean_norm": round(float(m.norm()), 5)}
    write_json(out / "results.json", {"model": lmm.model_id, "relations": res})
    return res


def load_means(folder: str | Path, relation: str, head_set: str = "self") -> tuple[torch.Tensor, int]:
    path = Path(folder) / f"{relation}.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the means stage for {relation} first")
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    n = int(meta["n"])
    if meta.get("head_set", "self") != head_set:
        raise ValueError(f"{path} holds means of the {meta.get('head_set', 'self')!r} heads, not {head_set!r}: rerun the means stage")
    return load_file(str(path))["means"], n


def cma_stage(
    lmm: LMM, data: DataSettings, relations: Sequence[str], out: Path, n_mean: int = 100, n_cma: int = 25, shots: int = 5,
    engine: str = "fast", top_k: int = 10, batch_size: int = 8, only_correct: bool = False, progress: bool = False,
    means_dir: Path | None = None, head_set: str = "self",
) -> dict:
    """IE on corrupted ``eval`` prompts per relation (means from ``means_dir`` or computed on clean
    ``eval`` prompts); heatmaps; results.json."""
    out = Path(out)
    items = data.items(lmm, "eval", R.CARDINAL if set(relations) <= set(R.CARDINAL) else relations)
    results = {}
    for rel in relations:
        R.get(rel)
        clean = P.build("clean", items[rel], items, shots, n_mean, data.seed)
        corrupt = P.build("corrupted", items[rel], items, shots, n_cma, data.seed + 1)
        res = cma.run_cma(lmm, clean, corrupt, engine=engine, batch_size=batch_size, only_correct=only_correct,
                          checkpoint=out / "checkpoints" / f"{rel}.pt", progress=progress, head_set=head_set,
                          means=load_means(means_dir, rel, head_set) if means_dir else None)
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
        }
    hs = lmm.head_sets[head_set]
    summary = {"model": lmm.model_id, "config_hash": lmm.config_hash(), "head_set": head_set, "n_layers": hs.n_layers, "n_heads": hs.n_heads,
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
    batch_size: int = 64, progress: bool = False, icl_results: dict | None = None,
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
        icl = icl_results or evaluate.icl(lmm, {rel: test[rel]}, test, shots, n_eval, kinds=("clean",), seed=data.seed, batch_size=batch_size)
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
    plots.curves({r: list(res["relations"][r]["icl_by_shots"].values()) for r in rels}, [int(k) for k in next(iter(res["relations"].values()))["icl_by_shots"]], "demonstrations (k)", "accuracy (test)",
                 "ICL by context size (FV: dashed)", out / "context_size.png", hlines={"FV mean": res["mean"]["fv"]})
    write_json(out / "results.json", {"model": lmm.model_id, "n_eval": n_eval, **res})
    return res


# --- fine-tuning -----------------------------------------------------------------------------------
def _chance(items: Sequence[P.Item]) -> float:
    """Share of the answer among the candidate objects, averaged over items."""
    return round(sum(1.0 / max(1, len(it.candidates)) for it in items) / max(1, len(items)), 4)


def finetune_stage(
    lmm: LMM, data: DataSettings, fvs: dict[str, V.FunctionVector], layers: dict[str, int], out: Path,
    sizes: Sequence[int] = (25, 50, 100, 200, 400), headline_size: int = 200, shots: Sequence[int] = tuple(range(1, 9)),
    n_eval: int = 200, settings=None, batch_size: int = 64, progress: bool = False, search_layers: Sequence[int] | None = None,
) -> dict:
    """Per relation: ICL k-shot baselines, extracted FV, FV fine-tuned from it (per training size),
    and FV fine-tuned from a random init (headline size), all on the same ``test`` queries.

    ``layers[rel]`` is the extracted FV's layer (chosen on val by the eval stage). With
    ``search_layers`` (empty: every layer) the vector is tuned at the headline size at each of those
    layers and the layer with the best ``val`` accuracy is kept (ties: the FV's own layer, then the
    lowest): a tuned vector need not live where the extracted one worked best."""
    from mmfv.finetune import FinetuneSettings, finetune

    settings = settings or FinetuneSettings(seed=data.seed)
    out = Path(out)
    rels = list(fvs)
    split = lambda s: data.items(lmm, s, R.CARDINAL if set(rels) <= set(R.CARDINAL) else rels)  # noqa: E731
    train, val, test = split("train"), split("val"), split("test")
    res: dict = {"relations": {}, "sizes": list(sizes), "headline_size": headline_size}
    for rel, fv in fvs.items():
        fv.check_model(lmm)
        layer = layers[rel]
        cands = list(range(lmm.n_layers)) if search_layers is not None and not search_layers else list(search_layers or [])
        for l in cands:
            if not 0 <= l < lmm.n_layers:
                raise ValueError(f"fine-tuning layer {l} is out of range: the model has layers 0..{lmm.n_layers - 1}")
        zs_val = P.build("zero-shot", val[rel], val, 0, n_eval, data.seed)
        zs_test = P.build("zero-shot", test[rel], test, 0, n_eval, data.seed)
        icl_k = {str(k): evaluate.accuracy(lmm, P.build("clean", test[rel], test, k, n_eval, data.seed), batch_size=batch_size)["acc"] for k in shots}
        r: dict = {"layer": layer, "icl_by_shots": icl_k, "icl_best": max(icl_k.values()),
                   "zero_shot": evaluate.accuracy(lmm, zs_test, batch_size=batch_size)["acc"],
                   "fv": evaluate.accuracy(lmm, zs_test, fv.vector, layer, batch_size)["acc"], "by_size": {}, "curves": {}}
        pool = train[rel]
        for n in sizes:
            if n > len(pool):
                raise ValueError(f"training size {n} exceeds the {len(pool)} {rel} items of the train split: enlarge it")
        if cands:  # choose the fine-tuning layer on val, at the headline size
            tr = P.build("zero-shot", pool, train, 0, headline_size, data.seed)
            search = {l: finetune(lmm, fv.vector, l, tr, zs_val, settings, out / "checkpoints" / f"{rel}_n{headline_size}_L{l}.pt", progress)
                      for l in cands}
            layer = max(search, key=lambda l: (search[l].best_val_acc, l == layers[rel], -l))
            r["layer_search_val"] = {str(l): f.best_val_acc for l, f in search.items()}
            r["layer"] = layer
            r["fv_at_layer"] = evaluate.accuracy(lmm, zs_test, fv.vector, layer, batch_size)["acc"]
        for n in sizes:
            tr = P.build("zero-shot", pool, train, 0, n, data.seed)
            ck = out / "checkpoints" / (f"{rel}_n{n}_L{layer}.pt" if cands else f"{rel}_n{n}.pt")
            ft = finetune(lmm, fv.vector, layer, tr, zs_val, settings, ck, progress)
            acc = evaluate.accuracy(lmm, zs_test, ft.vector, layer, batch_size)["acc"]
            r["by_size"][str(n)] = {"fv_tuned": acc, "best_epoch": ft.best_epoch, "val_acc": ft.best_val_acc}
            r["curves"][str(n)] = ft.curve
            if n == headline_size:
                tuned = V.FunctionVector(ft.vector, rel, fv.model_id, fv.config_hash, fv.n_layers, fv.hidden_size, fv.heads, fv.k,
                                         extra={"finetuned": True, "train_size": n, "epoch": ft.best_epoch, "layer": layer, "init": "extracted"})
                tuned.save(out / "vectors" / f"{rel}.safetensors")
                r["fv_tuned"] = acc
                g = torch.Generator().manual_seed(data.seed)
                rand = torch.randn(lmm.hidden_size, generator=g) * float(fv.vector.norm()) / lmm.hidden_size**0.5
                ftr = finetune(lmm, rand, layer, tr, zs_val, settings, out / "checkpoints" / f"{rel}_n{n}_random_L{layer}.pt", progress)
                r["fv_random_init"] = evaluate.accuracy(lmm, zs_test, ftr.vector, layer, batch_size)["acc"]
                r["curves"][f"{n}_random"] = ftr.curve
        if "fv_tuned" not in r:
            raise ValueError(f"headline training size {headline_size} is not among the sizes {list(sizes)}")
        res["relations"][rel] = r
        res[rel] = {k: r[k] for k in ("icl_best", "fv", "fv_tuned", "fv_random_init")}
        if progress:
            print(f"  {rel}: icl_best {r['icl_best']:.3f}  fv {r['fv']:.3f}  fv_tuned {r['fv_tuned']:.3f}  fv_random_init {r['fv_random_init']:.3f}")
    res["mean"] = {k: round(sum(res[r][k] for r in rels) / len(rels), 4) for k in ("icl_best", "fv", "fv_tuned", "fv_random_init")}
    # Plots: accuracy vs training-set size (tuned FV per relation, ICL 8-shot as dashed lines); learning curves.
    plots.curves({r: [res["relations"][r]["by_size"][str(n)]["fv_tuned"] for n in sizes] for r in rels}, list(sizes),
                 "training prompts", "zero-shot accuracy with tuned FV (test)", "Fine-tuned FV vs ICL (dashed: best ICL, mean)",
                 out / "accuracy_vs_size.png", hlines={"ICL best (mean)": res["mean"]["icl_best"]})
    plots.curves({f"{r} n={headline_size}": [c["val_acc"] for c in res["relations"][r]["curves"][str(headline_size)]] for r in rels},
                 list(range(1, settings.epochs + 1)), "epoch", "val accuracy", "Fine-tuning learning curves", out / "learning_curves.png")
    write_json(out / "results.json", {"model": lmm.model_id, "n_eval": n_eval, **res})
    return res


# --- composition and analogy -----------------------------------------------------------------------
def compose_stage(
    lmm: LMM, data: DataSettings, fvs: dict[str, V.FunctionVector], out: Path, tuned: dict[str, V.FunctionVector] | None = None,
    grid: Sequence[float] = (0.5, 1.0, 1.5, 2.0), shots: Sequence[int] = (1, 2, 4, 8), n_eval: int = 200,
    batch_size: int = 64, progress: bool = False,
) -> dict:
    """For each diagonal relation: chance, each single vector, a·FV_v + b·FV_h (a = b = 1 and the grid
    point chosen on ``val``), tuned-vector composition, few-shot ICL; then analogies. Layers are chosen
    on ``val``; every reported number is on ``test``."""
    from mmfv import compose as C

    out = Path(out)
    val, test = data.items(lmm, "val", R.SPATIAL), data.items(lmm, "test", R.SPATIAL)
    res: dict = {"relations": {}, "grid": list(grid)}

    def zs(split, rel):
        return P.build("zero-shot", split[rel], split, 0, n_eval, data.seed)

    def acc(prompts, vec, layer):
        return evaluate.accuracy(lmm, prompts, vec, layer, batch_size)["acc"]

    neighbours: dict[tuple[str, str], dict[str, str]] = {}  # (image, query) -> relation -> answer, in test scenes
    for r_, its in test.items():
        for it in its:
            neighbours.setdefault((it.image_id, it.query), {})[r_] = it.answer
    for rel in R.NOVEL:
        v, h = R.decompose(rel)
        zv, zt = zs(val, rel), zs(test, rel)
        base = C.composed(fvs, rel)
        sweep = evaluate.layer_sweep(lmm, zv, base.vector, batch_size)
        layer = evaluate.best_layer(sweep)
        val_grid = {(a, b): acc(zv, C.composed(fvs, rel, a, b).vector, layer) for a in grid for b in grid}
        a_best, b_best = max(val_grid, key=lambda ab: (val_grid[ab], -abs(ab[0] - 1) - abs(ab[1] - 1)))
        singles = {v: acc(zt, fvs[v].vector, layer), h: acc(zt, fvs[h].vector, layer)}
        r = {
            "layer": layer, "chance": _chance(test[rel][:n_eval]),
            "zero_shot": evaluate.accuracy(lmm, zt, batch_size=batch_size)["acc"],
            "single": singles, "single_best": max(singles.values()),
            "composed": acc(zt, base.vector, layer),
            "composed_answers": C.answer_kinds(rel, zt, evaluate.predictions(lmm, zt, batch_size, evaluate.with_vector(lmm, base.vector, layer))[0].tolist(),
                                               neighbours, lmm.answer_token_id),
            "composed_grid": acc(zt, C.composed(fvs, rel, a_best, b_best).vector, layer), "grid_choice": [a_best, b_best],
            "icl_by_shots": {str(k): evaluate.accuracy(lmm, P.build("clean", test[rel], test, k, n_eval, data.seed), batch_size=batch_size)["acc"] for k in shots},
        }
        if tuned:  # tuned vectors may live at other layers: the composed one gets its own val-chosen layer
            tv = C.composed(tuned, rel).vector
            r["layer_tuned"] = evaluate.best_layer(evaluate.layer_sweep(lmm, zv, tv, batch_size))
            r["composed_tuned"] = acc(zt, tv, r["layer_tuned"])
        res["relations"][rel] = r
        res[rel] = {k: r[k] for k in ("chance", "single_best", "composed")}
        if progress:
            print(f"  {rel}: chance {r['chance']:.3f}  single_best {r['single_best']:.3f}  composed {r['composed']:.3f} (grid {r['composed_grid']:.3f}) @ layer {layer}")
    keys = ["chance", "single_best", "composed", "composed_grid", "zero_shot"] + (["composed_tuned"] if tuned else [])
    res["mean"] = {k: round(sum(res["relations"][r][k] for r in R.NOVEL) / len(R.NOVEL), 4) for k in keys}
    # Analogies: one layer per family, chosen on val (mean accuracy over the family's items, at most
    # 50 val prompts per item), reported on test.
    analog = {}
    for fam, (ops, answers) in {"cardinal": (R.CARDINAL, R.CARDINAL), "diagonal": (R.SPATIAL, R.NOVEL)}.items():
        items = C.analogy_items(ops, answers)
        vecs = {(a, b, c): C.analogy_vector(fvs, a, b, c).vector for a, b, c, _ in items}
        val_zs = {d: P.build("zero-shot", val[d], val, 0, min(n_eval, 50), data.seed) for d in {d for *_, d in items}}
        by_layer = [sum(acc(val_zs[d], vecs[(a, b, c)], l) for a, b, c, d in items) / len(items) for l in range(lmm.n_layers)]
        layer = evaluate.best_layer(by_layer)
        rows = []
        for a, b, c, d in items:
            zt = zs(test, d)
            rows.append({"analogy": f"{a} : {b} :: {c} : {d}", "acc": acc(zt, C.analogy_vector(fvs, a, b, c).vector, layer), "chance": _chance(test[d][:n_eval])})
        analog[fam] = {"items": rows, "mean_acc": round(sum(x["acc"] for x in rows) / len(rows), 4),
                       "mean_chance": round(sum(x["chance"] for x in rows) / len(rows), 4), "layer": layer,
                       "val_by_layer": [round(x, 4) for x in by_layer]}
    res["analogies"] = analog
    plots.bars({r: {"chance": res["relations"][r]["chance"], "single best": res["relations"][r]["single_best"],
                    "composed a=b=1": res["relations"][r]["composed"], "composed (val grid)": res["relations"][r]["composed_grid"],
                    f"ICL {max(shots)}-shot": res["relations"][r]["icl_by_shots"][str(max(shots))]} for r in R.NOVEL},
               "zero-shot accuracy (test)", f"Composition of relation vectors ({lmm.model_id})", out / "composition.png")
    write_json(out / "results.json", {"model": lmm.model_id, "n_eval": n_eval, **res})
    return res
