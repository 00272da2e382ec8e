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
    tiny=dict(
        tokens=["<unk>", "<s>", "</s>", "<image>", "<fake_token_around_image>", "<end_of_utterance>"],
        tokenizer=dict(unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<unk>"),
        image_processor=("IdeficsImageProcessorPil", dict(image_size=32)),
        processor=("IdeficsProcessor", dict(image_size=32)),
        text=dict(num_key_value_heads=None, head_dim=None),  # multi-head attention only
        flat_text=True,
        config=dict(
            cross_layer_interval=1,
            alpha_initializer="ones",  # gates open: the default "zeros" makes an untrained model ignore its images
            use_resampler=True,
            vision_config=dict(embed_dim=32, image_size=32, patch_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64),
            perceiver_config=dict(use_resampler=True, resampler_n_latents=4, resampler_depth=1, resampler_n_heads=2, resampler_head_dim=16),
        ),
    ),
)
