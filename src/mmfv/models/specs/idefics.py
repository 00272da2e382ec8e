"""IDEFICS (v1, Flamingo-style): gated cross-attention blocks before each decoder layer read
perceiver-resampled image latents; each text token sees only the most recent image."""

import torch

from mmfv.models.specs.spec import CrossVision, Spec
from mmfv.prompts import Template

IMAGE = "<fake_token_around_image><image><fake_token_around_image>"


def encode(model, pixels):
    m = model.model
    h = m.vision_model(pixel_values=pixels["pixel_values"]).last_hidden_state
    return (m.perceiver_resampler(h) if model.config.use_resampler else h)[0]


def assemble(model, feats, input_ids, metas, tok):
    from transformers.models.idefics.processing_idefics import image_attention_mask_for_packed_input_ids, incremental_to_binary_attention_mask

    n = max(len(row) for row in feats)
    emb = feats[0][0].new_zeros(len(feats), n, *feats[0][0].shape)  # absent images: zeros, masked out
    for b, row in enumerate(feats):
        emb[b, : len(row)] = torch.stack(row)
    inc, _ = image_attention_mask_for_packed_input_ids(input_ids.cpu(), tok, "pt")
    mask = incremental_to_binary_attention_mask(inc, "pt", num_classes=n).to(input_ids.device)
    key = "perceiver_embeddings" if model.config.use_resampler else "image_encoder_embeddings"
    return {key: emb.flatten(0, 1), "image_attention_mask": mask}


def tiny():
    from transformers import IdeficsConfig, IdeficsForVisionText2Text, IdeficsProcessor
    from transformers.models.idefics.image_processing_pil_idefics import IdeficsImageProcessorPil

    from mmfv.models.specs import offline as O

    tok = O.tokenizer(["<unk>", "<s>", "</s>", "<image>", "<fake_token_around_image>", "<end_of_utterance>"], unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<unk>")
    proc = IdeficsProcessor(IdeficsImageProcessorPil(image_size=32), tokenizer=tok, image_size=32)
    vision = dict(embed_dim=32, image_size=32, patch_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    perceiver = dict(use_resampler=True, resampler_n_latents=4, resampler_depth=1, resampler_n_heads=2, resampler_head_dim=16)
    text = {k: v for k, v in O.TEXT.items() if k not in ("num_key_value_heads", "head_dim")}  # multi-head attention only
    # gates open ("ones"): the default "zeros" makes an untrained model ignore its images
    cfg = IdeficsConfig(**text, vocab_size=len(tok), **O.special_ids(tok), cross_layer_interval=1, alpha_initializer="ones", use_resampler=True, vision_config=vision, perceiver_config=perceiver)
    return IdeficsForVisionText2Text(cfg), proc


SPEC = Spec(
    family="idefics",
    model_types=("idefics",),
    model_class="IdeficsForVisionText2Text",
    layers="model.layers",
    cross_layers="model.gated_cross_attn_layers",
    cross_gate="alpha_cross_attn",  # (1,) or (1, 1, D): residual += tanh(alpha) * cross_attn(...)
    template=Template(image_token=IMAGE, prefix="<s>", demo="{image}Q: {query}. A: {answer}.{eoc}", eoc="\n"),
    expand=False,
    text_kwargs={"add_special_tokens": False},  # the template writes <s> itself, as the processor does
    token_keys=("image_attention_mask",),
    last_keys=("perceiver_embeddings", "image_encoder_embeddings"),
    vision=CrossVision(encode, assemble),
    tiny=tiny,
)
