"""Qwen2.5-VL: as Qwen2-VL (without mm_token_type_ids it silently uses wrong positions)."""

from mmfv.models.specs import qwen2_vl
from mmfv.models.specs.spec import Spec

VISION = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1])

SPEC = Spec(
    family="qwen2_5_vl",
    model_types=("qwen2_5_vl",),
    model_class="Qwen2_5_VLForConditionalGeneration",
    processor_class="Qwen2_5_VLProcessor",
    layers="model.language_model.layers",
    template=qwen2_vl.TEMPLATE,
    token_types="mm_token_type_ids",
    image_keys=("image_grid_thw",),
    positions="model",
    tiny=dict(qwen2_vl.TINY, processor=("Qwen2_5_VLProcessor", {}), config=dict(vision_config=VISION)),
)
