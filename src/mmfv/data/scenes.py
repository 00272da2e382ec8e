"""Synthetic relational scenes: a seeded PIL renderer, object vocabulary, splits.

A scene is a ``grid × grid`` board of cells. One *query* object sits in an interior cell, so all
8 neighbouring cells exist; each neighbour cell holds an object with probability
``neighbour_fill`` (else it is empty) and every other cell holds a *distractor* with probability
``distractor_fill``. All objects of a scene are distinct classes, so "the object left of the red
circle" names exactly one object. Same seed and config → byte-identical images and metadata.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Iterator

from PIL import Image, ImageDraw

from mmfv import relations as R

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "plus", "cross", "ring", "bar")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (60, 110, 255),
    "yellow": (240, 220, 40),
    "magenta": (220, 60, 220),
}
OBJECTS: tuple[str, ...] = tuple(f"{c} {s}" for s in SHAPES for c in COLOURS)
"""All 40 object classes, named "<colour> <shape>"."""
HELD_OUT: tuple[str, ...] = tuple(
    f"{list(COLOURS)[i % len(COLOURS)]} {s}" for i, s in enumerate(SHAPES)
)
"""8 classes (one per shape, colours cycling) never shown outside the ``novel_objects`` split."""
TRAIN_OBJECTS: tuple[str, ...] = tuple(o for o in OBJECTS if o not in HELD_OUT)

SPLITS: tuple[str, ...] = ("eval", "train", "val", "test", "novel_objects")
PAPER_SIZES: dict[str, int] = {"eval": 4000, "train": 1000, "val": 1000, "test": 1000, "novel_objects": 1000}
BACKGROUND = (16, 16, 16)


@dataclass(frozen=True)
class SceneConfig:
    """How scenes look. ``cell_px`` is the side of one cell in pixels."""

    grid: int = 5
    cell_px: int = 10
    neighbour_fill: float = 0.9
    distractor_fill: float = 0.3
    jitter: int = 0  # max pixel offset of an object from its cell centre
    query_cells: str = "interior"  # "interior" (any cell with 8 neighbours) or "center"

    def __post_init__(self) -> None:
        if self.grid < 3:
            raise ValueError(f"grid must be >= 3 so the query has 8 neighbours, got {self.grid}")
        if self.cell_px < 6:
            raise ValueError(f"cell_px must be >= 6 to draw a shape, got {self.cell_px}")
        # Shapes are drawn cell_px - 2 - 2*jitter px wide; below 4 px some classes look alike or fail to draw.
        max_jitter = min(self.cell_px // 4, (self.cell_px - 6) // 2)
        if not (0 <= self.jitter <= max_jitter):
            raise ValueError(f"jitter must be in 0..{max_jitter} for cell_px {self.cell_px}")
        if self.query_cells not in ("interior", "center"):
            raise ValueError(f"query_cells must be 'interior' or 'center', got {self.query_cells!r}")
        for name in ("neighbour_fill", "distractor_fill"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")

    @property
    def image_px(self) -> int:
        return self.grid * self.cell_px


@dataclass(frozen=True)
class SceneObject:
    """One drawn object: class name, grid cell and pixel centre (x right, y down)."""

    name: str
    row: int
    col: int
    x: int
    y: int


@dataclass(frozen=True)
class Scene:
    """A rendered-on-demand scene with its query object and the object in each of the 8 relations."""

    id: str
    split: str
    config: SceneConfig
    objects: tuple[SceneObject, ...]
    query_index: int

    @property
    def query(self) -> SceneObject:
        return self.objects[self.query_index]

    @cached_property
    def neighbours(self) -> dict[str, SceneObject | None]:
        """Relation name -> the object standing in that relation to the query (None if empty)."""
        at = {(o.row, o.col): o for o in self.objects}
        q = self.query
        return {r: at.get((q.row + R.offset(r)[0], q.col + R.offset(r)[1])) for r in R.SPATIAL}

    def answer(self, relation: str) -> str:
        """Name of the object in ``relation`` to the query; raises if that cell is empty."""
        R.get(relation)
        obj = self.neighbours[relation]
        if obj is None:
            raise MissingRelationError(f"scene {self.id} has no object {relation} of its query object")
        return obj.name

    def has(self, relation: str) -> bool:
        return self.neighbours[relation] is not None

    @cached_property
    def image(self) -> Image.Image:
        return render(self)

    def signature(self) -> tuple:
        return (self.query_index, tuple((o.name, o.row, o.col, o.x, o.y) for o in self.objects))

    def to_json(self, image_file: str | None = None) -> dict:
        """Metadata record: everything needed to rebuild items without the image."""
        q = self.query
        return {
            "id": self.id,
            "split": self.split,
            "image": image_file,
            "config": asdict(self.config),
            "query": asdict(q),
            "relations": {r: (o.name if o else None) for r, o in self.neighbours.items()},
            "objects": [asdict(o) for o in self.objects],
        }

    @staticmethod
    def from_json(d: dict) -> "Scene":
        objs = tuple(SceneObject(**o) for o in d["objects"])
        q = SceneObject(**d["query"])
        return Scene(d["id"], d["split"], SceneConfig(**d["config"]), objs, objs.index(q))


class MissingRelationError(ValueError):
    """An item asked for a relation whose cell is empty in that scene."""


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: int, cy: int, s: int, rgb) -> None:
    """Draw ``shape`` of size ``s`` px centred on (cx, cy)."""
    h = s // 2
    x0, y0, x1, y1 = cx - h, cy - h, cx - h + s - 1, cy - h + s - 1
    t = max(1, s // 4)  # stroke thickness
    if shape == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=rgb)
    elif shape == "square":
        draw.rectangle([x0 + 1, y0 + 1, x1 - 1, y1 - 1], fill=rgb)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=rgb)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=rgb)
    elif shape == "plus":
        draw.rectangle([cx - t // 2 - (t % 2 == 0), y0, cx + t // 2, y1], fill=rgb)
        draw.rectangle([x0, cy - t // 2 - (t % 2 == 0), x1, cy + t // 2], fill=rgb)
    elif shape == "cross":
        draw.line([(x0, y0), (x1, y1)], fill=rgb, width=t)
        draw.line([(x0, y1), (x1, y0)], fill=rgb, width=t)
    elif shape == "ring":
        draw.ellipse([x0, y0, x1, y1], outline=rgb, width=t)
    elif shape == "bar":
        draw.rectangle([x0, cy - t, x1, cy + t - 1], fill=rgb)
    else:  # pragma: no cover - SHAPES is closed
        raise ValueError(f"unknown shape {shape!r}")


def render(scene: Scene) -> Image.Image:
    """Draw a scene as an RGB image (``grid*cell_px`` square)."""
    cfg = scene.config
    img = Image.new("RGB", (cfg.image_px, cfg.image_px), BACKGROUND)
    draw = ImageDraw.Draw(img)
    size = cfg.cell_px - 2 - 2 * cfg.jitter
    for o in scene.objects:
        colour, shape = o.name.split(" ", 1)
        _draw_shape(draw, shape, o.x, o.y, size, COLOURS[colour])
    return img


def _make_scene(rng: random.Random, split: str, index: int, cfg: SceneConfig) -> Scene:
    g = cfg.grid
    if cfg.query_cells == "center":
        qr = qc = g // 2
    else:
        qr, qc = rng.randrange(1, g - 1), rng.randrange(1, g - 1)
    neighbour_cells = [(qr + dr, qc + dc) for dr, dc in (R.offset(r) for r in R.SPATIAL)]
    others = [(r, c) for r in range(g) for c in range(g) if (r, c) != (qr, qc) and (r, c) not in neighbour_cells]
    filled_n = [cell for cell in neighbour_cells if rng.random() < cfg.neighbour_fill]
    filled_d = [cell for cell in others if rng.random() < cfg.distractor_fill]
    if split == "novel_objects":
        # The query and distractors come from training classes; every neighbour (every possible
        # answer) is a held-out class the model never saw as an answer elsewhere.
        pool_q = list(TRAIN_OBJECTS)
        names_n = rng.sample(list(HELD_OUT), len(filled_n))
        q_name = rng.choice(pool_q)
        pool_q.remove(q_name)
        names_d = rng.sample(pool_q, min(len(filled_d), len(pool_q)))
    else:
        names = rng.sample(list(TRAIN_OBJECTS), min(1 + len(filled_n) + len(filled_d), len(TRAIN_OBJECTS)))
        q_name, names_n, names_d = names[0], names[1 : 1 + len(filled_n)], names[1 + len(filled_n) :]
    cells = [(qr, qc)] + filled_n + filled_d[: len(names_d)]
    objs = []
    for name, (r, c) in zip([q_name, *names_n, *names_d], cells):
        jx = rng.randint(-cfg.jitter, cfg.jitter) if cfg.jitter else 0
        jy = rng.randint(-cfg.jitter, cfg.jitter) if cfg.jitter else 0
        objs.append(SceneObject(name, r, c, c * cfg.cell_px + cfg.cell_px // 2 + jx, r * cfg.cell_px + cfg.cell_px // 2 + jy))
    return Scene(f"{split}-{index:06d}", split, cfg, tuple(objs), 0)


def _split_rng(seed: int, split: str) -> random.Random:
    return random.Random(f"mmfv-scenes:{seed}:{split}")


def generate(
    sizes: dict[str, int] | None = None,
    seed: int = 0,
    config: SceneConfig | None = None,
) -> dict[str, list[Scene]]:
    """Generate disjoint splits in memory (no disk). ``sizes`` maps split name -> number of scenes.

    Each split has its own seeded stream, so changing one split's size leaves the others' scenes as
    they were; a scene identical to one of an earlier split (in SPLITS order) is redrawn.
    """
    cfg = config or SceneConfig()
    sizes = dict(PAPER_SIZES if sizes is None else sizes)
    for name, n in sizes.items():
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}: choose from {', '.join(SPLITS)}")
        if not isinstance(n, int) or n <= 0:
            raise ValueError(f"split {name!r} size must be a positive integer, got {n!r}")
    seen: set[tuple] = set()
    out: dict[str, list[Scene]] = {}
    for name in SPLITS:
        if name not in sizes:
            continue
        rng = _split_rng(seed, name)
        scenes: list[Scene] = []
        redraws = 0
        while len(scenes) < sizes[name]:
            s = _make_scene(rng, name, len(scenes), cfg)
            sig = s.signature()
            if sig in seen:
                redraws += 1
                if redraws > 10_000:  # the config allows too few distinct scenes: fail rather than spin
                    raise ValueError(f"split {name!r}: could only draw {len(scenes)} distinct scenes of {sizes[name]} with this config: ask for fewer or fill more cells")
                continue
            redraws = 0
            seen.add(sig)
            scenes.append(s)
        out[name] = scenes
    return out


def generate_split(split: str, n: int, seed: int = 0, config: SceneConfig | None = None) -> list[Scene]:
    """One split, disjoint from the splits that precede it for the same seed and config."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: choose from {', '.join(SPLITS)}")
    if not isinstance(n, int) or n <= 0:
        raise ValueError(f"number of scenes must be a positive integer, got {n!r}")
    # Disjointness against earlier splits is enforced per seed by generate(); for a single split we
    # still draw from that split's own stream, so its scenes equal those generate() returns for it
    # whenever no collision occurred (collisions between random scenes are vanishingly rare).
    return generate({split: n}, seed=seed, config=config)[split]


