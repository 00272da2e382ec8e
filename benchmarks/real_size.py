"""Real-sized random-weight models for benchmarks (no download): the architecture and dimensions of a
released checkpoint, random weights, an offline tokenizer and processor.

    smolvlm-256m-random   SmolVLM-256M: SigLIP-B/16 at 512 px (12 layers, 768), pixel shuffle x4 ->
                          64 tokens per image, SmolLM2-135M-style decoder (30 layers, 576, 9 heads
                          of 64, 3 KV heads), vocabulary 49,280.
"""

from __future__ import annotations

import torch

from mmfv.models.hf import HFLMM

BUILDERS = ("smolvlm-256m-random",)


def smolvlm_256m_random(seed: int = 0) -> HFLMM:
    import transformers
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

    from mmfv.models import specs
    from mmfv.models.specs import offline as O
    from mmfv.models.specs.idefics3 import IMAGE_TOKENS

    tok = O.tokenizer(["<unk>", "<s>", "</s>", *IMAGE_TOKENS], unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<unk>")
    ip = SmolVLMImageProcessorPil(do_image_splitting=False, size={"longest_edge": 512}, max_image_size={"longest_edge": 512})
    proc = O.processor(transformers.SmolVLMProcessor, image_processor=ip, tokenizer=tok, video_processor=None, image_seq_len=64)
    text = dict(model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                num_key_value_heads=3, head_dim=64, vocab_size=49280, max_position_embeddings=8192, rope_theta=100000.0,
                **O.special_ids(tok))
    vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=512, patch_size=16)
    cfg = transformers.SmolVLMConfig(text_config=text, vision_config=vision, scale_factor=4, image_token_id=proc.image_token_id)
    torch.manual_seed(seed)
    model = transformers.SmolVLMForConditionalGeneration(cfg).eval()
    return HFLMM(model, proc, specs.get("smolvlm"), "smolvlm-256m-random")


def load(name: str):
    """A benchmark model by name: one of BUILDERS, else anything ``mmfv.models.load_model`` takes."""
    if name == "smolvlm-256m-random":
        return smolvlm_256m_random()
    from mmfv.models import load_model

    return load_model(name)
