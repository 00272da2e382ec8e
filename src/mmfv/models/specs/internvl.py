"""InternVL (HF-native, e.g. InternVL3-hf): pixel-shuffled InternViT tokens between <img> and </img>."""

from mmfv.models.specs.spec import Spec
from mmfv.prompts import Template


def tiny():
    from transformers import InternVLConfig, InternVLForConditionalGeneration, InternVLProcessor
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    from mmfv.models.specs import offline as O

    named = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"}
    tok = O.tokenizer(["<|endoftext|>", *named.values()], named, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    ip = GotOcr2ImageProcessorPil(size={"height": 32, "width": 32})
    proc = O.processor(InternVLProcessor, image_processor=ip, tokenizer=tok, video_processor=None, image_seq_length=4)
    text = dict(O.TEXT_NO_HEAD_DIM, model_type="qwen2", vocab_size=len(tok), **O.special_ids(tok))
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=[32, 32], patch_size=[8, 8])
    cfg = InternVLConfig(text_config=text, vision_config=vision, image_token_id=tok.context_image_token_id, image_seq_length=4, downsample_ratio=0.5)
    return InternVLForConditionalGeneration(cfg), proc


SPEC = Spec(
    family="internvl",
    model_types=("internvl",),
    model_class="InternVLForConditionalGeneration",
    processor_class="InternVLProcessor",
    layers="model.language_model.layers",
    template=Template(image_token="<IMG_CONTEXT>", demo="{image}\nQ: {query}. A: {answer}.{eoc}", query="{image}\nQ: {query}. A:", eoc="\n"),
    tiny=tiny,
)
