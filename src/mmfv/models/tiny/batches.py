"""Training batches of mmfv-tiny: rendered scene banks and the two item forms.

In-context items (``Q: cat . A: dog``) hold ONE cardinal relation per sequence, so the model must
infer it from the demonstrations; explicit items name their relation in the question. The "parts"
explicit form names any of the 8 spatial relations by its vertical and horizontal parts, one slot
each (``Q: cat above left . A: dog``, ``Q: cat above . . A: dog``), with a new relation drawn for
every item: the diagonal read-outs are learned without ever being an in-context task.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from mmfv import relations as R
from mmfv.data import scenes as S
from mmfv.models.tiny.tokenizer import A, BOS, DOT, EOC, IMG, PAD, Q, TinyTokenizer

OFFSETS = torch.tensor([R.offset(r) for r in R.SPATIAL], dtype=torch.float32)  # (8, 2) (drow, dcol) per relation of R.SPATIAL


class SceneBank:
    """Rendered training scenes as tensors: pixels, query token, neighbour tokens per relation."""

    def __init__(self, scenes: list[S.Scene], tok: TinyTokenizer) -> None:
        self.pixels = torch.from_numpy(np.stack([np.asarray(s.image) for s in scenes]))  # (N, H, W, 3) uint8
        self.query = torch.tensor([tok.token_id(s.query.name) for s in scenes])  # (N,)
        self.neigh = torch.tensor(
            [[tok.token_id(s.neighbours[r].name) if s.neighbours[r] else -1 for r in R.SPATIAL] for s in scenes]
        )  # (N, 8) answer token per relation of R.SPATIAL (cardinal first), -1 where the cell is empty
        cells = torch.full((len(scenes), scenes[0].config.grid ** 2), PAD)
        for i, s in enumerate(scenes):
            for o in s.objects:
                cells[i, o.row * s.config.grid + o.col] = tok.token_id(o.name)
        self.cells = cells  # (N, grid²) object token per cell, PAD where empty
        self.grid, self.cell_px = scenes[0].config.grid, scenes[0].config.cell_px
        self.query_cell = torch.tensor([s.query.row * self.grid + s.query.col for s in scenes])  # (N,)
        self.background = (torch.tensor(S.BACKGROUND, dtype=torch.float32) / 255.0).view(1, 3, 1, 1)
        self.by_rel = [torch.nonzero(self.neigh[:, j] >= 0).flatten() for j in range(len(R.SPATIAL))]  # scenes with an answer, per relation

    def images(self, idx: torch.Tensor) -> torch.Tensor:
        """(n,) scene indices -> (n, 3, H, W) float pixels in [0, 1]."""
        return self.pixels[idx].permute(0, 3, 1, 2).float() / 255.0


def pixels_of(images) -> torch.Tensor:
    """PIL images -> (N, 3, H, W) float tensor in [0, 1]."""
    return torch.from_numpy(np.stack([np.asarray(im.convert("RGB")) for im in images])).permute(0, 3, 1, 2).float() / 255.0


def build_bank(cfg, tok: TinyTokenizer, n: int, stream: str) -> SceneBank:
    """Fresh scenes from their own seeded stream, excluding every scene of the default splits."""
    scfg = cfg.scene_config()
    held = {s.signature() for split in S.generate(S.PAPER_SIZES, seed=0, config=scfg).values() for s in split}
    rng = random.Random(f"mmfv-tiny:{cfg.seed}:{stream}")
    scenes, seen = [], set()
    while len(scenes) < n:
        s = S._make_scene(rng, "pretrain", len(scenes), scfg)
        sig = s.signature()
        if sig in held or sig in seen:
            continue
        seen.add(sig)
        scenes.append(s)
    return SceneBank(scenes, tok)


def _sequences(text: torch.Tensor, P: int, a_off: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Items' text (B, n, L_text) -> ids (B, 1 + n*(P + L_text)): BOS, then per item P image slots and
    its text; and the positions (n,) of each item's "A:" token, at ``a_off`` inside an item."""
    B, n, _ = text.shape
    item = torch.cat([torch.full((B, n, P), IMG), text], dim=-1)  # (B, n, P + L_text)
    ids = torch.cat([torch.full((B, 1), BOS), item.reshape(B, -1)], dim=1)
    return ids, 1 + torch.arange(n) * item.shape[-1] + a_off


