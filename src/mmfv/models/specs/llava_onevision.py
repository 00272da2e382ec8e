"""LLaVA-OneVision: any-res crops for a lone image, base features only for each of several images."""

from mmfv.models.specs import llava
from mmfv.models.specs.spec import Spec


def tiny():
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, LlavaOnevisionProcessor
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import LlavaOnevisionImageProcessorPil

    from mmfv.models.specs import offline as O

    tok = O.tokenizer(["<|endoftext|>", "<image>", "<video>"], eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    grid = [[32, 32], [32, 64], [64, 32], [64, 64]]
    ip = LlavaOnevisionImageProcessorPil(size={"height": 32, "width": 32}, image_grid_pinpoints=grid)
    proc = O.processor(LlavaOnevisionProcessor, image_processor=ip, tokenizer=tok, video_processor=None, num_image_tokens=16, vision_feature_select_strategy="full")
    text = dict(O.TEXT_NO_HEAD_DIM, model_type="qwen2", vocab_size=len(tok), **O.special_ids(tok))
    vision = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8)
    image, video = O.ids(tok, "<image>", "<video>")
    cfg = LlavaOnevisionConfig(text_config=text, vision_config=vision, image_token_index=image, video_token_index=video, image_grid_pinpoints=grid, vision_feature_layer=-1, vision_feature_select_strategy="full")
    return LlavaOnevisionForConditionalGeneration(cfg), proc


SPEC = Spec(
    family="llava_onevision",
    model_types=("llava_onevision",),
    model_class="LlavaOnevisionForConditionalGeneration",
    processor_class="LlavaOnevisionProcessor",
    layers="model.language_model.layers",
    template=llava.TEMPLATE,
    image_token_id="image_token_index",
    multi_image=True,
    tiny=tiny,
)
