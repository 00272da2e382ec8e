"""OpenFlamingo (the paper's model), native and checkpoint-compatible, behind the LMM protocol.

- :mod:`.vision`: the CLIP ViT (open_clip layout) and its image preprocessing.
- :mod:`.modeling`: the Perceiver resampler, gated cross-attention and the whole model.
- :mod:`.checkpoint`: the released / reference checkpoint key layout, CLIP weight conversion.
- :mod:`.adapter`: :class:`OpenFlamingoLMM`, the model as the method code sees it.
- :mod:`.folder`: reading and writing OpenFlamingo folders (``load_model("openflamingo:<folder>")``).

``load_model("openflamingo:tiny-random")`` is a small random model built by :mod:`mmfv.testing`.
"""

from __future__ import annotations

from mmfv.models.openflamingo.adapter import FLAMINGO_TOKENS, OpenFlamingoLMM, add_flamingo_tokens
from mmfv.models.openflamingo.checkpoint import (
    LoadReport,
    load_openflamingo_state_dict,
    native_to_reference_key,
    reference_state_dict,
    reference_to_native_key,
    vision_state_dict,
)
from mmfv.models.openflamingo.folder import MARKER, from_folder, read_meta, save_folder
from mmfv.models.openflamingo.modeling import FlamingoConfig, OpenFlamingo
from mmfv.models.openflamingo.vision import ClipImageProcessor, ClipVisionEncoder, VisionConfig

__all__ = [
    "FLAMINGO_TOKENS", "MARKER", "ClipImageProcessor", "ClipVisionEncoder", "FlamingoConfig", "LoadReport", "OpenFlamingo",
    "OpenFlamingoLMM", "VisionConfig", "add_flamingo_tokens", "from_folder", "load_openflamingo_state_dict",
    "native_to_reference_key", "read_meta", "reference_state_dict", "reference_to_native_key", "save_folder", "vision_state_dict",
]
