"""The native OpenFlamingo: logit equality with the open-flamingo package's own Flamingo class, the
released checkpoint's key layout, folders, and what only OpenFlamingo has (cross-attention head set,
media per row). The LMM contract it shares with every adapter is in test_contract.py.

The reference package (open-flamingo 2.0.1, open_clip 2.20.0, einops, einops-exts; all --no-deps)
is installed once by scripts/openflamingo_reference_env.sh into a folder under the temp dir keyed
by the pinned versions — never into .venv — and put on sys.path only while importing it. Where PyPI
cannot be reached the reference tests skip (set MMFV_REQUIRE_REFERENCE=1 to make that a failure).
"""

from __future__ import annotations

import collections.abc
import itertools
import os
import subprocess
import sys
import types
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mmfv import prompts as P
from mmfv.data import synthetic
from mmfv.models.openflamingo import (
    ClipImageProcessor,
    ClipVisionEncoder,
    FlamingoConfig,
    OpenFlamingo,
    OpenFlamingoLMM,
    VisionConfig,
    from_folder,
    load_openflamingo_state_dict,
    reference_state_dict,
    reference_to_native_key,
    save_folder,
    vision_state_dict,
)
from mmfv.testing.openflamingo import randomize_, tiny_parts, tiny_random, tiny_tokenizer
from tests.models import cases

pytestmark = pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")  # the reference passes it

REPO = Path(__file__).resolve().parents[2]
SCENE = cases.SCENE
RELS = ("above", "below", "left", "right")
TOL = cases.TOL


# --------------------------------------------------------------------------------------------------
# The reference package
# --------------------------------------------------------------------------------------------------


def _to_2tuple(x):
    return x if isinstance(x, collections.abc.Iterable) else tuple(itertools.repeat(x, 2))


