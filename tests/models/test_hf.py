"""The HF adapter's own checks on every discovered family (tiny random models from the specs' data):
images placed and expanded as the processor does, the answer token, cross-attention gates, loading
folders, and runs through the stages. The LMM contract shared by every adapter is in
test_contract.py; the spec registry in test_specs.py."""

from __future__ import annotations

import json
import types

import pytest
import torch

from mmfv import hooks
from mmfv import prompts as P
from mmfv import vectors as V
from mmfv.models import load_model, specs
from mmfv.models.hf import HFLMM
from mmfv.testing import hf_tiny as build
from mmfv.testing import offline
from tests.models import cases

SCENE = cases.SCENE
TOL = cases.TOL


@pytest.fixture(scope="module")
def data():
    return cases.data()


def _family(name: str) -> types.SimpleNamespace:
    lmm = cases.model(name)
    prompts = cases.mixed_prompts(cases.data(name))
    return types.SimpleNamespace(lmm=lmm, prompts=prompts, batch=lmm.encode(prompts))


@pytest.fixture(scope="module", params=cases.VLM)
def fam(request):
    """A vision-language family (the image placement and processor checks)."""
    return _family(request.param)


@pytest.fixture(scope="module", params=cases.HF)
def anyfam(request):
    """Any family, text-only ones included."""
    return _family(request.param)


def test_head_dim_is_read_from_the_attention_module():
    lmm = build("gemma3", text=dict(head_dim=24, query_pre_attn_scalar=24))  # 4 heads x 24 != hidden 64
    assert (lmm.head_dim, lmm.n_heads, lmm.hidden_size, lmm.o_proj(0).in_features) == (24, 4, 64, 96)


def test_prompt_places_one_image_per_item(fam):
    lmm, batch = fam.lmm, fam.batch
    tok, img_id = lmm.tok, lmm.image_token_id
    for row, p in enumerate(batch.prompts):
        text = lmm.template.render(p)
        pieces = text.split(lmm.template.image_token)
        assert len(pieces) == p.k + 1 + 1
        for it, piece in zip(p.items, pieces[1:]):  # each image comes right before its own question
            assert piece.lstrip().startswith(f"Q: {it.query}.")
        ids = batch.inputs["input_ids"][row][batch.inputs["attention_mask"][row].bool()].tolist()
        per_image = [tok(lmm._image(it, p.k > 0).text, add_special_tokens=False)["input_ids"].count(img_id) for it in p.items]
        assert all(n > 0 for n in per_image) and ids.count(img_id) == sum(per_image)
        assert ids.index(img_id) < len(ids) - 1 and ids[-1] != img_id  # the prompt ends in text


def test_encoding_matches_the_processor_and_the_pixel_forward(fam):
    """Our text (cached per-image expansions) is the processor's, and cached vision features give the
    logits the model computes from pixels itself."""
    lmm, batch = fam.lmm, fam.batch
    proc = lmm.processor
    texts = [lmm.template.render(p) for p in batch.prompts]
    if lmm.spec.family == "idefics":  # its processor takes interleaved lists; feed the model pixels directly
        n = max(p.k + 1 for p in batch.prompts)
        pix = torch.zeros(batch.size, n, 3, 32, 32)
        for b, p in enumerate(batch.prompts):
            pix[b, : p.k + 1] = proc.image_processor([it.load_image() for it in p.items], return_tensors="pt")
        canon = {"input_ids": batch.inputs["input_ids"], "attention_mask": batch.inputs["attention_mask"], "pixel_values": pix, "image_attention_mask": batch.inputs["image_attention_mask"]}
    else:
        canon = dict(proc(text=texts, images=[p.images() for p in batch.prompts], padding=True, padding_side="left", return_tensors="pt"))
        assert torch.equal(canon["input_ids"], batch.inputs["input_ids"])
        for k in lmm._token_keys():
            assert torch.equal(torch.as_tensor(canon[k]), batch.inputs[k].cpu()), k
    canon["position_ids"] = batch.inputs["position_ids"]
    with torch.no_grad():
        pixels = lmm.module(**canon, use_cache=False).logits
    assert (pixels - lmm.forward(batch)).abs().max() <= TOL


