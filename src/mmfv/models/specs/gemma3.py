"""Gemma 3: SigLIP tokens pooled to a fixed count, bidirectional attention inside each image
(token_type_ids); head_dim is not hidden // heads."""

from mmfv.models.specs.spec import Spec
from mmfv.prompts import Template


def tiny(head_dim=16):
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    from mmfv.models.specs import offline as O

    named = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
    tok = O.tokenizer(["<pad>", "<eos>", "<bos>", *named.values()], named, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>")
    proc = Gemma3Processor(image_processor=Gemma3ImageProcessorPil(size={"height": 32, "width": 32}), tokenizer=tok, image_seq_length=4)
    text = dict(O.TEXT, head_dim=head_dim, vocab_size=len(tok), **O.special_ids(tok), query_pre_attn_scalar=head_dim, sliding_window=512, layer_types=["sliding_attention", "full_attention"])
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8)
    boi, eoi, image = O.ids(tok, *named.values())
    cfg = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4, boi_token_index=boi, eoi_token_index=eoi, image_token_index=image)
    return Gemma3ForConditionalGeneration(cfg), proc


SPEC = Spec(
    family="gemma3",
    model_types=("gemma3",),
    model_class="Gemma3ForConditionalGeneration",
    layers="model.language_model.layers",
    template=Template(image_token="<start_of_image>", demo="{image}Q: {query}. A: {answer}.{eoc}", eoc="\n"),
    image_token_id="image_token_index",
    token_types="token_type_ids",
    tiny=tiny,
)
