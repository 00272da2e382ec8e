"""Relation items and in-context prompts: clean, corrupted and zero-shot.

The builders know nothing about any model: a :class:`Prompt` holds its items; a :class:`Template`
(one per model family) renders it to text with image placeholders, in order.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from PIL import Image

from mmfv import relations as R


@dataclass(frozen=True)
class Item:
    """(image, query object, answer object, relation): the answer stands in ``relation`` to the query.

    ``image`` is a PIL image, a path, or any object with an ``.image`` attribute (a synthetic Scene),
    loaded on demand by :meth:`load_image`. ``image_id`` identifies the image for caching features.
    ``candidates`` are the object names visible in the image (chance = 1 / their number).
    """

    image_id: str
    query: str
    answer: str
    relation: str
    image: Any = field(repr=False, compare=False, hash=False)
    candidates: tuple[str, ...] = field(default=(), repr=False, compare=False, hash=False)

    def load_image(self) -> Image.Image:
        src = self.image
        if isinstance(src, Image.Image):
            return src
        if isinstance(src, (str, Path)):
            with Image.open(src) as im:
                return im.convert("RGB")
        return src.image


@dataclass(frozen=True)
class Prompt:
    """k demonstrations followed by a query.

    ``kind`` is "clean" (all demos share the query's relation), "corrupted" (no demo uses it) or
    "zero-shot" (no demos). ``relation`` and ``answer`` are those of the query.
    """

    demos: tuple[Item, ...]
    query: Item
    kind: str

    @property
    def relation(self) -> str:
        return self.query.relation

    @property
    def answer(self) -> str:
        return self.query.answer

    @property
    def k(self) -> int:
        return len(self.demos)

    @property
    def items(self) -> tuple[Item, ...]:
        return (*self.demos, self.query)

    @property
    def image_ids(self) -> list[str]:
        return [it.image_id for it in self.items]

    def images(self) -> list[Image.Image]:
        return [it.load_image() for it in self.items]

    def segments(self) -> list[tuple[str, str]]:
        """Per item, (question text, answer text or "" for the query), model-independent."""
        return [(it.query, it.answer) for it in self.demos] + [(self.query.query, "")]


@dataclass(frozen=True)
class Template:
    """How a model family writes a prompt. ``{image}`` marks where each image goes.

    The default is Flamingo-style: ``<image>Q: cat. A: dog.<|endofchunk|>`` per demonstration and
    ``<image>Q: cat. A:`` for the query; the model is scored on the answer that follows.
    """

    image_token: str = "<image>"
    demo: str = "{image}Q: {query}. A: {answer}.{eoc}"
    query: str = "{image}Q: {query}. A:"
    eoc: str = "<|endofchunk|>"
    prefix: str = ""
    answer_prefix: str = " "  # what joins the prompt's end and the answer text

    def render(self, prompt: Prompt) -> str:
        """The prompt as one string with ``image_token`` at each image, in ``prompt.items`` order."""
        parts = [self.prefix]
        for it in prompt.demos:
            parts.append(self.demo.format(image=self.image_token, query=it.query, answer=it.answer, eoc=self.eoc))
        parts.append(self.query.format(image=self.image_token, query=prompt.query.query, eoc=self.eoc))
        return "".join(parts)

    def answer_text(self, prompt: Prompt) -> str:
        """The continuation the model should produce (e.g. " blue square")."""
        return self.answer_prefix + prompt.answer


FLAMINGO = Template()


class PromptError(ValueError):
    """A prompt cannot be built from the items given."""


def items_from_scenes(scenes: Iterable[Any], relation: str) -> list[Item]:
    """One item per scene that has an object in ``relation`` to its query (synthetic scenes)."""
    R.get(relation)
    out = []
    for s in scenes:
        obj = s.neighbours[relation]
        if obj is None:
            continue
        out.append(Item(s.id, s.query.name, obj.name, relation, s, tuple(o.name for o in s.objects)))
    return out


def item_from_scene(scene: Any, relation: str) -> Item:
    """The item of ``scene`` for ``relation``; raises if that scene lacks the relation."""
    return Item(scene.id, scene.query.name, scene.answer(relation), relation, scene, tuple(o.name for o in scene.objects))


def _draw(pool: Sequence[Item], k: int, exclude: set[str], rng: random.Random, what: str) -> list[Item]:
    usable = [it for it in pool if it.image_id not in exclude]
    if k > len(usable):
        raise PromptError(f"k={k} demonstrations asked but only {len(usable)} {what} items are available: lower k or add items")
    return rng.sample(usable, k)


def clean(query: Item, pool: Sequence[Item], k: int, rng: random.Random) -> Prompt:
    """k demonstrations of the query's relation, drawn from ``pool`` (never the query's image)."""
    R.check(query.relation)
    if k < 0:
        raise PromptError(f"k must be >= 0, got {k}")
    wrong = [it for it in pool if it.relation != query.relation]
    if wrong:
        raise PromptError(f"clean demonstrations must all be {query.relation!r}; got an item of {wrong[0].relation!r}")
    return Prompt(tuple(_draw(pool, k, {query.image_id}, rng, query.relation)), query, "clean")


def corrupted(
    query: Item,
    pools: Mapping[str, Sequence[Item]],
    k: int,
    rng: random.Random,
) -> Prompt:
    """k real demonstrations whose relations are all *other* than the query's, shuffled.

    ``pools`` maps relation -> items; every relation but the query's is used, cycled in a random
    order so they appear about equally often. Each demo is a real image/answer pair; none shows r.
    """
    R.check(query.relation)
    if k < 0:
        raise PromptError(f"k must be >= 0, got {k}")
    others = [r for r in pools if r != query.relation and len(pools[r]) > 0]
    if k and not others:
        raise PromptError(f"corrupted prompts for {query.relation!r} need items of another relation; none given")
    order: list[str] = []
    while len(order) < k:
        cycle = list(others)
        rng.shuffle(cycle)
        order.extend(cycle)
    order = order[:k]
    demos: list[Item] = []
    used = {query.image_id}
    for r in order:
        (it,) = _draw(pools[r], 1, used, rng, r)
        used.add(it.image_id)
        demos.append(it)
    rng.shuffle(demos)
    return Prompt(tuple(demos), query, "corrupted")


def zero_shot(query: Item) -> Prompt:
    """The query alone."""
    R.check(query.relation)
    return Prompt((), query, "zero-shot")


KINDS = ("clean", "corrupted", "zero-shot")


def build(
    kind: str,
    queries: Sequence[Item],
    pools: Mapping[str, Sequence[Item]],
    k: int,
    n: int,
    seed: int,
) -> list[Prompt]:
    """``n`` prompts of one kind, each for a different query where possible (cycling if n > queries).

    ``pools`` maps relation -> demonstration items. Deterministic in ``seed``.
    """
    if kind not in KINDS:
        raise PromptError(f"unknown prompt kind {kind!r}: choose one of {', '.join(KINDS)}")
    if n <= 0:
        raise PromptError(f"number of prompts must be positive, got {n}")
    if not queries:
        raise PromptError("no query items: the split has no items of this relation")
    # The query order depends only on (seed, relation): every kind and k sees the same queries.
    order = list(range(len(queries)))
    random.Random(f"mmfv-queries:{seed}:{queries[0].relation}").shuffle(order)
    rng = random.Random(f"mmfv-prompts:{seed}:{kind}:{k}:{queries[0].relation}")
    out = []
    for i in range(n):
        q = queries[order[i % len(order)]]
        if kind == "clean":
            out.append(clean(q, pools.get(q.relation, ()), k, rng))
        elif kind == "corrupted":
            out.append(corrupted(q, pools, k, rng))
        else:
            out.append(zero_shot(q))
    return out
