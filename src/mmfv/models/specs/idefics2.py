"""Idefics2: perceiver-resampled image tokens between <fake_token_around_image> markers."""

from mmfv.models.specs.spec import Spec
from mmfv.prompts import Template

SPEC = Spec(
    family="idefics2",
    model_types=("idefics2",),
    model_class="Idefics2ForConditionalGeneration",
    layers="model.text_model.layers",  # not the perceiver's own layers
    # The processor puts a space after an image when text follows directly; the template does so itself.
    template=Template(image_token="<image>", demo="{image} Q: {query}. A: {answer}.{eoc}", query="{image} Q: {query}. A:", eoc="\n"),
    tiny=dict(
        tokens=["<unk>", "<s>", "</s>"],
        tokenizer=dict(unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<unk>"),
        image_processor=("Idefics2ImageProcessorPil", dict(do_image_splitting=False, size={"shortest_edge": 32, "longest_edge": 32})),
        processor=("Idefics2Processor", dict(image_seq_len=4)),  # adds the image tokens
        text=dict(model_type="mistral"),
        config=dict(
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8),
            perceiver_config=dict(hidden_size=64, resampler_n_latents=4, resampler_depth=1, resampler_n_heads=2, resampler_head_dim=16, num_key_value_heads=1),
        ),
        token_ids=dict(image_token_id="<image>"),
    ),
)
