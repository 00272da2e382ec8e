"""Qwen2 / Qwen2.5 text-only language models: like Llama, with biases on q/k/v (the output
projection has none, so head outputs are read the same way); no images."""

from mmfv.models.specs.spec import Spec
from mmfv.prompts import TEXT

TINY = dict(tokens=["<|endoftext|>"], tokenizer=dict(eos_token="<|endoftext|>", pad_token="<|endoftext|>"), flat_text=True)

SPEC = Spec(
    family="qwen2",
    model_types=("qwen2",),
    model_class="Qwen2ForCausalLM",
    layers="model.layers",
    template=TEXT,
    images=False,
    tiny=dict(TINY, text=dict(head_dim=None)),
)
