"""Llama-architecture text-only language models (SmolLM2, Llama 2/3, TinyLlama, Mistral-style
GGUF files that transformers reads as Llama): decoder layers at ``model.layers``, Todd et al.'s plain
text template, no images."""

from mmfv.models.specs.spec import Spec
from mmfv.prompts import TEXT

SPEC = Spec(
    family="llama",
    model_types=("llama",),
    model_class="LlamaForCausalLM",
    layers="model.layers",
    template=TEXT,
    images=False,
    tiny=dict(
        tokens=["<unk>", "<s>", "</s>"],
        tokenizer=dict(unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>"),
        flat_text=True,
    ),
)
