"""A small random OpenFlamingo for tests and dry runs (``load_model("openflamingo:tiny-random")``),
and the weight re-draw that makes every part of a random Flamingo matter."""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

import torch
from torch import nn

from mmfv.models.openflamingo.adapter import OpenFlamingoLMM, add_flamingo_tokens
from mmfv.models.openflamingo.modeling import FlamingoConfig, OpenFlamingo
from mmfv.models.openflamingo.vision import ClipVisionEncoder, VisionConfig


def tiny_tokenizer() -> Any:
    """A byte-level BPE (GPT-NeoX style) trained on the synthetic scenes' words, plus Flamingo's
    special tokens. Built offline in milliseconds, deterministic."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from mmfv.data import scenes as S

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    objs = list(S.OBJECTS)
    corpus = [f"Q: {a}. A: {objs[(i * 7 + 3) % len(objs)]}." for i, a in enumerate(objs * 3)]
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    return add_flamingo_tokens(fast)


def randomize_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Re-draw every weight at a scale where every part matters (HF's 0.02 init leaves heads inert
    and the Flamingo gates start at 0): matrices N(0, 1/fan_in), norms 1 ± 0.1, biases ± 0.1, gates
    U(-1, 1), embeddings N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("_gate"):
                p.copy_(torch.rand(p.shape, generator=g) * 2 - 1)
            elif p.dim() >= 2:
                fan_in = p.shape[-1] if p.dim() == 2 else math.prod(p.shape[1:])
                std = 1.0 if ("embed" in name or "latents" in name or "positional" in name) else fan_in**-0.5
                p.copy_(torch.randn(p.shape, generator=g) * std)
            elif "norm" in name or "ln_" in name or "layernorm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return module


def tiny_parts(vocab_size: int = 320, image_size: int = 48, layers: int = 4, hidden: int = 64, heads: int = 4) -> tuple[VisionConfig, Any]:
    """The configs of the tiny model: a 2-layer ViT (patch 16) and a GPT-NeoX decoder."""
    from transformers import GPTNeoXConfig

    vcfg = VisionConfig(image_size=image_size, patch_size=16, width=32, layers=2, heads=2, mlp_ratio=2.0, output_dim=16)
    lcfg = GPTNeoXConfig(
        vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=2 * hidden, max_position_embeddings=2048, rotary_pct=1.0, use_parallel_residual=False,
        tie_word_embeddings=False, bos_token_id=0, eos_token_id=0,
    )
    return vcfg, lcfg


def tiny_random(seed: int = 0, cross_attn_every_n_layers: int = 2, image_size: int = 48, **flamingo: Any) -> OpenFlamingoLMM:
    """A small random OpenFlamingo (ViT 2×32, 4-layer GPT-NeoX of width 64, perceiver and
    cross-attention at OpenFlamingo's default sizes) for synthetic scenes of ``image_size`` px."""
    from transformers import GPTNeoXForCausalLM

    tok = tiny_tokenizer()
    vcfg, lcfg = tiny_parts(len(tok), image_size)
    torch.manual_seed(seed)
    lm = GPTNeoXForCausalLM(lcfg)
    fcfg = FlamingoConfig(
        cross_attn_every_n_layers=cross_attn_every_n_layers, media_token_id=tok.convert_tokens_to_ids("<image>"),
        eoc_token_id=tok.convert_tokens_to_ids("<|endofchunk|>"), vision=asdict(vcfg), **flamingo,
    )
    model = randomize_(OpenFlamingo(ClipVisionEncoder(vcfg), lm, vcfg.width, fcfg), seed).eval()
    card = {"name": "openflamingo-tiny-random", "scene_config": {"grid": 3, "cell_px": image_size // 3}}
    return OpenFlamingoLMM(model, tok, "openflamingo-tiny-random", card=card)
