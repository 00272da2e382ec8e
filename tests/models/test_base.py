"""The per-image feature cache every adapter uses."""

from __future__ import annotations

import types

import pytest

from mmfv.models.base import FeatureCache


def test_feature_cache_is_lru_and_lists_missing_images_once():
    c = FeatureCache(max_items=2)
    items = [types.SimpleNamespace(image_id=i) for i in ("a", "b", "a", "c")]
    assert list(c.missing(items)) == ["a", "b", "c"]
    c.put("a", 1)
    c.put("b", 2)
    assert c["a"] == 1  # "a" is now the most recently used
    c.put("c", 3)  # evicts "b", the least recently used
    assert "b" not in c and "a" in c and "c" in c and len(c) == 2
    assert list(c.missing(items)) == ["b"]
    assert c.get("b") is None and c.get("b", 0) == 0
    with pytest.raises(KeyError):
        c["b"]
    c.clear()
    assert len(c) == 0
