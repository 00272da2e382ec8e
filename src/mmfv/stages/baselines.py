"""Stage ``baselines`` (opt-in): LoRA on the attention projections and soft prompt tuning, with the
backbone frozen, trained exactly as the fine-tuned FV is (the finetune stage's prompts, sizes,
epochs, batch size, schedule, epoch chosen on val), reported on ``test`` by training-set size
beside the extracted and fine-tuned FV, with the number of trained parameters of each."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

from pydantic import Field

from mmfv import prompts as P
from mmfv.report import html as H
from mmfv.settings import Count, Section
from mmfv.stages.base import Context, ReportSection, Stage, StageSkipped

LR = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class BaselinesSettings(Section):
    enabled: bool = Field(False, description="train the LoRA and prompt-tuning baselines (opt-in: minutes on mmfv-tiny)")
    lora_ranks: list[Count] = Field(default_factory=lambda: [1, 4, 8], description="LoRA ranks (every layer's attention projections)")
    prompt_tokens: list[Count] = Field(default_factory=lambda: [1, 4, 16], description="soft prompt lengths (virtual tokens)")
    sizes: list[Count] = Field(default_factory=list, description="training-set sizes (empty: the finetune stage's sizes)")
    lora_lr: LR = Field(0.0, description="LoRA learning rate (0: finetune.lr)")
    prompt_lr: LR = Field(0.0, description="soft prompt learning rate (0: finetune.lr)")


def methods(c: BaselinesSettings) -> list[tuple[str, str, int]]:
    """(name, kind, size) of every baseline: ("LoRA r=4", "lora", 4), ("prompt 16 tokens", "prompt", 16)."""
    return [(f"LoRA r={r}", "lora", r) for r in c.lora_ranks] + [(f"prompt {n} token{'s' * (n > 1)}", "prompt", n) for n in c.prompt_tokens]


def run(ctx: Context) -> dict:
    import dataclasses

    from mmfv import baselines as B
    from mmfv import evaluate
    from mmfv.cma import prompts_fingerprint
    from mmfv.execution import Checkpoint
    from mmfv.finetune import FinetuneSettings

    c, f, lmm, seed, bs = ctx.cfg.baselines, ctx.cfg.finetune, ctx.lmm, ctx.seed, ctx.cfg.run.batch_size
    if not c.enabled:
        raise StageSkipped("opt-in: set baselines.enabled = true")
    ft = ctx.results("finetune")
    sizes = list(c.sizes or f.sizes)
    base = FinetuneSettings(epochs=f.epochs, lr=f.lr, schedule=f.schedule, batch_size=f.batch_size, seed=seed)
    train, val, test = ctx.items("train"), ctx.items("val"), ctx.items("test")
    t0 = time.perf_counter()
    res: dict = {"sizes": sizes, "methods": {}, "relations": {}}
    for rel in ctx.relations:
        if max(sizes) > len(train[rel]):
            raise ValueError(f"config key baselines.sizes: {max(sizes)} exceeds the {len(train[rel])} {rel} items of the train split")
        zs_val = P.build("zero-shot", val[rel], val, 0, f.n, seed)
        zs_test = P.build("zero-shot", test[rel], test, 0, f.n, seed)
        fr = ft["relations"][rel]
        r: dict = {"fv": fr["fv"], "fv_tuned": {n: b["fv_tuned"] for n, b in fr["by_size"].items() if int(n) in sizes}}
        for name, kind, k in methods(c):
            settings = dataclasses.replace(base, lr=(c.lora_lr if kind == "lora" else c.prompt_lr) or base.lr)
            r[name] = {}
            for n in sizes:
                tr = P.build("zero-shot", train[rel], train, 0, n, seed)
                fp = {"train": prompts_fingerprint(tr), "val": prompts_fingerprint(zs_val), "test": prompts_fingerprint(zs_test), "method": [kind, k],
                      "model": lmm.config_hash(), "settings": dataclasses.asdict(settings)}
                ck = Checkpoint(ctx.dir("baselines") / "checkpoints" / f"{rel}_{kind}{k}_n{n}.safetensors", fp)  # a rerun skips finished trainings
                if (done := ck.load()) is None:
                    with ctx.ex.scope(f"{rel} {name} n={n}"), (B.lora(lmm, k) if kind == "lora" else B.soft_prompt(lmm, k)) as params:
                        got = B.train(lmm, params, tr, zs_val, settings, ctx.ex, f"{name} n={n}")
                        acc = evaluate.accuracy(lmm, zs_test, batch_size=bs, ex=ctx.ex)["acc"]
                    done = {"acc": acc, "best_epoch": got.best_epoch, "val_acc": got.best_val_acc, "params": got.n_params}
                    ck.save(done)
                r[name][str(n)] = {key: done[key] for key in ("acc", "best_epoch", "val_acc")}
                res["methods"][name] = {"kind": kind, "size": k, "params": done["params"], "lr": settings.lr}
        res["relations"][rel] = r
        ctx.ex.info("  %s: %s", rel, "  ".join(f"{m} {r[m][str(max(sizes))]['acc']:.3f}" for m, *_ in methods(c)))
    res["params_fv"] = lmm.hidden_size
    ctx.ex.info("baselines trained in %.1fs (the run's timings.json keeps it)", time.perf_counter() - t0)  # not in results: they stay reproducible
    out = {"model": lmm.model_id, "n_eval": f.n, "epochs": f.epochs, **res}
    ctx.write("baselines", out)
    return out


def _mean(res: dict, method: str, n: str) -> float | None:
    vals = []
    for v in res["relations"].values():
        x = v["fv"] if method == "fv" else (v["fv_tuned"].get(n) if method == "fv_tuned" else v[method].get(n, {}).get("acc"))
        vals.append(x)
    return H.mean(vals)


def _took(res: H.Results) -> str:
    """The sentence ending the caption: how long the stage took (the run's timings.json), or nothing."""
    try:
        from mmfv.io import read_json

        return f" The stage took {float(read_json(res.root / 'timings.json')['baselines']):.0f} s."
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def section(res: H.Results, out: Path) -> str:
    if (why := res.why_not_shown("baselines")) is not None:
        return why
    j = res.json("baselines")
    sizes = [str(s) for s in j["sizes"]]
    d = j.get("params_fv")
    rows = [["extracted FV", d, *[_mean(j, "fv", n) for n in sizes]], ["fine-tuned FV", d, *[_mean(j, "fv_tuned", n) for n in sizes]]]
    order = sorted(j["methods"], key=lambda m: (j["methods"][m]["kind"], j["methods"][m]["size"]))  # JSON sorts names as text
    rows += [[m, j["methods"][m]["params"], *[_mean(j, m, n) for n in sizes]] for m in order]
    html = H.table(["method", "trained parameters", *[f"n={n}" for n in sizes]], rows,
                   caption=f"Zero-shot test accuracy, mean over relations ({H.esc(j.get('n_eval', '?'))} prompts each), by training-set size; every method "
                           f"trained like the fine-tuned FV ({H.esc(j.get('epochs', '?'))} epochs, epoch chosen on val), the backbone frozen. "
                           f"The extracted FV is not trained (its d = {H.esc(d)} values come from the means).{_took(res)}")
    per = [[r, m, *[v[m].get(n, {}).get("acc") for n in sizes]] for r, v in j["relations"].items() for m in order]
    return html + res.fold("Baselines per relation", H.table(["relation", "method", *[f"n={n}" for n in sizes]], per))


def table(res: dict) -> list[dict]:
    """One row per (relation, method, training size): test accuracy, epoch and val accuracy, trained parameters."""
    if "skipped" in res:
        return []
    return [{"relation": r, "method": m, "params": meta["params"], "train_size": int(n), **b}
            for r, v in res["relations"].items() for m, meta in res["methods"].items() for n, b in v[m].items()]


STAGE = Stage("baselines", "LoRA and soft prompt tuning at the fine-tuned FV's data and budget (opt-in)", run, needs=("finetune",),
              section="baselines", settings=BaselinesSettings, reads=("finetune",),
              report=(ReportSection("baselines", "Baselines: LoRA and prompt tuning vs the function vector", section),), table=table)
