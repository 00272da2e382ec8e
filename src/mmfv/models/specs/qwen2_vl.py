"""Qwen2-VL: M-RoPE positions, image_grid_thw and mm_token_type_ids alongside the features."""

from mmfv.models.specs.spec import Spec
from mmfv.prompts import Template

TEMPLATE = Template(image_token="<|vision_start|><|image_pad|><|vision_end|>", demo="{image}Q: {query}. A: {answer}.{eoc}", eoc="\n")
QWEN_TOKENS = ["<|endoftext|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


def tiny(config_cls="Qwen2VLConfig", model_cls="Qwen2VLForConditionalGeneration", processor_cls="Qwen2VLProcessor", patch=14, vision=None, text=None):
    import transformers
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from mmfv.models.specs import offline as O

    tok = O.tokenizer(QWEN_TOKENS, pad_token="<|endoftext|>", eos_token="<|endoftext|>")
    side = 4 * patch  # images resized to 4x4 patches -> 4 tokens after the 2x2 merge
    ip = Qwen2VLImageProcessorPil(patch_size=patch, min_pixels=side * side, max_pixels=side * side, merge_size=2)
    proc = O.processor(getattr(transformers, processor_cls), image_processor=ip, tokenizer=tok, video_processor=None)
    image, video, start, end = O.ids(tok, "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
    text = dict(text or O.TEXT_NO_HEAD_DIM, vocab_size=len(tok), **O.special_ids(tok), rope_parameters=rope)
    vision = vision or dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=patch, spatial_merge_size=2, temporal_patch_size=2)
    cfg = getattr(transformers, config_cls)(text_config=text, vision_config=vision, image_token_id=image, video_token_id=video, vision_start_token_id=start, vision_end_token_id=end)
    return getattr(transformers, model_cls)(cfg), proc


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
    tiny=tiny,
)
