"""LLaVA-OneVision: any-res crops for a lone image, base features only for each of several images."""

from mmfv.models.specs import llava
from mmfv.models.specs.spec import Spec

GRID = [[32, 32], [32, 64], [64, 32], [64, 64]]  # the tiny model's any-res grid (px)

SPEC = Spec(
    family="llava_onevision",
    model_types=("llava_onevision",),
    model_class="LlavaOnevisionForConditionalGeneration",
    processor_class="LlavaOnevisionProcessor",
    layers="model.language_model.layers",
    template=llava.TEMPLATE,
    image_token_id="image_token_index",
    multi_image=True,
    tiny=dict(
        tokens=["<|endoftext|>", "<image>", "<video>"],
        tokenizer=dict(eos_token="<|endoftext|>", pad_token="<|endoftext|>"),
        image_processor=("LlavaOnevisionImageProcessorPil", dict(size={"height": 32, "width": 32}, image_grid_pinpoints=GRID)),
        processor=("LlavaOnevisionProcessor", dict(num_image_tokens=16, vision_feature_select_strategy="full")),
        text=dict(head_dim=None, model_type="qwen2"),
        config=dict(
            vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8),
            image_grid_pinpoints=GRID,
            vision_feature_layer=-1,
            vision_feature_select_strategy="full",
        ),
        token_ids=dict(image_token_index="<image>", video_token_index="<video>"),
    ),
)
