"""mmfv-tiny behind the LMM protocol: the contracts every later method relies on."""

from __future__ import annotations

import json
import random

import pytest
import torch

from mmfv import hooks
from mmfv import prompts as P
from mmfv.data import scenes as S
from mmfv.data import synthetic
from mmfv.models import load_model
from mmfv.models.tiny.adapter import TinyLMM, check_folder
from mmfv.models.tiny.modeling import MmfvTinyConfig, MmfvTinyForCausalLM
from mmfv.models.tiny.tokenizer import IMG, TinyTokenizer
from tests.models import contract

SCENE = S.SceneConfig(grid=4, cell_px=8)
RELS = ("above", "below", "left", "right")


def random_tiny(seed: int = 0, layers: int = 2, heads: int = 4, hidden: int = 32) -> TinyLMM:
    torch.manual_seed(seed)
    tok = TinyTokenizer.default(SCENE.grid**2)
    cfg = MmfvTinyConfig(
        vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=2 * hidden, grid=SCENE.grid, cell_px=SCENE.cell_px, image_token_id=IMG,
    )
    model = MmfvTinyForCausalLM(cfg).eval()
    with torch.no_grad():  # init std 0.02 is too small for heads to matter; scale up
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(10.0)
    return TinyLMM(model, tok, "random-tiny", {"scene_config": SCENE.__dict__})


@pytest.fixture(scope="module")
def lmm() -> TinyLMM:
    return random_tiny()


@pytest.fixture(scope="module")
def data():
    return synthetic.items("test", 60, RELS, seed=0, config=SCENE)


@pytest.fixture(scope="module")
def batch(lmm, data):
    prompts = P.build("clean", data["left"], data, 3, 4, 0) + P.build("corrupted", data["above"], data, 2, 3, 1)
    return lmm.encode(prompts)


def test_sizes_and_modules(lmm):
    assert (lmm.n_layers, lmm.n_heads, lmm.head_dim, lmm.hidden_size) == (2, 4, 8, 32)
    assert lmm.o_proj(1).in_features == lmm.n_heads * lmm.head_dim


def test_left_padding_does_not_change_logits(lmm, data):
    short, long = P.build("clean", data["left"], data, 1, 1, 0)[0], P.build("clean", data["left"], data, 4, 1, 0)[0]
    alone = lmm.last_logits(lmm.encode([short]))
    padded = lmm.last_logits(lmm.encode([short, long]))[0:1]
    assert torch.allclose(alone, padded, atol=1e-5)


def test_head_read_replace_round_trip_leaves_logits_unchanged(lmm, batch):
    with hooks.read_heads(lmm) as store:
        ref = lmm.forward(batch)
    B = batch.size
    patches = {l: (torch.arange(B).repeat_interleave(lmm.n_heads), torch.arange(lmm.n_heads).repeat(B), store[l].reshape(-1, lmm.head_dim)) for l in store}
    with hooks.patch_heads(lmm, patches):
        out = lmm.forward(batch)
    assert torch.equal(ref, out)


def test_patching_last_position_changes_nothing_earlier(lmm, batch):
    ref = lmm.forward(batch)
    B = batch.size
    with hooks.patch_heads(lmm, {0: (torch.arange(B), torch.zeros(B, dtype=torch.long), torch.full((B, lmm.head_dim), 5.0))}):
        out = lmm.forward(batch)
    assert torch.equal(ref[:, :-1], out[:, :-1])
    assert (ref[:, -1] - out[:, -1]).abs().max() > 1e-3  # and the last position did change


def test_added_vector_gets_gradient_with_weights_frozen(lmm, batch):
    contract.vector_gets_gradient_with_weights_frozen(lmm, batch, 0)


def test_prefix_then_last_equals_full_forward(lmm, batch):
    full = lmm.forward(batch)[:, -1]
    fast = lmm.last(lmm.prefix(batch), repeats=3).view(batch.size, 3, -1)
    assert (fast - full[:, None]).abs().max() < 1e-5


def test_image_features_are_cached_per_image(lmm, data):
    contract.images_encoded_once(lmm, P.build("clean", data["left"], data, 3, 2, 0), lmm.module.model.patch_embed)


def test_answer_probs_and_generation(lmm, batch):
    p = lmm.answer_probs(batch)
    assert p.shape == (batch.size,) and bool(((p > 0) & (p < 1)).all())
    texts = lmm.generate(batch.prompts[:2], max_new_tokens=3)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


def test_save_and_load_round_trip(lmm, batch, tmp_path):
    lmm.module.save_pretrained(tmp_path)
    lmm.tok.save(tmp_path)
    again = load_model(str(tmp_path))
    assert torch.equal(again.forward(batch), lmm.forward(batch))


def test_bad_checkpoint_folders(tmp_path, lmm):
    with pytest.raises(FileNotFoundError, match="missing"):
        check_folder(tmp_path)
    lmm.module.save_pretrained(tmp_path)
    lmm.tok.save(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["model_type"] = "llama"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="not mmfv_tiny"):
        check_folder(tmp_path)


def test_wrong_image_size_and_too_long_prompt(lmm, data):
    with pytest.raises(ValueError, match="takes 3x32x32 images"):
        lmm.module.encode_images(torch.zeros(1, 3, 40, 40))
    long = P.build("clean", data["left"], data, 30, 1, 0)
    with pytest.raises(ValueError, match="exceeds mmfv-tiny's context"):
        lmm.forward(lmm.encode(long))


def test_hooks_fail_loudly(lmm, batch):
    with pytest.raises(hooks.HookError, match="out of range"):
        with hooks.add_to_layer(lmm, 7, torch.zeros(lmm.hidden_size)):
            pass
    with pytest.raises(hooks.HookError, match="never ran"):
        with hooks.read_heads(lmm, layers=[0]):
            pass  # no forward: the hook matched nothing


def test_shipped_mmfv_tiny_loads_and_learns_in_context():
    """The packaged weights: load by name, card present, and accuracy rises with demonstrations."""
    from mmfv.evaluate import icl

    lmm = load_model("tiny")
    assert lmm.card.get("name") == "mmfv-tiny" and "icl_test" in lmm.card
    data = synthetic.items("test", 300, RELS, seed=0, config=lmm.scene_config())
    res = icl(lmm, data, data, [0, 8], 50, kinds=("clean",))
    assert res["clean"]["8"]["mean"]["acc"] > res["clean"]["0"]["mean"]["acc"] + 0.3
