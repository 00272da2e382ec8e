"""Gemma 3 text-only models (the 270M / 1B checkpoints, and the text backbone that a Gemma 3 GGUF
file holds): sliding and full attention layers, scaled embeddings, head_dim not hidden // heads;
no images."""

from mmfv.models.specs.spec import Spec
from mmfv.prompts import TEXT

SPEC = Spec(
    family="gemma3_text",
    model_types=("gemma3_text",),
    model_class="Gemma3ForCausalLM",
    layers="model.layers",
    template=TEXT,
    images=False,
    tiny=dict(
        tokens=["<pad>", "<eos>", "<bos>"],
        tokenizer=dict(pad_token="<pad>", eos_token="<eos>", bos_token="<bos>"),
        text=dict(query_pre_attn_scalar=16, sliding_window=512, layer_types=["sliding_attention", "full_attention"]),
        flat_text=True,
    ),
)
