"""Mllama (Llama 3.2 Vision): cross-attention decoder layers read tiled vision states; a text token
sees every image from the last one before it back to the previous text (processor's rule)."""

import weakref

import torch

from mmfv.models.specs.spec import CrossVision, Spec
from mmfv.prompts import Template


def encode(model, pixels):
    m = model.model
    out = m.vision_model(pixel_values=pixels["pixel_values"], aspect_ratio_ids=pixels["aspect_ratio_ids"], aspect_ratio_mask=pixels["aspect_ratio_mask"])
    return m.multi_modal_projector(out.last_hidden_state)[0, 0]  # (tiles, patches, hidden)


_ABSENT = weakref.WeakKeyDictionary()  # model -> states of an absent image (the processor's zero padding)


def absent(model, tiles, like):
    """What the model sees in a slot where a row has no image: HF Mllama lets tokens that attend to no
    image (before the first one) read every slot, so padding slots are computed exactly as the pixel path."""
    if model not in _ABSENT:
        vc = model.config.vision_config
        mask = torch.zeros(1, 1, tiles, dtype=torch.long, device=like.device)
        mask[..., 0] = 1
        px = {"pixel_values": like.new_zeros(1, 1, tiles, vc.num_channels, vc.image_size, vc.image_size), "aspect_ratio_ids": mask[..., 0] * 0, "aspect_ratio_mask": mask}
        with torch.no_grad():
            _ABSENT[model] = encode(model, px)
    return _ABSENT[model]


def assemble(model, feats, input_ids, metas, tok):
    from transformers.models.mllama.processing_mllama import convert_sparse_cross_attention_mask_to_dense, get_cross_attention_token_mask

    n = max(len(row) for row in feats)
    tiles, patches, d = feats[0][0].shape
    pad = absent(model, tiles, feats[0][0]) if any(len(row) < n for row in feats) else None
    states = torch.stack([torch.stack(row + [pad] * (n - len(row))) for row in feats])
    sparse = [get_cross_attention_token_mask(ids.tolist(), model.config.image_token_index) for ids in input_ids]
    num_tiles = [[int(torch.as_tensor(m["num_tiles"]).flatten()[0]) for m in row] for row in metas]
    mask = convert_sparse_cross_attention_mask_to_dense(sparse, num_tiles, tiles, input_ids.shape[1])
    return {"cross_attention_states": states.view(-1, patches, d), "cross_attention_mask": torch.from_numpy(mask).to(input_ids.device)}


SPEC = Spec(
    family="mllama",
    model_types=("mllama",),
    model_class="MllamaForConditionalGeneration",
    processor_class="MllamaProcessor",
    layers="model.language_model.layers",  # self- and cross-attention decoder layers, interleaved
    cross_layers="model.language_model.layers",
    cross_gate="cross_attn_attn_gate",  # residual += tanh(gate) * cross_attn(...)
    template=Template(image_token="<|image|>", prefix="<|begin_of_text|>", demo="{image}Q: {query}. A: {answer}.{eoc}", eoc="\n"),
    image_token_id="image_token_index",
    expand=False,
    text_kwargs={"add_special_tokens": False},  # the template writes <|begin_of_text|> itself
    token_keys=("cross_attention_mask",),
    vision=CrossVision(encode, assemble),
    tiny=dict(
        tokens=["<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>", "<|image|>", "<|python_tag|>"],
        tokenizer=dict(bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>", pad_token="<|finetune_right_pad_id|>"),
        image_processor=("MllamaImageProcessorPil", dict(size={"height": 32, "width": 32}, max_image_tiles=2)),
        processor=("MllamaProcessor", {}),
        text=dict(head_dim=None, cross_attention_layers=[1]),
        config=dict(vision_config=dict(hidden_size=32, num_hidden_layers=1, num_global_layers=1, attention_heads=2, intermediate_size=64, vision_output_dim=64,
                                       intermediate_layers_indices=[0], image_size=32, patch_size=8, max_num_tiles=2, supported_aspect_ratios=[[1, 1], [1, 2], [2, 1]])),
        token_ids=dict(image_token_index="<|image|>"),
        fill=dict(cross_attn_attn_gate=1.0, cross_attn_mlp_gate=1.0),  # zero-initialised gates: an untrained model would ignore images
    ),
)
