"""Relation items and in-context prompts: clean, corrupted and zero-shot.

The builders know nothing about any model: a :class:`Prompt` holds its items; a :class:`Template`
(one per model family) renders it to text with image placeholders, in order.

Two protocols build corrupted prompts (``protocol=``): ``"mmfv"`` (default) draws demonstrations
of the *other* relations from other images, so no demonstration shows the query's relation;
``"fu2025"`` / ``"fu2025_gqa"`` follow the released code of Fu et al. (2025), see
:func:`corrupted_fu2025` and docs/protocols.md.
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
    loaded on demand by :meth:`load_image`; None for a text-only item (its prompt text has no image
    token). ``image_id`` identifies the image for caching features and for leak-free splits; a
    text-only item carries a query-derived id (:func:`text_id`). ``candidates`` are the object names
    visible in the image (chance = 1 / their number).
    """

    image_id: str
    query: str
    answer: str
    relation: str
    image: Any = field(default=None, repr=False, compare=False, hash=False)
    candidates: tuple[str, ...] = field(default=(), repr=False, compare=False, hash=False)

    @property
    def has_image(self) -> bool:
        return self.image is not None

    def load_image(self) -> Image.Image:
        src = self.image
        if src is None:
            raise ValueError(f"item {self.image_id!r} ({self.query!r} -> {self.answer!r}) is text-only: it has no image")
        if isinstance(src, Image.Image):
            return src
        if isinstance(src, (str, Path)):
            try:
                with Image.open(src) as im:
                    return im.convert("RGB")
            except FileNotFoundError:
                raise FileNotFoundError(f"image {src} of item {self.image_id!r} not found") from None
            except Exception as e:  # noqa: BLE001 - PIL raises many kinds for a damaged file
                raise ValueError(f"image {src} of item {self.image_id!r} is unreadable ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0] if str(e) else 'damaged'}): replace or remove it") from None
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
        """The images of the items that have one, in prompt order (text-only items have none)."""
        return [it.load_image() for it in self.items if it.has_image]

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
        """The prompt as one string with ``image_token`` at each image, in ``prompt.items`` order
        (a text-only item gets no image token)."""
        parts = [self.prefix]
        for it in prompt.demos:
            parts.append(self.demo.format(image=self._image(it), query=it.query, answer=it.answer, eoc=self.eoc))
        parts.append(self.query.format(image=self._image(prompt.query), query=prompt.query.query, eoc=self.eoc))
        return "".join(parts)

    def _image(self, it: Item) -> str:
        return self.image_token if it.has_image else ""

    def answer_text(self, prompt: Prompt) -> str:
        """The continuation the model should produce (e.g. " blue square")."""
        return self.answer_prefix + prompt.answer


FLAMINGO = Template()

TEXT = Template(demo="{image}Q: {query}\nA: {answer}{eoc}", query="{image}Q: {query}\nA:", eoc="\n\n")
"""The plain text template of text-only language models: Todd et al. (2024)'s format, ``Q: hot\nA: cold\n\n``
per demonstration, then ``Q: big\nA:`` (their default prefixes and separators); scored on `` small``."""

FU2025 = Template(demo="{image}Q:{query}. A:{answer}.{eoc}\n", query="{image}Q:{query}. A:", answer_prefix="")
"""Fu et al. (2025)'s OpenFlamingo text: ``<image>Q:man. A:phone.<|endofchunk|>`` per demonstration,
joined by newlines, then ``<image>Q:boy. A:`` (dataset/utils.py, ``construct_question``, flamingo
branch). Their answer token is the first token of ``prompt + answer`` after the prompt, with no space
(utils/utils.py, ``get_answer_id``), hence ``answer_prefix=""``."""

FU2025_SYSTEM = "Use the following template to answer the question:\nQ:object1. A:object2"
"""The system message of Fu et al. (2025)'s Qwen3-VL chat prompt (dataset/utils.py, ``construct_question``)."""


