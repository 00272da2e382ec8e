"""Text: items without an image in any family (no placeholder, no vision work), text-only families
(their template, refusing images, loading from a folder), and `mmfv run` end to end on a GGUF text
model with Todd et al.-style task files."""

from __future__ import annotations

import json

import pytest
import torch

from mmfv import prompts as P
from mmfv.data import tasks
from mmfv.models import load_model, specs
from mmfv.models.hf import HFLMM
from tests.models import cases


def _text_items() -> dict:
    return cases.data("llama")  # the test scenes' items without their images


def test_text_template_is_todds_format():
    a, b, q = (P.Item(P.text_id(x), x, y, "antonym") for x, y in (("hot", "cold"), ("big", "small"), ("up", "down")))
    prompt = P.Prompt((a, b), q, "clean")
    assert P.TEXT.render(prompt) == "Q: hot\nA: cold\n\nQ: big\nA: small\n\nQ: up\nA:"
    assert P.TEXT.answer_text(prompt) == " down"
    assert P.FLAMINGO.render(prompt) == "Q: hot. A: cold.<|endofchunk|>Q: big. A: small.<|endofchunk|>Q: up. A:"  # ours, no image token
    for fam in cases.TEXT:
        assert specs.get(fam).template is P.TEXT and not specs.get(fam).images


@torch.no_grad()
def test_a_vision_family_runs_text_items_without_vision():
    lmm = cases.model("llava")
    items = _text_items()
    prompts = P.build("clean", items["left"], items, 2, 3, 0) + [P.zero_shot(items["below"][0])]
    calls = []
    orig = lmm._features
    lmm._features = lambda px: calls.append(1) or orig(px)
    try:
        batch = lmm.encode(prompts)
    finally:
        del lmm._features
    assert not calls and lmm.image_token_id not in batch.inputs["input_ids"].tolist()[0]
    assert lmm.render(prompts[0]) == lmm.template.render(prompts[0]) and "<image>" not in lmm.render(prompts[0])
    pre = lmm.prefix(batch)
    assert (lmm.last(pre, 2).view(batch.size, 2, -1) - lmm.forward(batch)[:, None, -1]).abs().max() <= cases.TOL


def test_a_text_only_family_refuses_items_with_images():
    lmm = cases.model("llama")
    scenes = cases.data()  # with images
    with pytest.raises(ValueError, match="is a text-only model \\(llama\\) but item .* has an image") as e:
        lmm.encode([P.zero_shot(scenes["left"][0])])
    assert "\n" not in str(e.value)


@torch.no_grad()
def test_last_logits_keep_only_the_last_position():
    lmm = cases.model("qwen3")
    batch = lmm.encode(cases.mixed_prompts(_text_items()))
    assert (lmm.last_logits(batch) - lmm.forward(batch)[:, -1]).abs().max() <= cases.TOL


@pytest.mark.parametrize("family", cases.TEXT)
def test_load_model_routes_a_saved_text_model_to_its_spec(family, tmp_path):
    lmm = cases.model(family)
    lmm.module.save_pretrained(tmp_path)
    lmm.tok.save_pretrained(tmp_path)
    again = load_model(str(tmp_path))
    assert isinstance(again, HFLMM) and again.spec is lmm.spec and again.tok is again.processor
    batch = again.encode(cases.mixed_prompts(_text_items()))  # the reloaded tokenizer (AutoTokenizer may pick the family's class)
    assert torch.equal(again.forward(batch), lmm.forward(batch))


def test_mmfv_run_end_to_end_on_a_gguf_text_model_with_task_files(tmp_path):
    """`mmfv run` on ``gguf:<file>`` with Todd et al.-format .json tasks: every stage, text only."""
    pytest.importorskip("gguf", reason="writing the GGUF file needs the gguf package: pip install 'mmfv[gguf]'")
    from mmfv import config as C
    from mmfv import runner
    from mmfv.testing.gguf import write_llama

    path = write_llama(cases.model("llama"), tmp_path / "tiny.gguf")
    colours = ["red", "blue", "green", "yellow", "purple", "orange"]
    shapes = ["circle", "square", "cross", "triangle", "ring", "star", "heart", "diamond", "moon", "arrow"]
    pairs = [(f"{c} {s}", f"{s} {c}") for c in colours for s in shapes]  # 60 unique inputs per task
    files = []
    for name, rows in (("swap", pairs), ("shape-of", [(a, b.split()[0]) for a, b in pairs])):
        f = tmp_path / f"{name}.json"
        f.write_text(json.dumps([{"input": a, "output": b} for a, b in rows]))
        files.append(str(f))
    cfg = C.from_dict({
        "model": {"name": f"gguf:{path}"},
        "data": {"dataset": "tasks", "files": files, "relations": []},
        "icl": {"shots": [0, 1], "n": 6},
        "cma": {"n_mean": 6, "n_cma": 3, "shots": 2, "top_k": 3, "batch_size": 2},
        "eval": {"n": 6, "head_counts": [1, 2]},
        "finetune": {"sizes": [8], "headline_size": 8, "epochs": 2, "shots": [1], "n": 6, "batch_size": 8},
        "compose": {"grid": [1.0], "shots": [1], "n": 6},
        "run": {"batch_size": 16, "threads": 1},
    })
    runner.run(cfg, tmp_path / "out", quiet=True)
    out = tmp_path / "out"
    page = (out / "report" / "report.html").read_text()
    assert "<pre>Q: " in page and not list((out / "report").glob("example_*.png"))  # text items: the prompt is the example
    cma = json.loads((out / "cma" / "results.json").read_text())
    assert set(cma["relations"]) == {"swap", "shape_of"} and (cma["n_layers"], cma["n_heads"]) == (2, 4)
    ev = json.loads((out / "eval" / "results.json").read_text())
    assert len(ev["relations"]["swap"]["layer_sweep_test"]) == 2
    ft = json.loads((out / "finetune" / "results.json").read_text())
    assert set(ft["relations"]) == {"swap", "shape_of"} and json.loads((out / "run.json").read_text())["state"] == "complete"


def test_first_token_collisions_count_answers_sharing_their_first_token():
    lmm = cases.model("llama")
    answers = ["red circle", "red square", "blue ring", "red circle", "green cross"]
    first = {a: lmm.answer_token_id(a) for a in answers}
    assert first["red circle"] == first["red square"] and len({first["blue ring"], first["green cross"], first["red circle"]}) == 3
    got = tasks.first_token_collisions(lmm, answers)
    assert (got["n_answers"], got["n_first_tokens"], got["collision_rate"]) == (4, 3, 0.5)
    assert got["top"] == [[lmm.decode([first["red circle"]]), 2, ["red circle", "red square"]]]
