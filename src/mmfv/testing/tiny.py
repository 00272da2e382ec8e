"""A random mmfv-tiny (no training): the small model most method tests run on."""

from __future__ import annotations

import torch

from mmfv.data.scenes import SceneConfig
from mmfv.models.tiny.adapter import TinyLMM
from mmfv.models.tiny.modeling import MmfvTinyConfig, MmfvTinyForCausalLM
from mmfv.models.tiny.tokenizer import IMG, TinyTokenizer

SCENE = SceneConfig(grid=4, cell_px=8)  # the scenes a random_tiny model takes


def random_tiny(seed: int = 0, layers: int = 2, heads: int = 4, hidden: int = 32, image_attention: str = "causal") -> TinyLMM:
    """A random mmfv-tiny for :data:`SCENE`, with weights scaled up so that every head matters
    (``image_attention="local"``: as the shipped model, whose plain forwards reuse per-image keys/values)."""
    torch.manual_seed(seed)
    tok = TinyTokenizer.default(SCENE.grid**2)
    cfg = MmfvTinyConfig(
        vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=2 * hidden, grid=SCENE.grid, cell_px=SCENE.cell_px, image_token_id=IMG, image_attention=image_attention,
    )
    model = MmfvTinyForCausalLM(cfg).eval()
    with torch.no_grad():  # init std 0.02 is too small for heads to matter; scale up
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(10.0)
    return TinyLMM(model, tok, "random-tiny", {"scene_config": SCENE.__dict__})