@pytest.fixture(scope="module")
def reference():
    """open_flamingo.Flamingo & co., imported from the test-only install with open_clip stubbed.

    ``import open_clip`` (open_flamingo's factory) gets a bare package object pointing at the real
    open_clip folder, so ``open_clip.transformer`` (the VisionTransformer OpenFlamingo used) loads
    without the package __init__, which would import torchvision.
    """
    try:
        out = subprocess.run(["bash", str(REPO / "scripts" / "openflamingo_reference_env.sh")], capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHON": sys.executable})
    except (OSError, subprocess.TimeoutExpired) as e:
        out = SimpleNamespace(returncode=1, stdout="", stderr=str(e))
    if out.returncode != 0:
        msg = f"open-flamingo reference could not be installed (PyPI unreachable?): {out.stderr.strip()[-300:]}"
        if os.environ.get("MMFV_REQUIRE_REFERENCE"):
            pytest.fail(msg)
        pytest.skip(msg)
    target = out.stdout.strip().splitlines()[-1]
    # The folder stays importable while this module's tests run (einops imports its torch backend
    # lazily); sys.path and sys.modules are put back at teardown.
    names = ("open_clip", "open_flamingo", "einops", "einops_exts")
    saved_path, saved_mods = list(sys.path), {k: v for k, v in sys.modules.items() if k.split(".")[0] in names}
    try:
        sys.path.insert(0, target)
        oc = types.ModuleType("open_clip")
        oc.__path__ = [str(Path(target) / "open_clip")]
        ut = types.ModuleType("open_clip.utils")
        ut.to_2tuple = _to_2tuple
        sys.modules.update({"open_clip": oc, "open_clip.utils": ut})
        import open_clip.transformer as oct
        import open_flamingo
        from open_flamingo.src.flamingo_lm import FlamingoLMMixin
        from open_flamingo.src.utils import extend_instance

        yield SimpleNamespace(Flamingo=open_flamingo.Flamingo, FlamingoLMMixin=FlamingoLMMixin, extend_instance=extend_instance,
                              VisionTransformer=oct.VisionTransformer, QuickGELU=oct.QuickGELU, path=target)
    finally:
        sys.path[:] = saved_path
        for k in [k for k in sys.modules if k.split(".")[0] in names]:
            del sys.modules[k]
        sys.modules.update(saved_mods)


def build_reference(ref, tok, seed: int, cross_every: int = 2):
    """open_flamingo.Flamingo from tiny random parts: open_clip's ViT, a GPT-NeoX made a FlamingoLM."""
    from transformers import GPTNeoXForCausalLM

    vcfg, lcfg = tiny_parts(len(tok))
    vit = ref.VisionTransformer(image_size=vcfg.image_size, patch_size=vcfg.patch_size, width=vcfg.width, layers=vcfg.layers, heads=vcfg.heads,
                                mlp_ratio=vcfg.mlp_ratio, output_dim=vcfg.output_dim, act_layer=ref.QuickGELU, output_tokens=True)
    lm = GPTNeoXForCausalLM(lcfg)
    ref.extend_instance(lm, ref.FlamingoLMMixin)
    lm.set_decoder_layers_attr_name("gpt_neox.layers")
    model = ref.Flamingo(SimpleNamespace(visual=vit), lm, tok.convert_tokens_to_ids("<|endofchunk|>"), tok.convert_tokens_to_ids("<image>"),
                         vis_dim=vcfg.width, cross_attn_every_n_layers=cross_every)
    return randomize_(model, seed).eval()


def build_native(tok, seed: int, cross_every: int = 2) -> OpenFlamingoLMM:
    """The same architecture, natively, with unrelated random weights."""
    from transformers import GPTNeoXForCausalLM

    vcfg, lcfg = tiny_parts(len(tok))
    torch.manual_seed(seed + 1000)
    fc = FlamingoConfig(cross_attn_every_n_layers=cross_every, media_token_id=tok.convert_tokens_to_ids("<image>"),
                        eoc_token_id=tok.convert_tokens_to_ids("<|endofchunk|>"), vision=asdict(vcfg))
    model = OpenFlamingo(ClipVisionEncoder(vcfg), GPTNeoXForCausalLM(lcfg), vcfg.width, fc)
    return OpenFlamingoLMM(randomize_(model, seed + 1000).eval(), tok, "native")


def released_checkpoint(ref_model) -> dict:
    """What open_flamingo's training saved as checkpoint.pt: trainable parameters (perceiver, gated
    cross-attention) and embeddings only, no vision encoder / alias copies, keys prefixed by DDP's
    ``module.``, transformers-4 ``embed_out`` naming, and the old non-persistent buffers."""
    trainable = ("perceiver.", "lang_encoder.gated_cross_attn_layers.", "lang_encoder.gpt_neox.embed_in.")
    sd = ref_model.state_dict()
    params = {n for n, _ in ref_model.named_parameters()}
    keep = {}
    for k, v in sd.items():
        name = k.replace("lang_encoder.lm_head.", "lang_encoder.embed_out.")  # its name in transformers 4
        frozen = k in params and "embed" not in name and not k.startswith(trainable) and ".gated_cross_attn_layer." not in k
        if frozen or "old_decoder_blocks" in k or "gated_cross_attn_layers" in k or "vision_encoder" in k:
            continue
        keep["module." + name] = v
    keep["module.lang_encoder.gpt_neox.layers.0.decoder_layer.attention.masked_bias"] = torch.tensor(-1e9)
    keep["module.lang_encoder.gpt_neox.layers.0.decoder_layer.attention.rotary_emb.inv_freq"] = torch.ones(8)
    return {"model_state_dict": keep}


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def data():
    return synthetic.items("test", 40, RELS, config=SCENE)


@pytest.fixture(scope="module")
def mixed_prompts(data):
    """Different k in one batch: left padding and rows with fewer images."""
    return P.build("clean", data["left"], data, 3, 2, 0) + P.build("corrupted", data["above"], data, 2, 2, 1)


@pytest.fixture(scope="module")
def pair(reference, tok):
    """(reference Flamingo, native LMM) holding the same weights: the reference's full state dict
    (aliases included) loaded through the key mapping, strictly."""
    ref_model = build_reference(reference, tok, seed=1)
    native = build_native(tok, seed=1)
    report = load_openflamingo_state_dict(native.module, ref_model.state_dict(), strict=True)
    assert report.missing == [] and report.unexpected == []
    assert any("old_decoder_blocks" in k for k in report.ignored) and any("gated_cross_attn_layers" in k for k in report.ignored)
    return ref_model, native


def reference_inputs(lmm: OpenFlamingoLMM, prompts):
    """Token ids, mask and (B, T_img, F=1, C, H, W) pixels (rows zero-padded) as open_flamingo's eval builds them."""
    batch = lmm.encode(prompts)
    M = max(len(p.items) for p in prompts)
    px = torch.zeros(len(prompts), M, 1, 3, lmm.processor.size, lmm.processor.size)
    for i, p in enumerate(prompts):
        px[i, : len(p.items), 0] = lmm.processor(p.images())
    return batch, px


# --------------------------------------------------------------------------------------------------
# Equality with the reference
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def test_same_weights_same_logits_as_reference_flamingo(pair, mixed_prompts):
    ref_model, native = pair
    batch, px = reference_inputs(native, mixed_prompts)
    ids, mask = batch.inputs["input_ids"], batch.inputs["attention_mask"]
    want = ref_model(vision_x=px, lang_x=ids, attention_mask=mask).logits
    got = native.module(input_ids=ids, attention_mask=mask, pixel_values=px[:, :, 0]).logits
    real = mask.bool()
    diff = (want - got).abs()[real].max().item()
    print(f"native vs open_flamingo.Flamingo, all {int(real.sum())} positions: max |Δlogit| = {diff:.2e}")
    assert diff <= TOL
    # the cross-attention really matters here (gates are open, images change the logits)
    assert (ref_model(vision_x=px.flip(1), lang_x=ids, attention_mask=mask).logits - want).abs()[real].max() > 1e-2
    # and through the LMM: cached features, position ids from the mask, KV-cache fast path
    last = native.forward(batch)[:, -1]
    fast = native.last(native.prefix(batch), 2)[::2]
    print(f"LMM forward / prefix+last vs reference, last position: {(last - want[:, -1]).abs().max():.2e} / {(fast - want[:, -1]).abs().max():.2e}")
    assert (last - want[:, -1]).abs().max() <= TOL and (fast - want[:, -1]).abs().max() <= TOL


@torch.no_grad()
def test_released_checkpoint_layout_loads_and_reproduces_reference(reference, pair, tok, mixed_prompts):
    """A checkpoint.pt in the released form fills exactly the Flamingo parts; decoder and vision
    weights come from their own pretrained files (here: the reference's)."""
    ref_model, _ = pair
    fresh = build_native(tok, seed=7)
    sd = ref_model.state_dict()
    base = {k: v for k, v in sd.items() if k.startswith("vision_encoder.") or ".decoder_layer." in k or "final_layer_norm" in k}
    load_openflamingo_state_dict(fresh.module, base, strict=False)
    report = load_openflamingo_state_dict(fresh.module, released_checkpoint(ref_model), strict=False)
    assert report.unexpected == []
    assert report.missing and all(k.startswith("vision_encoder.") or ".decoder_layer." in k or "final_layer_norm" in k for k in report.missing)
    assert any(k.endswith("masked_bias") for k in report.ignored) and any(k.endswith("inv_freq") for k in report.ignored)
    batch, px = reference_inputs(fresh, mixed_prompts)
    want = ref_model(vision_x=px, lang_x=batch.inputs["input_ids"], attention_mask=batch.inputs["attention_mask"]).logits[:, -1]
    assert (fresh.forward(batch)[:, -1] - want).abs().max() <= TOL


@torch.no_grad()
def test_export_to_reference_layout_round_trips(reference, pair, tok, mixed_prompts):
    ref_model, native = pair
    other = build_reference(reference, tok, seed=5)
    res = other.load_state_dict(reference_state_dict(native.module), strict=True)
    assert not res.missing_keys and not res.unexpected_keys
    batch, px = reference_inputs(native, mixed_prompts)
    ids, mask = batch.inputs["input_ids"], batch.inputs["attention_mask"]
    assert torch.equal(other(vision_x=px, lang_x=ids, attention_mask=mask).logits, ref_model(vision_x=px, lang_x=ids, attention_mask=mask).logits)


@torch.no_grad()
def test_vision_encoder_equals_open_clip_with_and_without_ln_post(reference):
    vcfg, _ = tiny_parts()
    vit = randomize_(reference.VisionTransformer(image_size=vcfg.image_size, patch_size=vcfg.patch_size, width=vcfg.width, layers=vcfg.layers, heads=vcfg.heads,
                                                 mlp_ratio=vcfg.mlp_ratio, output_dim=vcfg.output_dim, act_layer=reference.QuickGELU, output_tokens=True), 3).eval()
    ours = ClipVisionEncoder(vcfg).eval()
    ours.load_state_dict(vision_state_dict({f"visual.{k}": v for k, v in vit.state_dict().items()}), strict=True)
    px = torch.randn(3, 3, vcfg.image_size, vcfg.image_size)
    pooled, tokens = vit(px)
    assert (ours(px) - tokens).abs().max() <= TOL
    assert (ours.pooled(px) - pooled).abs().max() <= TOL
    ours.cfg.tokens_after_ln_post = True  # open_clip >= 2.23 normalises the tokens too
    assert (ours(px) - vit.ln_post(tokens)).abs().max() <= TOL


def test_4b_vitl_rpj3b_layout_equals_reference_at_full_size(reference):
    """OpenFlamingo-4B-vitl-rpj3b built on the meta device (no memory, no weights) by both codes:
    the same keys with the same shapes, and every key of the released checkpoint has a home."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    # togethercomputer/RedPajama-INCITE-Base-3B-v1, embeddings resized to the tokenizer + 3 tokens
    lc = GPTNeoXConfig(vocab_size=50280, hidden_size=2560, num_hidden_layers=32, num_attention_heads=32, intermediate_size=10240,
                       rotary_pct=1.0, use_parallel_residual=False, tie_word_embeddings=False, max_position_embeddings=2048)
    with torch.device("meta"):
        vit = reference.VisionTransformer(image_size=224, patch_size=14, width=1024, layers=24, heads=16, mlp_ratio=4.0, output_dim=768,
                                          act_layer=reference.QuickGELU, output_tokens=True)
        lm = GPTNeoXForCausalLM(lc)
        reference.extend_instance(lm, reference.FlamingoLMMixin)
        lm.set_decoder_layers_attr_name("gpt_neox.layers")
        ref_model = reference.Flamingo(SimpleNamespace(visual=vit), lm, 50277, 50278, vis_dim=1024, cross_attn_every_n_layers=2)
        native = OpenFlamingo(ClipVisionEncoder(VisionConfig()), GPTNeoXForCausalLM(lc), 1024, FlamingoConfig(cross_attn_every_n_layers=2, media_token_id=50278))
    want = {k: tuple(v.shape) for k, v in ref_model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in reference_state_dict(native).items()} == want
    assert len(native.cross_layer_indices) == 16 and 4.0e9 < sum(p.numel() for p in native.parameters()) < 4.1e9
    released = released_checkpoint(ref_model)["model_state_dict"]
    own = native.state_dict()
    homes = [reference_to_native_key(k.removeprefix("module."))[0] for k in released]
    assert all(h is None or h in own for h in homes) and sum(h is not None for h in homes) == len(released) - 2


# --------------------------------------------------------------------------------------------------
# Key mapping and loading without the reference
# --------------------------------------------------------------------------------------------------


def test_key_mapping_round_trip_and_strictness(tok):
    lmm = build_native(tok, seed=2)
    sd = reference_state_dict(lmm.module)
    assert any(k.startswith("perceiver.layers.0.1.3.") for k in sd) and any(".gated_cross_attn_layer.ff.0." in k for k in sd)
    assert any(k.startswith("lang_encoder.old_decoder_blocks.3.") for k in sd)
    other = build_native(tok, seed=3)
    assert load_openflamingo_state_dict(other.module, sd).missing == []
    assert all(torch.equal(a, b) for a, b in zip(lmm.module.state_dict().values(), other.module.state_dict().values()))
    with pytest.raises(KeyError, match="unexpected"):
        load_openflamingo_state_dict(other.module, {**sd, "perceiver.extra.weight": torch.zeros(1)})
    with pytest.raises(KeyError, match="missing"):
        load_openflamingo_state_dict(other.module, {k: v for k, v in sd.items() if not k.startswith("perceiver.norm")})
    bad = dict(sd)
    bad["lang_encoder.old_decoder_blocks.0.attention.dense.weight"] = torch.zeros_like(bad["lang_encoder.old_decoder_blocks.0.attention.dense.weight"])
    with pytest.raises(ValueError, match="disagrees"):
        load_openflamingo_state_dict(other.module, bad)
    small = {k: (v[:-1] if k.endswith("embed_in.weight") else v) for k, v in sd.items()}
    with pytest.raises(ValueError, match="resize the token embeddings"):
        load_openflamingo_state_dict(other.module, small)


@torch.no_grad()
def test_hf_clip_vision_weights_convert():
    from transformers import CLIPVisionConfig, CLIPVisionModel

    vcfg, _ = tiny_parts()
    hf = CLIPVisionModel(CLIPVisionConfig(hidden_size=vcfg.width, intermediate_size=int(vcfg.width * vcfg.mlp_ratio), num_hidden_layers=vcfg.layers,
                                          num_attention_heads=vcfg.heads, image_size=vcfg.image_size, patch_size=vcfg.patch_size, hidden_act="quick_gelu"))
    randomize_(hf, 4).eval()
    ours = ClipVisionEncoder(vcfg).eval()
    res = ours.load_state_dict(vision_state_dict({f"vision_model.{k}": v for k, v in hf.state_dict().items()}), strict=False)
    assert res.missing_keys == ["proj"] and not res.unexpected_keys  # CLIPVisionModel has no projection
    px = torch.randn(2, 3, vcfg.image_size, vcfg.image_size)
    assert (ours(px) - hf(pixel_values=px).last_hidden_state[:, 1:]).abs().max() <= TOL


def test_folder_save_and_load_round_trip(tmp_path, mixed_prompts):
    lmm = tiny_random(seed=3)
    save_folder(lmm, tmp_path / "of")
    ck = torch.load(tmp_path / "of" / "checkpoint.pt", weights_only=True)["model_state_dict"]
    assert any(k.startswith("module.lang_encoder.embed_out.") for k in ck) and not any(".decoder_layer." in k for k in ck)
    again = OpenFlamingoLMM.load(tmp_path / "of")
    assert again.tok.convert_tokens_to_ids("<image>") == lmm.tok.convert_tokens_to_ids("<image>")
    with torch.no_grad():
        assert (again.forward(again.encode(mixed_prompts)) - lmm.forward(lmm.encode(mixed_prompts))).abs().max() <= TOL
    (tmp_path / "of" / "checkpoint.pt").unlink()
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        from_folder(tmp_path / "of")
    with pytest.raises(FileNotFoundError, match="openflamingo.json"):
        from_folder(tmp_path)


def test_image_processor_resizes_crops_and_normalises():
    from PIL import Image

    proc = ClipImageProcessor(48, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    wide = Image.new("RGB", (96, 60), (255, 0, 0))
    x = proc([wide])
    assert x.shape == (1, 3, 48, 48)
    assert torch.allclose(x[0, 0], torch.ones(48, 48), atol=1e-6) and torch.allclose(x[0, 1], -torch.ones(48, 48), atol=1e-6)


# --------------------------------------------------------------------------------------------------
# What only the OpenFlamingo adapter has
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lmm():
    return OpenFlamingoLMM.load("tiny-random")  # what load_model("openflamingo:tiny-random") returns


def test_cross_head_set_gates_and_modules(lmm):
    """Cross layer c is the gated block before decoder layer cross_layer_indices[c] (every 2nd here)."""
    hs = lmm.head_sets
    assert (hs["cross"].n_layers, hs["cross"].n_heads, hs["cross"].head_dim) == (2, 8, 64)
    assert lmm.module.cross_layer_indices == [1, 3] and lmm.cross_layer_to_decoder_layer(1) == 3
    assert lmm.scene_config() == SCENE
    assert lmm.head_output_gate(1, "cross") == pytest.approx(float(lmm.module.decoder_layers[3].gated_cross_attn_layer.attn_gate.detach().tanh()))
    assert lmm.o_proj(2) is lmm.module.lang_encoder.gpt_neox.layers[2].decoder_layer.attention.dense
    assert lmm.o_proj(1, "cross") is lmm.module.lang_encoder.gpt_neox.layers[3].gated_cross_attn_layer.attn.to_out
    with pytest.raises(KeyError):
        lmm.o_proj(0, "perceiver")


@torch.no_grad()
def test_last_token_cross_attends_to_its_own_image(lmm, data):
    """The query's image (the last <image>) drives the last position in the KV-cache path too."""
    p = P.build("clean", data["left"], data, 2, 1, 0)[0]
    b = lmm.encode([p])
    other = b.inputs["media"].clone()
    other[:, -1] = other[:, 0]
    b2 = type(b)({**b.inputs, "media": other}, b.answer_ids, b.prompts)
    a, a2 = lmm.last(lmm.prefix(b), 1), lmm.last(lmm.prefix(b2), 1)
    assert (a - a2).abs().max() > 1e-3
    assert (a2 - lmm.forward(b2)[:, -1]).abs().max() <= TOL


@torch.no_grad()
def test_answer_token_is_the_answer_after_its_space(lmm):
    assert lmm.decode([lmm.answer_token_id("red circle")]).startswith(" red")


def test_fu2025_protocol_writes_the_papers_openflamingo_text():
    """Under protocol fu2025 the adapter's prompt for a 2-shot item is, byte for byte, the string the
    paper's code builds (dataset/utils.py, construct_question, flamingo branch)."""
    from mmfv import prompts as P
    from mmfv.testing import openflamingo_tiny_random

    from PIL import Image

    lmm = openflamingo_tiny_random()
    items = [P.Item(f"img{i}", q, a, "left", Image.new("RGB", (8, 8))) for i, (q, a) in enumerate([("man", "phone"), ("woman", "hat"), ("boy", "ball")])]
    p = P.Prompt(tuple(items[:2]), items[2], "clean")
    assert lmm.use_protocol("fu2025")
    want = "<image>Q:man. A:phone.<|endofchunk|>\n<image>Q:woman. A:hat.<|endofchunk|>\n<image>Q:boy. A:"
    assert lmm.template.render(p) == want
    assert lmm.tok(lmm.template.render(p))["input_ids"] == lmm.tok(want)["input_ids"]
    lmm.use_protocol("mmfv")
    assert lmm.template.render(p) == P.FLAMINGO.render(p)