def fu2025_chat(prompt: Prompt) -> list[dict[str, Any]]:
    """Fu et al. (2025)'s Qwen3-VL messages for ``prompt``: the system message, then one user turn
    interleaving ``{"type": "image"}`` and ``Q:x. A:y.\n`` per demonstration, then the query image
    and ``Q:x. A:``. The model adapter fills the images (in ``prompt.items`` order) and applies the
    processor's chat template with ``add_generation_prompt=True``. Text-only items get no image entry.
    """
    content: list[dict[str, Any]] = []
    for it in prompt.demos:
        if it.has_image:
            content.append({"type": "image"})
        content.append({"type": "text", "text": f"Q:{it.query}. A:{it.answer}.\n"})
    if prompt.query.has_image:
        content.append({"type": "image"})
    content.append({"type": "text", "text": f"Q:{prompt.query.query}. A:"})
    return [
        {"role": "system", "content": [{"type": "text", "text": FU2025_SYSTEM}]},
        {"role": "user", "content": content},
    ]


def text_id(query: str) -> str:
    """The image id of a text-only item: derived from its query, so splits by image id split by query."""
    return f"text:{query}"


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
    R.user(query.relation)
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
    protocol: str = "mmfv",
) -> Prompt:
    """k real demonstrations whose relations are all *other* than the query's, shuffled.

    ``pools`` maps relation -> items; every relation but the query's is used, cycled in a random
    order so they appear about equally often. Each demo is a real image/answer pair; none shows r.
    With ``protocol="fu2025"`` / ``"fu2025_gqa"`` a clean prompt is drawn first and turned into its
    corrupted version by :func:`corrupted_fu2025` (the paper's construction, which may show r).
    """
    R.user(query.relation)
    if k < 0:
        raise PromptError(f"k must be >= 0, got {k}")
    if protocol != "mmfv":
        _check_protocol(protocol)
        base = clean(query, _clean_pool(pools.get(query.relation, ()), pools, protocol), k, rng)
        return corrupted_fu2025(base, pools, rng, protocol)
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


PROTOCOLS = ("mmfv", "fu2025", "fu2025_gqa")
"""How corrupted prompts are built: ours, Fu et al.'s synthetic-data rotation, their GQA round robin."""


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise PromptError(f"unknown prompt protocol {protocol!r}: choose one of {', '.join(PROTOCOLS)}")


def _relations(pools: Mapping[str, Sequence[Item]]) -> list[str]:
    """The relations with items, in ``pools`` order (Fu's order: above, below, left, right)."""
    return [r for r in pools if len(pools[r]) > 0]


def _by_anchor(pools: Mapping[str, Sequence[Item]]) -> dict[tuple[str, str, str], Item]:
    return {(r, it.image_id, it.query): it for r in _relations(pools) for it in pools[r]}


def _clean_pool(pool: Sequence[Item], pools: Mapping[str, Sequence[Item]], protocol: str) -> list[Item]:
    """Demonstrations a clean prompt may use. Under ``fu2025`` only items whose image and query have
    an answer in every relation of ``pools`` (Fu's synthetic images all do), so the corrupted version
    can rotate answers on the same demonstrations."""
    if protocol != "fu2025":
        return list(pool)
    index, rels = _by_anchor(pools), _relations(pools)
    return [it for it in pool if all((r, it.image_id, it.query) in index for r in rels)]


