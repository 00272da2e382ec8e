"""The HTML report: self-contained, every section, the numbers of the results files, example strip."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
import torch

from mmfv import plots
from mmfv import relations as R
from mmfv import vectors as V
from mmfv.io import write_json
from mmfv.stages.report import build_report, sections

RELS = ("above", "below", "left", "right")
L, H = 2, 4  # random_tiny's sizes


def _acc(rng: random.Random) -> float:
    return round(rng.uniform(0.05, 0.95), 4)


EXTRA = ("retain", "novel", "baselines", "transfer", "rsa")  # the analyses after composition


def extra_results(rng: random.Random) -> dict:
    """Results of the analysis stages in their real schemas."""
    from mmfv import retain, rsa
    from mmfv.stages import retain as RS
    from mmfv.stages import transfer as T

    rows = [{"vector": v, "kind": "extracted", "layer": 1, "target": t, "prompts": p, "base": _acc(rng), "with": _acc(rng)}
            for v in RELS for t in RELS for p in ("zero-shot", "icl") if t != v or p == "icl"]
    rows = [{**r, "delta": round(r["with"] - r["base"], 4)} for r in rows]
    ret = {"n_eval": 20, "shots": 4, "rows": rows, "summary": retain.summary(rows, 4), "means": RS._means(rows), "baseline": {}}
    split = lambda: {"items": 50, "chance": 0.1, **{k: _acc(rng) for k in ("zero_shot", "fv", "fv_tuned", "icl")}}  # noqa: E731
    nov = {"n_eval": 20, "shots": 4, "how": "held-out classes", "relations": {r: {"test": split(), "novel": split()} for r in RELS}}
    nov["mean"] = {s: {k: round(sum(nov["relations"][r][s][k] for r in RELS) / 4, 4) for k in ("zero_shot", "fv", "fv_tuned", "icl")} for s in ("test", "novel")}
    meth = {"LoRA r=1": {"kind": "lora", "size": 1, "params": 256, "lr": 0.01}, "prompt 4 tokens": {"kind": "prompt", "size": 4, "params": 128, "lr": 0.01}}
    base = {"n_eval": 20, "epochs": 2, "sizes": [10, 20], "methods": meth, "params_fv": 32,
            "relations": {r: {"fv": _acc(rng), "fv_tuned": {"10": _acc(rng), "20": _acc(rng)},
                              **{m: {n: {"acc": _acc(rng), "best_epoch": 1, "val_acc": 0.5} for n in ("10", "20")} for m in meth}} for r in RELS}}
    tr = {"n_eval": 20, "source": "runs/synthetic", "relations": {r: {**{k: _acc(rng) for k in T.KEYS}, "layer_source": 1, "layer_val": 2} for r in RELS}}
    tr["mean"] = {k: round(sum(tr["relations"][r][k] for r in RELS) / 4, 4) for k in T.KEYS}
    g = torch.Generator().manual_seed(0)
    feats = [{r: torch.randn(8, generator=g) for r in RELS} for _ in range(2)]
    rs = {"a": "this run", "b": "this run", "what": "means", "layer_a": 0, "layer_b": 1, **rsa.compare(*feats), "by_layer": [[1.0, 0.25], [0.25, 1.0]]}
    return {"retain": ret, "novel": nov, "baselines": base, "transfer": tr, "rsa": rs}


def make_results(root: Path, stages=("data", "icl", "cma", "eval", "finetune", "compose", *EXTRA), model: str = "random-tiny") -> dict:
    """A small results folder with results.json files in the real schemas (as written by
    runner/stages) and tiny PNGs drawn by the plots helpers; returns the JSON written, by stage."""
    rng = random.Random(0)
    root.mkdir(parents=True, exist_ok=True)
    write_json(root / "run.json", {"config_hash": "cafe0123456789ab", "mmfv_version": "0.1.0", "model": model})
    (root / "config.toml").write_text(f'[model]\nname = "{model}"\n\n[data]\nseed = 0\ntest_scenes = 200\n')
    out: dict = {}
    if "data" in stages:
        data = {"dataset": "synthetic", "protocol": "mmfv", "relations": list(RELS), "note": "Synthetic scenes.", "files": [], "image_dir": "",
                "dropped": {}, "items": {s: {r: 100 + i for i, r in enumerate(RELS)} for s in ("eval", "train", "val", "test")},
                "chance": {r: round(1 / (4 + i), 4) for i, r in enumerate(RELS)}}
        write_json(root / "data" / "results.json", data)
        out["data"] = data
    if "icl" in stages:
        icl = {"model": model, "split": "test", "n": 20, "seed": 0, "relations": list(RELS)}
        for kind in ("clean", "corrupted"):
            icl[kind] = {}
            for k in (0, 1, 2, 4, 16):  # 16: numeric, not text, order
                row = {r: {"acc": (a := _acc(rng)), "ci95": [round(a / 2, 4), round((1 + a) / 2, 4)], "n": 20} for r in RELS}
                m = round(sum(row[r]["acc"] for r in RELS) / 4, 4)
                row["mean"] = {"acc": m, "ci95": [round(m - 0.1, 4), round(m + 0.1, 4)], "n": 80}
                icl[kind][str(k)] = row
        write_json(root / "icl" / "results.json", icl)
        out["icl"] = icl
    if "cma" in stages:
        cma = {"model": model, "config_hash": "x", "n_layers": L, "n_heads": H, "top_k": 3, "shots": 5, "relations": {}}
        for r in RELS:
            aie = torch.tensor([[rng.uniform(-0.1, 0.2) for _ in range(H)] for _ in range(L)])
            flat = sorted(((float(aie[l, h]), l, h) for l in range(L) for h in range(H)), reverse=True)[:3]
            top = [[l, h, round(a, 6)] for a, l, h in flat]
            cma["relations"][r] = {"aie": aie.tolist(), "engine": "fast", "n_cma": 4, "n_mean": 10, "seconds": 0.1,
                                   "top_heads": top, "top_layers": sorted(l for l, _, _ in top), "top_share": _acc(rng)}
            plots.aie_heatmap(aie, [(l, h) for l, h, _ in top], f"AIE {r}", root / "cma" / f"aie_{r}.png")
        write_json(root / "cma" / "results.json", cma)
        out["cma"] = cma
    if "eval" in stages:
        ev: dict = {"model": model, "n_eval": 20, "relations": {}}
        for r in RELS:
            ev["relations"][r] = {"zero_shot": _acc(rng), "fv": _acc(rng), "best_layer": rng.randrange(L),
                                  "layer_sweep_val": [_acc(rng) for _ in range(L)], "layer_sweep_test": [_acc(rng) for _ in range(L)],
                                  "head_count": {str(k): _acc(rng) for k in (1, 2, 10)}, "icl_by_shots": {str(k): _acc(rng) for k in (0, 1, 2)}}
        ev["mean"] = {k: round(sum(ev["relations"][r][k] for r in RELS) / 4, 4) for k in ("zero_shot", "fv")}
        ev.update({r: {k: ev["relations"][r][k] for k in ("zero_shot", "fv", "best_layer")} for r in RELS})
        write_json(root / "eval" / "results.json", ev)
        plots.curves({r: ev["relations"][r]["layer_sweep_test"] for r in RELS}, list(range(L)), "layer", "acc", "layer sweep", root / "eval" / "layer_sweep.png")
        plots.curves({r: list(ev["relations"][r]["head_count"].values()) for r in RELS}, [1, 2, 10], "k", "acc", "head count", root / "eval" / "head_count.png")
        out["eval"] = ev
    if "finetune" in stages:
        ft: dict = {"model": model, "n_eval": 20, "sizes": [10, 20], "headline_size": 20, "relations": {}}
        for r in RELS[:2]:  # fine-tuned on two relations only: the others show a dash
            curve = [{"epoch": e, "train_loss": 1.0 / e, "val_acc": _acc(rng)} for e in (1, 2)]
            icl_k = {str(k): _acc(rng) for k in (1, 2)}
            ft["relations"][r] = {"layer": 1, "icl_by_shots": icl_k, "icl_best": max(icl_k.values()), "zero_shot": _acc(rng), "fv": _acc(rng),
                                  "by_size": {str(n): {"fv_tuned": _acc(rng), "best_epoch": 2, "val_acc": _acc(rng)} for n in (10, 20)},
                                  "curves": {"10": curve, "20": curve, "20_random": curve}, "fv_random_init": _acc(rng)}
            ft["relations"][r]["fv_tuned"] = ft["relations"][r]["by_size"]["20"]["fv_tuned"]
            ft[r] = {k: ft["relations"][r][k] for k in ("icl_best", "fv", "fv_tuned", "fv_random_init")}
        ft["mean"] = {k: round(sum(ft[r][k] for r in RELS[:2]) / 2, 4) for k in ("icl_best", "fv", "fv_tuned", "fv_random_init")}
        write_json(root / "finetune" / "results.json", ft)
        plots.curves({r: [ft["relations"][r]["by_size"][n]["fv_tuned"] for n in ("10", "20")] for r in RELS[:2]}, [10, 20], "n", "acc", "size",
                     root / "finetune" / "accuracy_vs_size.png")
        plots.curves({r: [c["val_acc"] for c in ft["relations"][r]["curves"]["20"]] for r in RELS[:2]}, [1, 2], "epoch", "acc", "curves",
                     root / "finetune" / "learning_curves.png")
        out["finetune"] = ft
    if "compose" in stages:
        co: dict = {"model": model, "n_eval": 20, "grid": [0.5, 1.0], "relations": {}}
        for r in R.NOVEL:
            v, h = R.decompose(r)
            single = {v: _acc(rng), h: _acc(rng)}
            co["relations"][r] = {"layer": 1, "chance": _acc(rng), "zero_shot": _acc(rng), "single": single, "single_best": max(single.values()),
                                  "composed": _acc(rng), "composed_grid": _acc(rng), "grid_choice": [0.5, 1.0],
                                  "icl_by_shots": {str(k): _acc(rng) for k in (1, 2, 8)}, "composed_tuned": _acc(rng)}
            co[r] = {k: co["relations"][r][k] for k in ("chance", "single_best", "composed")}
        keys = ("chance", "single_best", "composed", "composed_grid", "zero_shot", "composed_tuned")
        co["mean"] = {k: round(sum(co["relations"][r][k] for r in R.NOVEL) / len(R.NOVEL), 4) for k in keys}
        items = [{"analogy": f"above : left :: right : x{i}", "acc": _acc(rng), "chance": _acc(rng)} for i in range(20)]
        co["analogies"] = {"cardinal": {"items": items[:3], "mean_acc": 0.1234, "mean_chance": 0.0987, "layer": 1},
                           "diagonal": {"items": items[3:], "mean_acc": 0.4321, "mean_chance": 0.1111, "layer": 1}}
        write_json(root / "compose" / "results.json", co)
        plots.bars({r: {"chance": co["relations"][r]["chance"], "composed": co["relations"][r]["composed"]} for r in R.NOVEL}, "acc", "composition",
                   root / "compose" / "composition.png")
        out["compose"] = co
    for stage, j in extra_results(rng).items():
        if stage in stages:
            write_json(root / stage / "results.json", j)
            out[stage] = j
    return out


def _self_contained(page: str) -> None:
    assert 'src="http' not in page and "src='http" not in page and "<script" not in page and "<link" not in page
    assert "url(" not in page and "@import" not in page
    srcs = re.findall(r"<img\b[^>]*\bsrc=\"([^\"]*)\"", page)
    assert srcs and len(srcs) == page.count("<img")
    assert all(s.startswith("data:image/png;base64,") for s in srcs)


def test_report_has_every_section_and_number(tmp_path):
    res = make_results(tmp_path / "run")
    path = build_report(tmp_path / "run")
    assert path == tmp_path / "run" / "report" / "report.html"
    page = path.read_text()
    _self_contained(page)
    for heading in [s.title for s in sections()]:
        assert heading.replace("'", "&#x27;") in page
    assert "not run" not in page
    assert "<title>mmfv report: random-tiny</title>" in page and "0.1.0" in page
    assert "<pre class='config'>[model]\nname = &quot;random-tiny&quot;" in page  # the config, shown
    f = lambda x: f"{x:.3f}"  # noqa: E731
    icl = res["icl"]
    for kind in ("clean", "corrupted"):
        for k, row in icl[kind].items():
            for r in (*RELS, "mean"):
                assert f(row[r]["acc"]) in page
            assert f"[{f(row['mean']['ci95'][0])}, {f(row['mean']['ci95'][1])}]" in page
    for r, v in res["cma"]["relations"].items():
        assert f(v["top_share"]) in page
        for l, h, a in v["top_heads"]:
            assert f"L{l} H{h} <small>{f(a)}</small>" in page
    for r, v in res["eval"]["relations"].items():
        assert all(f(v[k]) in page for k in ("zero_shot", "fv"))
        assert all(f(a) in page for a in v["head_count"].values())
    assert f(res["eval"]["mean"]["fv"]) in page
    for r, v in res["finetune"]["relations"].items():
        assert all(f(v[k]) in page for k in ("fv_tuned", "fv_random_init", "icl_best"))
    co = res["compose"]
    for r, v in co["relations"].items():
        assert r in page and all(f(v[k]) in page for k in ("chance", "single_best", "composed", "composed_grid", "composed_tuned"))
        assert all(f(a) in page for a in v["icl_by_shots"].values())
    for fam, a in co["analogies"].items():
        assert f(a["mean_acc"]) in page and f(a["mean_chance"]) in page
        assert all(x["analogy"] in page and f(x["acc"]) in page for x in a["items"])
    assert res["retain"]["summary"][0] in page.replace("&#x27;", "'")
    assert all(f(v[s][k]) in page for v in res["novel"]["relations"].values() for s in ("test", "novel") for k in ("fv", "fv_tuned"))
    assert all(f(m[k][n]["acc"]) in page for m in res["baselines"]["relations"].values() for k in res["baselines"]["methods"] for n in ("10", "20"))
    assert all(f(v["fv_source_val"]) in page for v in res["transfer"]["relations"].values())
    assert f"rho of the RDMs' upper triangles {res['rsa']['rho']:.3f}".replace("'", "&#x27;") in page
    # ICL shots in numeric order (JSON keeps them as sorted text: "16" before "2").
    row_ks = re.findall(r"<tr><td>clean</td><td>(\d+)</td>", page)
    assert row_ks == ["0", "1", "2", "4", "16"]
    assert "no model given" in page
    out = tmp_path / "run" / "report"
    assert {"icl_mean.png", "icl_clean.png", "icl_corrupted.png", "summary_bars.png", "accuracy_vs_size.png", "learning_curves.png"} <= {
        p.name for p in out.glob("*.png")}  # fine-tuning figures redrawn from results.json in the current style
    assert ".figs{display:flex;flex-direction:column" in page and "calc(50%" not in page  # one figure per row, never shrunk to half
    # Deterministic: the same inputs give the same bytes.
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    build_report(tmp_path / "run")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first


def test_missing_and_skipped_stages(tmp_path):
    make_results(tmp_path / "run", stages=("icl",))
    page = build_report(tmp_path / "run").read_text()
    _self_contained(page)
    for stage in ("cma", "eval", "finetune", "compose"):
        assert f"stage {stage} not run" in page
    for heading in [s.title for s in sections()]:
        assert heading.replace("'", "&#x27;") in page
    write_json(tmp_path / "run" / "compose" / "results.json", {"skipped": "needs all four cardinal relations"})
    page = build_report(tmp_path / "run").read_text()
    assert "stage compose not run (skipped: needs all four cardinal relations)" in page
    empty = tmp_path / "empty"
    empty.mkdir()
    page = build_report(empty).read_text()
    assert "no config.toml" in page and page.count("not run") >= 6


@pytest.fixture(scope="module")
def lmm():
    from mmfv.testing import random_tiny

    return random_tiny()


def test_example_strip_with_model(tmp_path, lmm):
    root = tmp_path / "run"
    make_results(root, stages=("eval",), model=lmm.model_id)
    torch.manual_seed(0)
    means = torch.randn(lmm.n_layers, lmm.n_heads, lmm.head_dim)
    for i, r in enumerate(RELS):
        V.build(lmm, means, [(i % L, i % H), ((i + 1) % L, (i + 2) % H)], r).save(root / "vectors" / f"{r}.safetensors")
    page = build_report(root, lmm=lmm, examples=5).read_text()
    _self_contained(page)
    strip = page[page.index('id="examples"'):]
    assert strip.count("<figure>") == 5 and strip.count("without FV:") == 5 and strip.count("with FV (layer") == 5
    assert re.search(r"Right without the vector: \d/5; with it: \d/5", strip)
    for r in RELS:  # relations in turn
        assert f"<b>{r}</b> of <i>" in strip
    assert strip.count('class="ok"') + strip.count('class="bad"') == 10
    assert sorted(p.name for p in (root / "report").glob("example_*.png")) == [f"example_{i}.png" for i in range(5)]
    # The first example is the first zero-shot test prompt of the first relation.
    from mmfv import prompts as P
    from mmfv.settings import DataSettings

    test = DataSettings(test_scenes=200).items(lmm, "test", RELS)
    (p,) = P.build("zero-shot", test["above"], test, 0, 1, 0)
    assert f"<b>above</b> of <i>{p.query.query}</i><br>correct: <b>{p.answer}</b>" in strip
    # Fewer examples later: stale example PNGs go.
    build_report(root, lmm=lmm, examples=2)
    assert sorted(p.name for p in (root / "report").glob("example_*.png")) == ["example_0.png", "example_1.png"]


def test_vectors_of_another_model_are_refused(tmp_path, lmm):
    from mmfv.testing import random_tiny

    root = tmp_path / "run"
    make_results(root, stages=("eval",))
    other = random_tiny(layers=3)
    for r in RELS:
        V.build(other, torch.randn(3, 4, 8), [(0, 0)], r).save(root / "vectors" / f"{r}.safetensors")
    page = build_report(root, lmm=lmm).read_text()
    assert "examples not shown" in page and "re-extract the vectors" in page and "<figure>" not in page