# cross-attention block parameters: (attention gate, MLP gate) as each family names them
GATES = {"idefics": ("alpha_cross_attn", "alpha_dense"), "mllama": ("cross_attn_attn_gate", "cross_attn_mlp_gate")}


@pytest.mark.parametrize("family", sorted(GATES))
def test_cross_head_vector_is_what_the_head_writes_into_the_residual(family, data):
    """A cross head's FV term is tanh(gate) · W_O slice · a: checked against the residual change the
    patched head really makes (MLP gate closed, so the block adds only gated attention)."""
    lmm = build(family)
    attn_gate, mlp_gate = GATES[family]
    blocks = lmm._cross_blocks
    with torch.no_grad():
        for blk in blocks:
            getattr(blk, attn_gate).fill_(0.7)
            getattr(blk, mlp_gate).zero_()
    batch = lmm.encode(P.build("clean", data["left"], data, 1, 2, 0))
    B, layer, head = batch.size, lmm.head_sets["cross"].n_layers - 1, 2
    val = torch.randn(16, generator=torch.Generator().manual_seed(0))
    outs = []
    for v in (torch.zeros(16), val):
        box = {}
        h = blocks[layer].register_forward_hook(lambda m, a, o: box.update(out=(o[0] if isinstance(o, tuple) else o)[:, -1].detach()))
        try:
            with hooks.patch_heads(lmm, {layer: (torch.arange(B), torch.full((B,), head), v.expand(B, -1))}, head_set="cross"):
                lmm.forward(batch)
        finally:
            h.remove()
        outs.append(box["out"])
    gate = lmm.head_output_gate(layer, "cross")
    assert torch.allclose(gate, torch.full_like(gate, torch.tanh(torch.tensor(0.7)).item()))
    want = V.head_contribution(lmm, layer, head, val, "cross")
    assert (outs[1] - outs[0] - want).abs().max() <= TOL
    no_gate = lmm.o_proj(layer, "cross").weight[:, head * 16 : (head + 1) * 16].detach() @ val
    assert (want - no_gate).abs().max() > 1e-3  # the gate really matters here
    assert lmm.head_output_gate(0, "self") == 1.0


def test_answer_token_is_the_first_token_written_after_the_prompt(anyfam):
    lmm, batch = anyfam.lmm, anyfam.batch
    p = batch.prompts[0]
    kw = lmm._text_kwargs
    prompt_ids = lmm.tok(lmm.render(p), **kw)["input_ids"]
    with_answer = lmm.tok(lmm.render(p) + lmm.template.answer_text(p), **kw)["input_ids"]
    assert with_answer[: len(prompt_ids)] == prompt_ids
    assert int(batch.answer_ids[0]) == with_answer[len(prompt_ids)] == lmm.answer_token_id(p.answer)
    probs = lmm.answer_probs(batch)
    assert probs.shape == (batch.size,) and bool(((probs > 0) & (probs < 1)).all())


@pytest.mark.parametrize("style,vocab", [("metaspace", 400), ("bytelevel", 0), ("metaspace", 0)])
def test_answer_token_with_space_prepending_or_splitting_tokenizers(style, vocab):
    tok = offline.tokenizer(["<pad>", "<image>"], style=style, vocab=vocab, pad_token="<pad>")
    tmpl = specs.get("idefics3").template
    stub = types.SimpleNamespace(tok=tok, template=tmpl, _answer_ids={})
    prompt = "<image>Q: red ring. A: blue square.\n<image>Q: green cross. A:"
    for answer in ("blue square", "yellow triangle"):
        pieces = tok(tmpl.answer_prefix + answer, add_special_tokens=False)["input_ids"]
        if vocab == 0:
            assert len(pieces) > 2  # the answer really splits into several tokens
        n = len(tok(prompt)["input_ids"])
        first = tok(prompt + tmpl.answer_prefix + answer)["input_ids"][n]
        assert HFLMM.answer_token_id(stub, answer) == first
        assert answer.startswith(tok.decode([first]).strip())  # a piece of the answer (maybe just its space)


