"""Relations: names, grid offsets, composition and its inverse, phrase aliases, one-line errors."""

from __future__ import annotations

import itertools

import pytest

from mmfv import relations as R

# Written out by hand (not derived from the module) so a wrong offset in relations.py fails here.
# Rows grow downwards: "above" is one row up (drow = -1), "left" one column left (dcol = -1).
EXPECTED_OFFSETS = {
    "above": (-1, 0),
    "below": (1, 0),
    "left": (0, -1),
    "right": (0, 1),
    "above_left": (-1, -1),
    "above_right": (-1, 1),
    "below_left": (1, -1),
    "below_right": (1, 1),
}
DIAGONALS = {
    ("above", "left"): "above_left",
    ("above", "right"): "above_right",
    ("below", "left"): "below_left",
    ("below", "right"): "below_right",
}


def test_name_sets():
    assert R.CARDINAL == ("above", "below", "left", "right")
    assert set(R.NOVEL) == set(DIAGONALS.values())
    assert R.SPATIAL == R.CARDINAL + R.NOVEL and len(set(R.SPATIAL)) == 8
    assert set(R.VERTICAL) | set(R.HORIZONTAL) == set(R.CARDINAL)
    assert not set(R.VERTICAL) & set(R.HORIZONTAL)
    assert not set(R.NON_SPATIAL) & set(R.SPATIAL)
    assert all(n == n.lower() and " " not in n for n in R.SPATIAL + R.NON_SPATIAL)


@pytest.mark.parametrize("name, off", EXPECTED_OFFSETS.items())
def test_offsets(name, off):
    assert R.offset(name) == off
    assert R.from_offset(*off) == name
    rel = R.get(name)
    assert rel.name == name and rel.is_spatial and rel.offset == off


def test_from_offset_outside_the_neighbourhood():
    assert R.from_offset(0, 0) is None
    assert R.from_offset(2, 0) is None and R.from_offset(-1, 2) is None


@pytest.mark.parametrize("pair, diag", DIAGONALS.items())
def test_compose_all_diagonals_both_orders(pair, diag):
    v, h = pair
    assert R.compose(v, h) == diag
    assert R.compose(h, v) == diag
    assert R.offset(diag) == tuple(a + b for a, b in zip(R.offset(v), R.offset(h)))


@pytest.mark.parametrize("pair, diag", DIAGONALS.items())
def test_decompose_is_the_inverse(pair, diag):
    assert R.decompose(diag) == pair
    assert R.compose(*R.decompose(diag)) == diag


@pytest.mark.parametrize(
    "a, b",
    [("above", "below"), ("below", "above"), ("left", "right"), ("above", "above"), ("left", "left"),
     ("above_left", "below_right"), ("above_left", "above"), ("below_right", "right")],
)
def test_not_composable(a, b):
    with pytest.raises(ValueError, match="do not compose"):
        R.compose(a, b)


@pytest.mark.parametrize("name", R.CARDINAL + ("holding",))
def test_decompose_refuses_non_diagonals(name):
    with pytest.raises(ValueError, match="not composable"):
        R.decompose(name)


@pytest.mark.parametrize("call", [R.get, R.offset, lambda n: R.compose(n, "left"), lambda n: R.compose("above", n)])
def test_unknown_relation_names_the_valid_ones(call):
    with pytest.raises(R.UnknownRelationError) as e:
        call("up")
    msg = str(e.value)
    assert isinstance(e.value, ValueError)
    assert "'up'" in msg and "\n" not in msg
    assert all(n in msg for n in R.SPATIAL)


def test_check_and_validate():
    assert R.check("riding") == "riding" and R.check("above_left") == "above_left"
    with pytest.raises(R.UnknownRelationError) as e:
        R.check("levitating")
    assert "'levitating'" in str(e.value) and "holding" in str(e.value) and "below_right" in str(e.value)
    assert R.validate(("right", "above", "below_left")) == ["right", "above", "below_left"]
    with pytest.raises(R.UnknownRelationError, match="above_left"):
        R.validate(["left", "above_left"], allowed=R.CARDINAL)
    with pytest.raises(R.UnknownRelationError, match="'holding'"):
        R.get("holding")  # a non-spatial name has no geometry


@pytest.mark.parametrize("phrase, name", R.PHRASE_ALIASES.items())
def test_from_phrase_aliases(phrase, name):
    assert name in R.CARDINAL
    assert R.from_phrase(phrase) == name
    assert R.from_phrase(f"  {phrase.upper()} ") == name


@pytest.mark.parametrize(
    "phrase, name",
    [("to the left of", "left"), ("on top of", "above"), ("under", "below"), ("beneath", "below"),
     ("right of", "right"), ("over", "above")],
)
def test_known_phrases(phrase, name):
    assert R.from_phrase(phrase) == name


@pytest.mark.parametrize("phrase", ["holding", "riding", "next to", "near", ""])
def test_non_spatial_phrases(phrase):
    assert R.from_phrase(phrase) is None


def test_opposite():
    pairs = {"above": "below", "left": "right", "above_left": "below_right", "above_right": "below_left"}
    for a, b in pairs.items():
        assert R.opposite(a) == b and R.opposite(b) == a


def test_offsets_are_unique_and_one_step():
    offs = [R.offset(n) for n in R.SPATIAL]
    assert len(set(offs)) == 8
    assert set(offs) == {(dr, dc) for dr, dc in itertools.product((-1, 0, 1), repeat=2)} - {(0, 0)}


def test_alias_groups():
    assert R.PHRASE_ALIASES == {**R.IMAGE_PLANE_ALIASES, **R.SUPPORT_ALIASES}
    assert not set(R.IMAGE_PLANE_ALIASES) & set(R.SUPPORT_ALIASES)
    assert R.from_phrase("under") == "below" and R.from_phrase("under", image_plane_only=True) is None
    assert R.from_phrase("on top of", image_plane_only=True) is None
    assert R.from_phrase("Below", image_plane_only=True) == "below"
    assert R.from_phrase("at the left side of", image_plane_only=True) == "left"


@pytest.mark.parametrize("phrase, name", [("Sitting  On", "sitting_on"), ("country-capital", "country_capital"),
                                          ("to the left of", "to_the_left_of"), ("above_left", "above_left"),
                                          (" holding ", "holding")])
def test_normalise(phrase, name):
    assert R.normalise(phrase) == name


def test_user_names():
    for ok in ("holding", "sitting_on", "country_capital", "above", "r2d2"):
        assert R.user(ok) == ok
    for bad in ("Holding", "sitting on", "left-of", "", "_x", "x_", "a__b", None):
        with pytest.raises(R.UnknownRelationError) as e:
            R.user(bad)  # type: ignore[arg-type]
        assert repr(bad) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(R.UnknownRelationError):
        R.get("sitting_on")  # a user name has no geometry


@pytest.mark.parametrize("phrase, name", [("to the left of", "left"), ("under", "below"), ("sitting on", "sitting_on"),
                                          ("In Front Of", "in_front_of"), ("left", "left")])
def test_scene_name(phrase, name):
    assert R.scene_name(phrase) == name


def test_scene_name_image_plane_only():
    assert R.scene_name("under", image_plane_only=True) == "under"
    assert R.scene_name("on top of", image_plane_only=True) == "on_top_of"
    assert R.scene_name("right of", image_plane_only=True) == "right"