def iter_items(scenes: list[Scene], relation: str) -> Iterator[Scene]:
    """Scenes that have an object in ``relation`` to their query."""
    R.get(relation)
    return (s for s in scenes if s.has(relation))


def save(scenes: list[Scene], out: str | os.PathLike, force: bool = False) -> Path:
    """Write ``<id>.png`` per scene and ``metadata.jsonl`` into ``out``, atomically.

    Everything is written into a temporary folder beside ``out`` first and moved in at the end, so
    an interrupted or failed write leaves nothing half-written.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output {out} exists and is not a folder: choose another --out")
    if (out / "metadata.jsonl").exists() and not force:
        raise FileExistsError(f"{out} already holds scenes (metadata.jsonl): choose another --out or pass --force")
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=parent))
    except OSError as e:
        raise PermissionError(f"cannot write to {parent}: {e.strerror}; choose a writable --out") from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it 0700; the output folder should look like any other
        with open(tmp / "metadata.jsonl", "w") as f:
            for s in scenes:
                name = f"{s.id}.png"
                s.image.save(tmp / name, format="PNG", optimize=False)
                f.write(json.dumps(s.to_json(name), sort_keys=True) + "\n")
        if out.exists():
            for p in tmp.iterdir():
                os.replace(p, out / p.name)
            tmp.rmdir()
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def load(folder: str | os.PathLike) -> list[Scene]:
    """Read scenes back from a folder written by :func:`save` (images are re-rendered on demand)."""
    path = Path(folder) / "metadata.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: point at a folder written by `mmfv scenes`")
    with open(path) as f:
        return [Scene.from_json(json.loads(line)) for line in f if line.strip()]


def digest(scenes: list[Scene]) -> str:
    """SHA-256 over metadata and image bytes: equal digests mean byte-identical scenes."""
    h = hashlib.sha256()
    for s in scenes:
        h.update(json.dumps(s.to_json(), sort_keys=True).encode())
        h.update(s.image.tobytes())
    return h.hexdigest()


def contact_sheet(scenes: list[Scene], relations: tuple[str, ...] = R.CARDINAL, scale: int = 4) -> Image.Image:
    """A labelled grid of scenes: each enlarged, query boxed, with the answer for each relation."""
    from PIL import ImageFont

    font = ImageFont.load_default()
    cfg = scenes[0].config
    side = cfg.image_px * scale
    label_h = 14 * (len(relations) + 1)
    cols = min(4, len(scenes))
    rows = (len(scenes) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * (side + 10) + 10, rows * (side + label_h + 10) + 10), (255, 255, 255))
    d = ImageDraw.Draw(sheet)
    for i, s in enumerate(scenes):
        x0 = 10 + (i % cols) * (side + 10)
        y0 = 10 + (i // cols) * (side + label_h + 10)
        sheet.paste(s.image.resize((side, side), Image.NEAREST), (x0, y0))
        q = s.query
        c = cfg.cell_px * scale
        d.rectangle([x0 + q.col * c, y0 + q.row * c, x0 + (q.col + 1) * c - 1, y0 + (q.row + 1) * c - 1], outline=(255, 255, 255), width=2)
        lines = [f"Q: {q.name}"] + [f"{r}: {s.neighbours[r].name if s.neighbours[r] else '-'}" for r in relations]
        for j, line in enumerate(lines):
            d.text((x0, y0 + side + 2 + 14 * j), line, fill=(0, 0, 0), font=font)
    return sheet
