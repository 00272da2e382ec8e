"""Idefics3: pixel-shuffled SigLIP tokens; images may be split into a grid of crops plus a global view."""

from mmfv.models.specs.spec import Spec
from mmfv.prompts import Template

TEMPLATE = Template(image_token="<image>", demo="{image}Q: {query}. A: {answer}.{eoc}", eoc="\n")
IMAGE_TOKENS = ["<fake_token_around_image>", "<image>", "<global-img>", "<end_of_utterance>", "<video>"] + [f"<row_{r}_col_{c}>" for r in (1, 2) for c in (1, 2)]


def tiny(name="Idefics3", split=False):
    import importlib

    import transformers

    from mmfv.models.specs import offline as O

    tok = O.tokenizer(["<unk>", "<s>", "</s>", *IMAGE_TOKENS], unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<unk>")
    pil = getattr(importlib.import_module(f"transformers.models.{name.lower()}.image_processing_pil_{name.lower()}"), f"{name}ImageProcessorPil")
    # split: resize to 64 px, cut 2x2 crops of 32 px, add the global view (5 sub-images of 4 tokens)
    ip = pil(do_image_splitting=split, size={"longest_edge": 64 if split else 32}, max_image_size={"longest_edge": 32})
    parts = dict(image_processor=ip, tokenizer=tok, image_seq_len=4)
    if name == "SmolVLM":
        parts["video_processor"] = None
    proc = O.processor(getattr(transformers, f"{name}Processor"), **parts)
    text = dict(O.TEXT, model_type="llama", vocab_size=len(tok), **O.special_ids(tok))
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8)
    cfg = getattr(transformers, f"{name}Config")(text_config=text, vision_config=vision, scale_factor=2, image_token_id=proc.image_token_id)
    return getattr(transformers, f"{name}ForConditionalGeneration")(cfg), proc


SPEC = Spec(
    family="idefics3",
    model_types=("idefics3",),
    model_class="Idefics3ForConditionalGeneration",
    layers="model.text_model.layers",
    template=TEMPLATE,
    tiny=tiny,
)
