"""LLaVA (1.5): CLIP patch features projected into the language model, one <image> token per patch."""

from mmfv.models.specs.spec import Spec
from mmfv.prompts import Template

TEMPLATE = Template(image_token="<image>", demo="{image}\nQ: {query}. A: {answer}.{eoc}", query="{image}\nQ: {query}. A:", eoc="\n")

SPEC = Spec(
    family="llava",
    model_types=("llava",),
    model_class="LlavaForConditionalGeneration",
    layers="model.language_model.layers",
    template=TEMPLATE,
    image_token_id="image_token_index",
    tiny=dict(
        tokens=["<unk>", "<s>", "</s>", "<image>"],
        tokenizer=dict(unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<unk>"),
        image_processor=("LlavaImageProcessorPil", dict(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})),
        processor=("LlavaProcessor", dict(patch_size=8, vision_feature_select_strategy="default", num_additional_image_tokens=1)),
        text=dict(model_type="llama"),
        config=dict(
            vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8, projection_dim=32),
            image_seq_length=16,
        ),
        token_ids=dict(image_token_index="<image>"),
    ),
)
