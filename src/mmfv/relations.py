"""Relation names, their grid geometry and composition: the single source of truth.

Every other module asks this one for relation names; none spells them itself.
A spatial relation ``r`` holds between a query object at grid cell (row, col) and an answer
object at (row + drow, col + dcol), with rows growing downwards (image convention).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Relation:
    """A named relation with an optional grid offset (None for non-spatial relations)."""

    name: str
    offset: tuple[int, int] | None  # (drow, dcol); rows grow downwards
    phrase: str  # how the relation reads in English ("to the left of")

    @property
    def is_spatial(self) -> bool:
        return self.offset is not None


_SPATIAL: dict[str, Relation] = {
    r.name: r
    for r in (
        Relation("above", (-1, 0), "above"),
        Relation("below", (1, 0), "below"),
        Relation("left", (0, -1), "to the left of"),
        Relation("right", (0, 1), "to the right of"),
        Relation("above_left", (-1, -1), "above and to the left of"),
        Relation("above_right", (-1, 1), "above and to the right of"),
        Relation("below_left", (1, -1), "below and to the left of"),
        Relation("below_right", (1, 1), "below and to the right of"),
    )
}

CARDINAL: tuple[str, ...] = ("above", "below", "left", "right")
"""Relations used to build and train vectors."""
NOVEL: tuple[str, ...] = ("above_left", "above_right", "below_left", "below_right")
"""Diagonal relations: never used to build or train a vector; composition/analogy targets only."""
SPATIAL: tuple[str, ...] = CARDINAL + NOVEL
VERTICAL: tuple[str, ...] = ("above", "below")
HORIZONTAL: tuple[str, ...] = ("left", "right")

NON_SPATIAL: tuple[str, ...] = (
    "holding", "riding", "sitting_on", "standing_on", "lying_on", "walking_on", "hanging_on", "wearing",
    "carrying", "eating", "drinking", "playing_with", "looking_at", "touching", "using", "covering",
    "pulling", "pushing", "throwing", "catching", "feeding", "watching", "driving", "flying",
)
"""Scene-graph (GQA) relations without geometry, named lower_case_with_underscores."""

# Scene-graph phrases (GQA, VSR) that name one of our spatial relations. The image-plane ones say
# where the object is drawn; the support ones ("on top of", "under") also say it rests on or is
# covered by the other object, so a dataset may keep them apart (``from_phrase(image_plane_only=True)``).
IMAGE_PLANE_ALIASES: dict[str, str] = {
    "above": "above",
    "below": "below",
    "to the left of": "left",
    "left of": "left",
    "at the left side of": "left",
    "to the right of": "right",
    "right of": "right",
    "at the right side of": "right",
}
SUPPORT_ALIASES: dict[str, str] = {
    "on top of": "above",
    "over": "above",
    "under": "below",
    "beneath": "below",
    "underneath": "below",
}
PHRASE_ALIASES: dict[str, str] = {**IMAGE_PLANE_ALIASES, **SUPPORT_ALIASES}

_USER_NAME = re.compile(r"[a-z0-9]+(?:_[a-z0-9]+)*")


class UnknownRelationError(ValueError):
    """Raised for a relation name that mmfv does not know."""


def get(name: str) -> Relation:
    """Return the spatial relation called ``name``; one-line error listing the valid names."""
    try:
        return _SPATIAL[name]
    except KeyError:
        raise UnknownRelationError(
            f"unknown relation {name!r}: choose one of {', '.join(SPATIAL)}"
        ) from None


def check(name: str) -> str:
    """Accept a spatial or a known non-spatial relation name; one-line error otherwise."""
    if name in _SPATIAL or name in NON_SPATIAL:
        return name
    raise UnknownRelationError(
        f"unknown relation {name!r}: spatial relations are {', '.join(SPATIAL)}; non-spatial ones are {', '.join(NON_SPATIAL)}"
    )


def validate(names: list[str] | tuple[str, ...], allowed: tuple[str, ...] = SPATIAL) -> list[str]:
    """Check every name is in ``allowed`` and return them as a list (order kept)."""
    out = []
    for n in names:
        if n not in allowed:
            raise UnknownRelationError(
                f"unknown relation {n!r}: choose one of {', '.join(allowed)}"
            )
        out.append(n)
    return out


def offset(name: str) -> tuple[int, int]:
    """Grid offset (drow, dcol) of a spatial relation."""
    off = get(name).offset
    assert off is not None
    return off


def from_offset(drow: int, dcol: int) -> str | None:
    """The spatial relation with this offset, or None."""
    for r in _SPATIAL.values():
        if r.offset == (drow, dcol):
            return r.name
    return None


def compose(a: str, b: str) -> str:
    """``a ∘ b``: the relation whose offset is the sum of both (above ∘ left = above_left).

    Raises when the sum is no single-step relation (e.g. above ∘ below, left ∘ left).
    """
    (r1, c1), (r2, c2) = offset(a), offset(b)
    out = from_offset(r1 + r2, c1 + c2)
    if out is None:
        raise ValueError(f"{a} and {b} do not compose into a relation: pick one vertical and one horizontal")
    return out


def decompose(name: str) -> tuple[str, str]:
    """Inverse of :func:`compose` for a diagonal relation: (vertical, horizontal)."""
    if name not in NOVEL:
        raise ValueError(
            f"{name!r} is not composable: only the diagonal relations {', '.join(NOVEL)} are"
        )
    drow, dcol = offset(name)
    v = from_offset(drow, 0)
    h = from_offset(0, dcol)
    assert v is not None and h is not None
    return v, h


def from_phrase(phrase: str, image_plane_only: bool = False) -> str | None:
    """Map a scene-graph relation phrase to a spatial relation name, or None if not spatial.

    With ``image_plane_only`` the support phrases ("on top of", "under", ...) are not mapped.
    """
    aliases = IMAGE_PLANE_ALIASES if image_plane_only else PHRASE_ALIASES
    return aliases.get(phrase.strip().lower())


def normalise(phrase: str) -> str:
    """A phrase as a relation name: lower case, runs of spaces / hyphens as one underscore.

    ``normalise("Sitting  On") == "sitting_on"``, ``normalise("country-capital") == "country_capital"``.
    """
    return "_".join(w for w in re.split(r"[\s\-_]+", phrase.strip().lower()) if w)


def user(name: str) -> str:
    """Accept any lower_case relation name (a user's task, a scene-graph predicate); one-line error
    otherwise. Only the 8 spatial names carry grid geometry; any other name is a label."""
    if not isinstance(name, str) or not _USER_NAME.fullmatch(name):
        raise UnknownRelationError(
            f"relation name {name!r} must be lower_case words joined by '_' (letters and digits, e.g. sitting_on)"
        )
    return name


def scene_name(phrase: str, image_plane_only: bool = False) -> str:
    """The mmfv name of a scene-graph predicate or a user's relation phrase.

    Spatial phrases map through :func:`from_phrase` ("to the left of" -> "left"); any other phrase
    is :func:`normalise`-d ("sitting on" -> "sitting_on"); an mmfv name comes back unchanged.
    Never raises (it reads every predicate of a file); check names a user asks for with :func:`user`.
    """
    spatial = from_phrase(phrase, image_plane_only)
    return spatial if spatial is not None else normalise(phrase)


def opposite(name: str) -> str:
    """The relation with the negated offset (left -> right)."""
    drow, dcol = offset(name)
    out = from_offset(-drow, -dcol)
    assert out is not None
    return out