def _save(lmm: HFLMM, folder) -> None:
    lmm.module.save_pretrained(folder)
    try:
        lmm.processor.save_pretrained(folder)
    except AttributeError:  # no video processor (torchvision missing): save the parts it has
        name = type(lmm.processor).__name__
        lmm.processor.image_processor.save_pretrained(folder)
        lmm.processor.tokenizer.save_pretrained(folder)
        # as on the hub: the processor's own settings (e.g. image_seq_len) in processor_config.json
        import inspect

        own = {k: getattr(lmm.processor, k) for k in inspect.signature(type(lmm.processor).__init__).parameters
               if not k.endswith(("_processor", "tokenizer", "template")) and isinstance(getattr(lmm.processor, k, None), (int, float, str, bool))}
        (folder / "processor_config.json").write_text(json.dumps({"processor_class": name, **own}))
        # as on the hub: a video processor config, which cannot load without torchvision
        video = {"video_processor_type": name.replace("Processor", "VideoProcessor"), "processor_class": name}
        (folder / "video_preprocessor_config.json").write_text(json.dumps(video))


@pytest.mark.parametrize("family", ["qwen2_vl", "smolvlm", "mllama"])
def test_load_model_routes_a_local_folder_to_the_spec(family, tmp_path, data):
    lmm = cases.model(family)
    _save(lmm, tmp_path)
    again = load_model(str(tmp_path))
    assert isinstance(again, HFLMM) and again.spec is lmm.spec
    prompts = P.build("clean", data["left"], data, 1, 2, 0)
    assert torch.equal(again.forward(again.encode(prompts)), lmm.forward(lmm.encode(prompts)))


