"""Real-sized random-weight models for benchmarks (no download): the architecture and dimensions of a
released checkpoint, random weights, an offline tokenizer and processor (built by mmfv.testing).

    smolvlm-256m-random   SmolVLM-256M: SigLIP-B/16 at 512 px (12 layers, 768), pixel shuffle x4 ->
                          64 tokens per image, SmolLM2-135M-style decoder (30 layers, 576, 9 heads
                          of 64, 3 KV heads), vocabulary 49,280.
"""

from __future__ import annotations

from mmfv.testing import smolvlm_256m_random

BUILDERS = ("smolvlm-256m-random",)


def load(name: str):
    """A benchmark model by name: one of BUILDERS, else anything ``mmfv.models.load_model`` takes."""
    if name == "smolvlm-256m-random":
        return smolvlm_256m_random()
    from mmfv.models import load_model

    return load_model(name)
