"""Relations: names, offsets, composition rules."""

import pytest

from mmfv import relations as R


@pytest.mark.parametrize("diag", R.NOVEL)
def test_compose_and_decompose(diag):
    v, h = R.decompose(diag)
    assert v in R.VERTICAL and h in R.HORIZONTAL
    assert R.compose(v, h) == diag == R.compose(h, v)


def test_above_left():
    assert R.compose("above", "left") == "above_left"
    assert R.offset("above_left") == (-1, -1)


@pytest.mark.parametrize("a, b", [("above", "below"), ("left", "left"), ("left", "right")])
def test_not_composable(a, b):
    with pytest.raises(ValueError, match="do not compose"):
        R.compose(a, b)


def test_unknown_relation_names_the_choices():
    with pytest.raises(R.UnknownRelationError) as e:
        R.get("up")
    assert "'up'" in str(e.value) and "above" in str(e.value)
    with pytest.raises(ValueError, match="not composable"):
        R.decompose("left")


def test_sets_and_phrases():
    assert set(R.CARDINAL) | set(R.NOVEL) == set(R.SPATIAL) and not set(R.CARDINAL) & set(R.NOVEL)
    assert R.from_phrase("to the left of") == "left" and R.from_phrase("On top of") == "above" and R.from_phrase("holding") is None
    assert all(R.opposite(R.opposite(r)) == r for r in R.SPATIAL)
    assert R.check("riding") == "riding"
