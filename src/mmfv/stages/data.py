"""Stage ``data``: what the run's items are — the dataset, its items per split and relation, the
chance level of each relation's test queries, and what each filter of a real dataset dropped."""

from __future__ import annotations

from pathlib import Path

from mmfv.report import html as H
from mmfv.settings import SPLITS
from mmfv.stages.base import Context, ReportSection, Stage

NOTES = {
    "synthetic": "Synthetic scenes drawn in the model's style; chance = 1 / objects in the scene.",
    "gqa": "GQA images; chance = 1 / distinct object names in the image.",
    "vsr": "VSR names only two objects per caption: chance is 0.5 there (lower where an image's captions pool more names).",
    "tasks": "Your task file; chance = 1 / candidates where items list candidates, else open vocabulary (no chance level).",
}


def chance(items) -> float | None:
    """Mean of 1 / candidates over items (None when no item lists candidates: open vocabulary)."""
    with_c = [it for it in items if it.candidates]
    if not with_c:
        return None
    return round(sum(1.0 / len(it.candidates) for it in with_c) / len(with_c), 4)


def run(ctx: Context) -> dict:
    d = ctx.cfg.data
    rels = ctx.relations
    dropped: dict = {}
    by_split = {}
    for split in SPLITS:
        items = d.items(ctx.lmm, split, None, report=dropped if split == "eval" else None)
        by_split[split] = {r: len(items.get(r, [])) for r in rels}
        if split == "test":
            ch = {r: chance(items.get(r, [])) for r in rels}
    out = {"dataset": d.dataset, "protocol": ctx.cfg.run.protocol, "relations": rels, "items": by_split, "chance": ch,
           "files": list(d.files), "image_dir": d.image_dir, "dropped": {k: v for k, v in dropped.items() if not k.startswith("kept:")},
           "note": NOTES[d.dataset]}
    ctx.ex.info("data: %s, relations %s; test items %s; chance %s", d.dataset, ", ".join(rels), by_split["test"], ch)
    ctx.write("data", out)
    return out


def section(res: H.Results, out: Path) -> str:
    if (why := res.why_missing("data")) is not None:
        return why
    j = res.json("data")
    rows = [[r, *[j["items"][s].get(r) for s in SPLITS], j["chance"].get(r)] for r in j["relations"]]
    html = H.table(["relation", *[f"{s} items" for s in SPLITS], "chance (test)"], rows,
                   caption=f"Dataset <b>{H.esc(j['dataset'])}</b>, protocol {H.esc(j.get('protocol', 'mmfv'))}. {H.esc(j.get('note', ''))}")
    if j.get("files"):
        html += H.note("files: " + ", ".join(j["files"]) + (f"; images: {j['image_dir']}" if j.get("image_dir") else ""))
    if j.get("dropped"):
        html += "<h3>What the filters dropped</h3>" + H.table(["filter", "dropped"], sorted(j["dropped"].items()))
    return html


def table(res: dict) -> list[dict]:
    """One row per (relation, split): items, and the test split's chance level."""
    return [{"relation": r, "split": s, "items": res["items"][s].get(r), "chance": res["chance"].get(r)} for r in res["relations"] for s in res["items"]]


STAGE = Stage("data", "the run's items: dataset, items per split and relation, chance levels", run,
              report=(ReportSection("data", "Data: items per split and chance levels", section),), table=table)
