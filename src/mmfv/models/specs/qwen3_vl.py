"""Qwen3-VL: Qwen2-VL's inputs plus DeepStack (vision features injected into early decoder layers)."""

from mmfv.models.specs import qwen2_vl
from mmfv.models.specs.spec import Spec

VISION = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64, deepstack_visual_indexes=[0])

SPEC = Spec(
    family="qwen3_vl",
    model_types=("qwen3_vl",),
    model_class="Qwen3VLForConditionalGeneration",
    processor_class="Qwen3VLProcessor",
    layers="model.language_model.layers",  # decoder layers; o_proj is layers[i].self_attn.o_proj
    template=qwen2_vl.TEMPLATE,  # {image} = <|vision_start|><|image_pad|><|vision_end|>
    token_types="mm_token_type_ids",  # the forward raises without it
    image_keys=("image_grid_thw",),  # M-RoPE needs each image's grid
    positions="model",  # 3-axis M-RoPE: take the model's own positions
    feature_fields=("pooler_output", "deepstack_features"),  # what get_image_features gives the forward
    tiny=dict(  # Qwen2-VL's tiny model with Qwen3-VL's processor and vision tower, patch 16, head_dim 16
        qwen2_vl.TINY,
        image_processor=qwen2_vl.tiny_image_processor(16),
        processor=("Qwen3VLProcessor", {}),
        text=dict(rope_parameters=qwen2_vl.ROPE),
        config=dict(vision_config=VISION),
    ),
)
