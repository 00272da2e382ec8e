"""LLaVA (1.5): CLIP patch features projected into the language model, one <image> token per patch."""

from mmfv.models.specs.spec import Spec
from mmfv.prompts import Template

TEMPLATE = Template(image_token="<image>", demo="{image}\nQ: {query}. A: {answer}.{eoc}", query="{image}\nQ: {query}. A:", eoc="\n")


def tiny():
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    from mmfv.models.specs import offline as O

    tok = O.tokenizer(["<unk>", "<s>", "</s>", "<image>"], unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<unk>")
    ip = LlavaImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    proc = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=8, vision_feature_select_strategy="default", num_additional_image_tokens=1)
    text = dict(O.TEXT, model_type="llama", vocab_size=len(tok), **O.special_ids(tok))
    vision = dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8, projection_dim=32)
    cfg = LlavaConfig(text_config=text, vision_config=vision, image_token_index=proc.image_token_id, image_seq_length=16)
    return LlavaForConditionalGeneration(cfg), proc


SPEC = Spec(
    family="llava",
    model_types=("llava",),
    model_class="LlavaForConditionalGeneration",
    layers="model.language_model.layers",
    template=TEMPLATE,
    image_token_id="image_token_index",
    tiny=tiny,
)
