"""The models every adapter test runs on, each built once per session: a random mmfv-tiny, the tiny
random OpenFlamingo, and a tiny random model of every discovered HF family (from its spec's data)."""

from __future__ import annotations

import functools

import pytest

from mmfv import prompts as P
from mmfv.data import synthetic
from mmfv.data.scenes import SceneConfig
from mmfv.models import specs
from mmfv.models.base import LMM
from mmfv.testing import hf_tiny, openflamingo_tiny_random, random_tiny
from mmfv.testing import tiny as tiny_testing

TOL = 1e-5  # max |Δ| between two paths that compute the same logits or IEs, in every model test
SCENE = SceneConfig(grid=3, cell_px=16)  # 48 px scenes: the OpenFlamingo and HF test models take them
RELS = ("above", "below", "left", "right")
HF = tuple(specs.supported())
TEXT = tuple(s.family for s in specs.SPECS if not s.images)  # text-only families: their test items have no image
VLM = tuple(f for f in HF if f not in TEXT)
NAMES = ("mmfv-tiny", "openflamingo", *HF)


def model(name: str) -> LMM:
    """The shared random model ``name`` (one of NAMES). Tests must leave its weights as they found them."""
    if name == "smolvlm":
        pytest.importorskip("num2words", reason="SmolVLM's processor needs num2words (pip install -e '.[test]')")
    return _model(name)


@functools.cache
def _model(name: str) -> LMM:
    if name == "mmfv-tiny":
        return random_tiny()
    if name == "openflamingo":
        return openflamingo_tiny_random()  # what load_model("openflamingo:tiny-random") returns
    return hf_tiny(name)


def scene(name: str = "") -> SceneConfig:
    """The scenes model ``name`` takes (random mmfv-tiny: its own; the others: :data:`SCENE`)."""
    return tiny_testing.SCENE if name == "mmfv-tiny" else SCENE


@functools.cache
def data(name: str = "") -> dict:
    """Synthetic test items, by relation, in the scenes model ``name`` takes (default :data:`SCENE`);
    for a text-only family the same items without their images (one id per scene, so prompts draw
    demonstrations as they do with images)."""
    items = synthetic.items("test", 40, RELS, seed=0, config=scene(name))
    if name in TEXT:
        return {r: [P.Item(f"text:{it.image_id}", it.query, it.answer, it.relation) for it in its] for r, its in items.items()}
    return items


def mixed_prompts(items: dict) -> list[P.Prompt]:
    """Different k in one batch (left padding, rows with fewer images) and a zero-shot prompt (one image)."""
    return P.build("clean", items["left"], items, 2, 2, 0) + P.build("corrupted", items["above"], items, 1, 1, 1) + [P.zero_shot(items["below"][0])]
