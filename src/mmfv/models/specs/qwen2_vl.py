"""Qwen2-VL: M-RoPE positions, image_grid_thw and mm_token_type_ids alongside the features."""

from mmfv.models.specs.spec import Spec
from mmfv.prompts import Template

TEMPLATE = Template(image_token="<|vision_start|><|image_pad|><|vision_end|>", demo="{image}Q: {query}. A: {answer}.{eoc}", eoc="\n")


def tiny_image_processor(patch: int) -> tuple[str, dict]:
    """The tiny models' image processor: images resized to 4x4 patches -> 4 tokens after the 2x2 merge."""
    side = 4 * patch
    return ("Qwen2VLImageProcessorPil", dict(patch_size=patch, min_pixels=side * side, max_pixels=side * side, merge_size=2))


ROPE = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
TINY = dict(
    tokens=["<|endoftext|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"],
    tokenizer=dict(pad_token="<|endoftext|>", eos_token="<|endoftext|>"),
    image_processor=tiny_image_processor(14),
    processor=("Qwen2VLProcessor", {}),
    text=dict(head_dim=None, rope_parameters=ROPE),
    config=dict(vision_config=dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14, spatial_merge_size=2, temporal_patch_size=2)),
    token_ids=dict(image_token_id="<|image_pad|>", video_token_id="<|video_pad|>", vision_start_token_id="<|vision_start|>", vision_end_token_id="<|vision_end|>"),
)

SPEC = Spec(
    family="qwen2_vl",
    model_types=("qwen2_vl",),
    model_class="Qwen2VLForConditionalGeneration",
    processor_class="Qwen2VLProcessor",
    layers="model.language_model.layers",
    template=TEMPLATE,
    token_types="mm_token_type_ids",
    image_keys=("image_grid_thw",),
    positions="model",
    tiny=TINY,
)
