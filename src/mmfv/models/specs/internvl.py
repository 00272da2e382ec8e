"""InternVL (HF-native, e.g. InternVL3-hf): pixel-shuffled InternViT tokens between <img> and </img>."""

from mmfv.models.specs.spec import Spec
from mmfv.prompts import Template

NAMED = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"}

SPEC = Spec(
    family="internvl",
    model_types=("internvl",),
    model_class="InternVLForConditionalGeneration",
    processor_class="InternVLProcessor",
    layers="model.language_model.layers",
    template=Template(image_token="<IMG_CONTEXT>", demo="{image}\nQ: {query}. A: {answer}.{eoc}", query="{image}\nQ: {query}. A:", eoc="\n"),
    tiny=dict(
        tokens=["<|endoftext|>", *NAMED.values()],
        named_tokens=NAMED,
        tokenizer=dict(eos_token="<|endoftext|>", pad_token="<|endoftext|>"),
        image_processor=("GotOcr2ImageProcessorPil", dict(size={"height": 32, "width": 32})),
        processor=("InternVLProcessor", dict(image_seq_length=4)),
        text=dict(head_dim=None, model_type="qwen2"),
        config=dict(
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=[32, 32], patch_size=[8, 8]),
            image_seq_length=4,
            downsample_ratio=0.5,
        ),
        token_ids=dict(image_token_id="<IMG_CONTEXT>"),
    ),
)
