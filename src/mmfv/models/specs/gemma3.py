"""Gemma 3: SigLIP tokens pooled to a fixed count, bidirectional attention inside each image
(token_type_ids); head_dim is not hidden // heads."""

from mmfv.models.specs.spec import Spec
from mmfv.prompts import Template

NAMED = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}

SPEC = Spec(
    family="gemma3",
    model_types=("gemma3",),
    model_class="Gemma3ForConditionalGeneration",
    layers="model.language_model.layers",
    template=Template(image_token="<start_of_image>", demo="{image}Q: {query}. A: {answer}.{eoc}", eoc="\n"),
    image_token_id="image_token_index",
    token_types="token_type_ids",
    tiny=dict(
        tokens=["<pad>", "<eos>", "<bos>", *NAMED.values()],
        named_tokens=NAMED,
        tokenizer=dict(pad_token="<pad>", eos_token="<eos>", bos_token="<bos>"),
        image_processor=("Gemma3ImageProcessorPil", dict(size={"height": 32, "width": 32})),
        processor=("Gemma3Processor", dict(image_seq_length=4)),
        text=dict(query_pre_attn_scalar=16, sliding_window=512, layer_types=["sliding_attention", "full_attention"]),
        config=dict(vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8), mm_tokens_per_image=4),
        token_ids=dict(boi_token_index="<start_of_image>", eoi_token_index="<end_of_image>", image_token_index="<image_soft_token>"),
    ),
)
