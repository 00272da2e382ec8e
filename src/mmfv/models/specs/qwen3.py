"""Qwen3 text-only language models: q/k norms, and head_dim set apart from hidden // heads (read
from the attention module, as always); no images."""

from mmfv.models.specs import qwen2
from mmfv.models.specs.spec import Spec
from mmfv.prompts import TEXT

SPEC = Spec(
    family="qwen3",
    model_types=("qwen3",),
    model_class="Qwen3ForCausalLM",
    layers="model.layers",
    template=TEXT,
    images=False,
    tiny=qwen2.TINY,
)