def make_batch(bank: SceneBank, B: int, n_items: int, explicit: bool, gen: torch.Generator, tok: TinyTokenizer, P: int, easy: float = 0.0,
               relations: int = len(R.CARDINAL), diagonal_share: float = 0.5):
    """B sequences of n_items items of one relation each, drawn from the first ``relations`` of R.SPATIAL
    (4: the cardinal ones). With all 8, ``diagonal_share`` of the sequences are diagonal (0.5: one
    uniform draw among the 8).

    Returns ids (B, T), pixels (B*n_items, 3, H, W), answer positions (n_items,), answers (B, n_items),
    relation index into R.SPATIAL (B,).
    """
    if explicit and relations > len(R.CARDINAL):
        raise ValueError("the one-word explicit form names cardinal relations only: use the parts form for diagonal ones")
    if relations > len(R.CARDINAL) and diagonal_share != 0.5:
        diag = torch.rand(B, generator=gen) < diagonal_share  # (B,)
        rel = torch.randint(0, len(R.CARDINAL), (B,), generator=gen) + diag.long() * len(R.CARDINAL)
    else:
        rel = torch.randint(0, relations, (B,), generator=gen)
    idx = torch.empty(B, n_items, dtype=torch.long)
    for j, pool in enumerate(bank.by_rel[:relations]):
        rows = (rel == j).nonzero().flatten()
        if len(rows):
            idx[rows] = pool[torch.randint(0, len(pool), (len(rows), n_items), generator=gen)]
    q = bank.query[idx]  # (B, n)
    a = bank.neigh[idx, rel[:, None].expand(-1, n_items)]  # (B, n)
    rel_tok = torch.tensor([tok.token_id(r) for r in R.SPATIAL])[rel]  # (B,)
    text = [torch.full((B, n_items), Q), q]
    if explicit:
        text.append(rel_tok[:, None].expand(-1, n_items))
    text += [torch.full((B, n_items), DOT), torch.full((B, n_items), A), a, torch.full((B, n_items), DOT), torch.full((B, n_items), EOC)]
    ids, ans_pos = _sequences(torch.stack(text, dim=-1), P, P + (4 if explicit else 3))  # ans_pos: the "A:" tokens, next is the answer
    px, cells = bank.images(idx.flatten()), bank.cells[idx]
    is_easy = torch.zeros(B, n_items, dtype=torch.bool)
    if easy > 0:
        # "Easy" items: every cell but the query's and the answer's is blanked (image and labels).
        is_easy = torch.rand(B, n_items, generator=gen) < easy  # (B, n)
        g = bank.grid
        qcell = bank.query_cell[idx]  # (B, n)
        acell = qcell + torch.tensor([g * dr + dc for dr, dc in (R.offset(r) for r in R.SPATIAL)])[rel][:, None]
        keep = torch.zeros(B, n_items, g * g, dtype=torch.bool)
        keep.scatter_(2, qcell[..., None], True)
        keep.scatter_(2, acell[..., None], True)
        keep |= ~is_easy[..., None]
        cells = torch.where(keep, cells, torch.full_like(cells, PAD))
        c = bank.cell_px
        m = keep.view(B * n_items, 1, g, 1, g, 1).expand(-1, 3, g, c, g, c).reshape(px.shape)
        px = torch.where(m, px, bank.background)
    return ids, px, ans_pos, a, rel, cells, is_easy


def make_parts_batch(bank: SceneBank, B: int, n_items: int, gen: torch.Generator, tok: TinyTokenizer, P: int):
    """B sequences of n_items explicit items, each naming its own relation (any of R.SPATIAL) by its
    parts: ``Q obj V H . A ans . EOC`` with V in (above, below, ".") and H in (left, right, ".").

    Returns ids (B, T), pixels (B*n_items, 3, H, W), answer positions (n_items,), answers (B, n_items),
    relation index into R.SPATIAL (B, n_items), cells (B, n_items, grid²).
    """
    rel = torch.randint(0, len(R.SPATIAL), (B, n_items), generator=gen)
    idx = torch.empty(B, n_items, dtype=torch.long)
    for j, pool in enumerate(bank.by_rel):
        m = rel == j
        if m.any():
            idx[m] = pool[torch.randint(0, len(pool), (int(m.sum()),), generator=gen)]
    q = bank.query[idx]  # (B, n)
    a = bank.neigh[idx, rel]  # (B, n)
    vert, horiz = [], []
    for r in R.SPATIAL:
        v, h = R.decompose(r) if r in R.NOVEL else ((r, None) if r in R.VERTICAL else (None, r))
        vert.append(tok.token_id(v) if v else DOT)
        horiz.append(tok.token_id(h) if h else DOT)
    V, H = torch.tensor(vert)[rel], torch.tensor(horiz)[rel]  # (B, n)
    full = lambda t: torch.full((B, n_items), t)  # noqa: E731
    ids, ans_pos = _sequences(torch.stack([full(Q), q, V, H, full(DOT), full(A), a, full(DOT), full(EOC)], dim=-1), P, P + 5)
    return ids, bank.images(idx.flatten()), ans_pos, a, rel, bank.cells[idx]
