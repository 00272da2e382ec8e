"""Idefics3: pixel-shuffled SigLIP tokens; images may be split into a grid of crops plus a global view."""

from mmfv.models.specs.spec import Spec
from mmfv.prompts import Template

TEMPLATE = Template(image_token="<image>", demo="{image}Q: {query}. A: {answer}.{eoc}", eoc="\n")
IMAGE_TOKENS = ["<fake_token_around_image>", "<image>", "<global-img>", "<end_of_utterance>", "<video>"] + [f"<row_{r}_col_{c}>" for r in (1, 2) for c in (1, 2)]

SPEC = Spec(
    family="idefics3",
    model_types=("idefics3",),
    model_class="Idefics3ForConditionalGeneration",
    layers="model.text_model.layers",
    template=TEMPLATE,
    tiny=dict(
        tokens=["<unk>", "<s>", "</s>", *IMAGE_TOKENS],
        tokenizer=dict(unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<unk>"),
        image_processor=("Idefics3ImageProcessorPil", dict(do_image_splitting=False, size={"longest_edge": 32}, max_image_size={"longest_edge": 32})),
        processor=("Idefics3Processor", dict(image_seq_len=4)),
        text=dict(model_type="llama"),
        config=dict(vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8), scale_factor=2),
        token_ids=dict(image_token_id="<image>"),
    ),
)
