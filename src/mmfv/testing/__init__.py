"""Builders of small random models for tests and benchmarks; not part of the method API.

Nothing here downloads anything: tokenizers are trained locally on the synthetic scenes' words,
processors are built from their classes, weights are random (seeded).

- :func:`random_tiny` (:mod:`.tiny`): a random mmfv-tiny.
- :func:`openflamingo_tiny_random` (:mod:`.openflamingo`): a small random OpenFlamingo, what
  ``load_model("openflamingo:tiny-random")`` returns.
- :func:`hf_tiny` (:mod:`.hf`): a small random model of any HF family, from its spec's ``tiny`` data;
  :func:`smolvlm_256m_random`: SmolVLM-256M's dimensions with random weights (benchmarks).
- :func:`random_vectors` (:mod:`.vectors`): random one-head function vectors of a model.
"""

from __future__ import annotations

from mmfv.testing.hf import build as hf_tiny
from mmfv.testing.hf import smolvlm_256m_random
from mmfv.testing.openflamingo import tiny_random as openflamingo_tiny_random
from mmfv.testing.tiny import random_tiny
from mmfv.testing.vectors import random_vectors

__all__ = ["hf_tiny", "openflamingo_tiny_random", "random_tiny", "random_vectors", "smolvlm_256m_random"]
