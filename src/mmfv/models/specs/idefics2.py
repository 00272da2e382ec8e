"""Idefics2: perceiver-resampled image tokens between <fake_token_around_image> markers."""

from mmfv.models.specs.spec import Spec
from mmfv.prompts import Template


def tiny():
    from transformers import Idefics2Config, Idefics2ForConditionalGeneration, Idefics2Processor
    from transformers.models.idefics2.image_processing_pil_idefics2 import Idefics2ImageProcessorPil

    from mmfv.models.specs import offline as O

    tok = O.tokenizer(["<unk>", "<s>", "</s>"], unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<unk>")
    ip = Idefics2ImageProcessorPil(do_image_splitting=False, size={"shortest_edge": 32, "longest_edge": 32})
    proc = Idefics2Processor(image_processor=ip, tokenizer=tok, image_seq_len=4)  # adds the image tokens
    text = dict(O.TEXT, model_type="mistral", vocab_size=len(tok), **O.special_ids(tok))
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8)
    perceiver = dict(hidden_size=64, resampler_n_latents=4, resampler_depth=1, resampler_n_heads=2, resampler_head_dim=16, num_key_value_heads=1)
    cfg = Idefics2Config(text_config=text, vision_config=vision, perceiver_config=perceiver, image_token_id=proc.image_token_id)
    return Idefics2ForConditionalGeneration(cfg), proc


SPEC = Spec(
    family="idefics2",
    model_types=("idefics2",),
    model_class="Idefics2ForConditionalGeneration",
    layers="model.text_model.layers",  # not the perceiver's own layers
    # The processor puts a space after an image when text follows directly; the template does so itself.
    template=Template(image_token="<image>", demo="{image} Q: {query}. A: {answer}.{eoc}", query="{image} Q: {query}. A:", eoc="\n"),
    tiny=tiny,
)