def corrupted_fu2025(clean_prompt: Prompt, pools: Mapping[str, Sequence[Item]], rng: random.Random,
                     protocol: str = "fu2025") -> Prompt:
    """The corrupted ("shuffled") version of a clean prompt as Fu et al. (2025)'s code builds it.

    ``"fu2025"`` (dataset/synthetic_dataset.py, ``SyntheticRelationDataset.__init__``): the same
    demonstration images and query objects; demonstration i answers with the object in relation
    i of ``pools`` order (``zip(in_context, rel_cols)``), then the demonstrations are permuted. With
    k = 4 and 4 relations every relation appears once, the query's included; k above the number
    of relations is refused (their ``zip`` would silently drop demonstrations).

    ``"fu2025_gqa"`` (dataset/gqa_dataset.py, ``ICLRelationDataset._build_single_task_for_relation``):
    round robin over a random permutation of *all* relations (the query's included), one item per
    step from an image not used by the clean prompt; no final permutation. Where the paper's code
    then falls back to any image of any relation, this raises.
    """
    _check_protocol(protocol)
    if protocol == "mmfv":
        raise PromptError("corrupted_fu2025 builds the paper's prompts: use corrupted() for protocol 'mmfv'")
    query, k = clean_prompt.query, clean_prompt.k
    rels = _relations(pools)
    if protocol == "fu2025":
        if k > len(rels):
            raise PromptError(f"fu2025 corrupted prompts rotate answers over the {len(rels)} relations "
                              f"({', '.join(rels)}); k={k} is more: lower k to at most {len(rels)}")
        index = _by_anchor(pools)
        demos = []
        for d, r in zip(clean_prompt.demos, rels):
            it = index.get((r, d.image_id, d.query))
            if it is None:
                raise PromptError(f"image {d.image_id!r} has no {r!r} answer for {d.query!r}: fu2025 corrupted prompts "
                                  "need clean demonstrations with every relation (build them with protocol='fu2025')")
            demos.append(it)
        rng.shuffle(demos)
        return Prompt(tuple(demos), query, "corrupted")
    order = list(rels)
    rng.shuffle(order)
    used = {d.image_id for d in clean_prompt.demos} | {query.image_id}
    picked: list[Item] = []
    for step in range(10 * max(1, k) * max(1, len(order))):  # the paper's attempt budget
        if len(picked) == k or not order:
            break
        r = order[step % len(order)]
        cand = [it for it in pools[r] if it.image_id not in used]
        if cand:
            it = rng.choice(cand)
            picked.append(it)
            used.add(it.image_id)
    if len(picked) < k:
        raise PromptError(f"fu2025_gqa corrupted prompt for {query.relation!r} found only {len(picked)} of k={k} "
                          "demonstrations on unused images: lower k or add items")
    return Prompt(tuple(picked), query, "corrupted")


def zero_shot(query: Item) -> Prompt:
    """The query alone."""
    R.user(query.relation)
    return Prompt((), query, "zero-shot")


KINDS = ("clean", "corrupted", "zero-shot")


def build(
    kind: str,
    queries: Sequence[Item],
    pools: Mapping[str, Sequence[Item]],
    k: int,
    n: int,
    seed: int,
    protocol: str = "mmfv",
) -> list[Prompt]:
    """``n`` prompts of one kind, each for a different query where possible (cycling if n > queries).

    ``pools`` maps relation -> demonstration items. Deterministic in ``seed``. Under a ``fu2025``
    protocol the corrupted prompt i is the corrupted version of clean prompt i of
    ``build("clean", ...)`` with the same arguments (the paper's paired "shuffled" tasks).
    """
    if kind not in KINDS:
        raise PromptError(f"unknown prompt kind {kind!r}: choose one of {', '.join(KINDS)}")
    _check_protocol(protocol)
    if n <= 0:
        raise PromptError(f"number of prompts must be positive, got {n}")
    if not queries:
        raise PromptError("no query items: the split has no items of this relation")
    rel = queries[0].relation
    if protocol != "mmfv" and kind == "corrupted":
        cleans = build("clean", queries, pools, k, n, seed, protocol)
        rng = random.Random(f"mmfv-prompts:{seed}:{kind}:{k}:{rel}:{protocol}")
        return [corrupted_fu2025(p, pools, rng, protocol) for p in cleans]
    # The query order depends only on (seed, relation): every kind and k sees the same queries.
    order = list(range(len(queries)))
    random.Random(f"mmfv-queries:{seed}:{rel}").shuffle(order)
    rng = random.Random(f"mmfv-prompts:{seed}:{kind}:{k}:{rel}")
    if protocol == "fu2025" and kind == "clean":
        pools = {**pools, rel: _clean_pool(pools.get(rel, ()), pools, protocol)}
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