def test_load_model_one_line_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    with pytest.raises(specs.UnsupportedModel, match="supported are gemma3, gemma3_text, idefics,") as e:
        load_model(str(tmp_path))
    assert "\n" not in str(e.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(str(tmp_path / "missing"))


def test_load_options_dtype_and_one_line_errors(tmp_path, data):
    lmm = cases.model("llava")
    _save(lmm, tmp_path)
    half = load_model(str(tmp_path), dtype="bfloat16")
    assert half.dtype == torch.bfloat16 and half.forward(half.encode(P.build("clean", data["left"], data, 1, 1, 0))).dtype == torch.bfloat16
    prompts = P.build("clean", data["left"], data, 1, 2, 0)
    mapped = load_model(str(tmp_path), device_map="cpu")  # the accelerate path, on the one device there is
    assert torch.equal(mapped.forward(mapped.encode(prompts)), lmm.forward(lmm.encode(prompts)))
    with pytest.raises(ValueError, match="dtype 'int8' is not supported"):
        load_model(str(tmp_path), dtype="int8")
    with pytest.raises(ValueError, match="either a device or a device_map"):
        load_model(str(tmp_path), device="cpu", device_map="auto")
    with pytest.raises(ValueError, match="runs on the CPU in float32"):
        load_model("tiny", device_map="auto")


def test_cross_head_cma_and_vector_through_the_stages(tmp_path):
    """``[cma] head_set = "cross"`` end to end on a cross-attention family: means, CMA, FV extraction
    with the gate folded in (the FV is the sum of gated head contributions)."""
    from mmfv import config as C
    from mmfv.stages import cma, means, vectors
    from mmfv.stages.base import Context

    lmm = build("idefics")
    lmm.scene_config = lambda: SCENE
    small = {"data": {"eval_scenes": 60, "relations": ["left"]}, "cma": {"n_mean": 4, "n_cma": 2, "shots": 1, "top_k": 3}}
    cross = C.from_dict({**small, "cma": {**small["cma"], "head_set": "cross"}})
    means.run(Context(cross, tmp_path, _lmm=lmm))
    with pytest.raises(ValueError, match="holds means of the 'cross' heads"):
        cma.run(Context(C.from_dict(small), tmp_path, _lmm=lmm))
    res = cma.run(Context(cross, tmp_path, _lmm=lmm))
    assert res["head_set"] == "cross" and len(res["relations"]["left"]["aie"]) == lmm.head_sets["cross"].n_layers
    vectors.run(Context(cross, tmp_path, _lmm=lmm))
    fv = V.FunctionVector.load(tmp_path / "vectors" / "left.safetensors")
    c = cma.load(tmp_path / "cma", "left")
    want = sum(V.head_contribution(lmm, l, h, c.means[l, h], "cross") for l, h in fv.heads)
    assert c.head_set == "cross" and torch.allclose(fv.vector, want)


@pytest.mark.parametrize("family,head_set", [("qwen2_5_vl", "self"), ("idefics", "cross")])
def test_mmfv_run_end_to_end_on_a_saved_hf_model(family, head_set, tmp_path):
    """`mmfv run` on an HF model folder: every stage, no code that names the family."""
    from mmfv import config as C, runner

    _save(build(family), tmp_path / "model")
    cfg = C.from_dict({
        "model": {"name": str(tmp_path / "model")},
        "data": {"eval_scenes": 60, "train_scenes": 80, "val_scenes": 40, "test_scenes": 60},
        "icl": {"shots": [0, 1], "n": 6},
        "cma": {"n_mean": 6, "n_cma": 3, "shots": 2, "top_k": 3, "batch_size": 2, "head_set": head_set},
        "eval": {"n": 6, "head_counts": [1, 2]},
        "finetune": {"sizes": [8], "headline_size": 8, "epochs": 2, "shots": [1], "n": 6, "batch_size": 8},
        "compose": {"grid": [1.0], "shots": [1], "n": 6},
        "run": {"batch_size": 16, "threads": 1},
    })
    timings = runner.run(cfg, tmp_path / "out", quiet=True)
    assert list(timings) == list(runner.STAGES)
    cma_res = json.loads((tmp_path / "out" / "cma" / "results.json").read_text())
    assert cma_res["head_set"] == head_set and cma_res["n_layers"] == 2 and cma_res["n_heads"] == 4
    ft = json.loads((tmp_path / "out" / "finetune" / "results.json").read_text())
    assert set(ft["mean"]) == {"icl_best", "fv", "fv_tuned", "fv_random_init"}
    assert (tmp_path / "out" / "report" / "report.html").exists()


QWEN_CHAT = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}{% if c['type'] == 'image' %}"
             "<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
             "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")  # the shape of Qwen-VL's own template


def test_fu2025_qwen3_vl_prompt_goes_through_the_chat_template_with_the_papers_system_message():
    """Protocol fu2025 on (offline tiny) Qwen3-VL: the paper's messages through the processor's chat
    template — system message, interleaved images and Q:x. A:y. lines, the generation prompt — and
    the batch encodes with every image expanded."""
    from PIL import Image

    from mmfv import prompts as P
    from mmfv.testing import hf_tiny

    lmm = hf_tiny("qwen3_vl")
    lmm.processor.chat_template = QWEN_CHAT
    assert lmm.use_protocol("fu2025") and not build("llava").use_protocol("fu2025")
    items = [P.Item(f"q{i}", q, a, "holding", Image.new("RGB", (32, 32), (40 * i, 90, 200))) for i, (q, a) in enumerate([("man", "phone"), ("boy", "ball")])]
    p = P.Prompt((items[0],), items[1], "clean")
    text = lmm._text(p)
    img = "<|vision_start|><|image_pad|><|vision_end|>"
    assert text == (f"<|im_start|>system\n{P.FU2025_SYSTEM}<|im_end|>\n<|im_start|>user\n{img}Q:man. A:phone.\n{img}Q:boy. A:<|im_end|>\n"
                    "<|im_start|>assistant\n")
    batch = lmm.encode([p])
    assert batch.inputs["input_ids"].shape[0] == 1 and torch.isfinite(lmm.last_logits(batch)).all()
    assert lmm.answer_token_id("ball") == lmm.tok("ball", add_special_tokens=False)["input_ids"][0]  # read right after "A:"
    lmm.processor.chat_template = None
    lmm.tok.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        lmm.encode([p])
