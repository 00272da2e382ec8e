"""Meta-in-context training of mmfv-tiny on synthetic scene sequences.

Each training sequence holds ``n_items`` items (k = 0 … n_items-1 demonstrations before each) of ONE
cardinal relation; the loss is on every answer token, so the model must infer the relation from the
demonstrations before it. Diagonal relations are never trained. Aids, all optional and recorded in
the card: an auxiliary head that predicts each demonstration's relation at its answer token, and
"explicit" batches whose questions name the relation (``Q: cat left. A: dog``), fading out.
Reproducible from (TrainConfig, seed): all randomness comes from seeded generators.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mmfv import relations as R
from mmfv.data import scenes as S
from mmfv.execution import Checkpoint
from mmfv.io import write_json
from mmfv.models.tiny.modeling import MmfvTinyConfig, MmfvTinyForCausalLM
from mmfv.models.tiny.tokenizer import A, BOS, DOT, EOC, IMG, PAD, Q, TinyTokenizer


@dataclass
class TrainConfig:
    steps: int = 3000
    batch: int = 32
    lr: float = 2e-3
    min_lr_ratio: float = 0.05
    warmup: int = 200
    weight_decay: float = 0.01
    n_items: int = 9  # k = 0..8 demonstrations before each answer
    bank: int = 8000  # distinct training scenes, rendered once
    aux_weight: float = 1.0  # auxiliary relation-prediction loss at demo answer tokens (0 = off)
    patch_label_weight: float = 1.0  # each image patch predicts its own object's name (vision stage)
    explicit_start: float = 0.0  # share of explicit-relation batches at step 0 ...
    explicit_end: float = 0.0  # ... fading linearly to this share at `explicit_until` * steps
    explicit_until: float = 0.5
    easy_start: float = 1.0  # share of items whose image shows only the query and the answer object ...
    easy_end: float = 0.0  # ... fading linearly to this share at `easy_until` * steps
    easy_until: float = 0.6
    easy_no_answer_loss: bool = True  # easy items teach relation reading only (their answer is trivial)
    eval_every: int = 100
    eval_sequences: int = 128
    seed: int = 0
    init_from: str = ""  # start from this mmfv-tiny checkpoint folder (a further training stage)
    grid: int = 4
    cell_px: int = 10
    query_cells: str = "interior"
    hidden_size: int = 128
    layers: int = 6
    heads: int = 8
    intermediate_size: int = 512
    image_attention: str = "causal"  # "local": patches attend only within their own image

    def __post_init__(self) -> None:
        for k in ("steps", "batch", "n_items", "bank", "eval_every", "eval_sequences", "hidden_size", "layers", "heads", "intermediate_size"):
            if getattr(self, k) <= 0:
                raise ValueError(f"training setting {k} must be positive, got {getattr(self, k)}")
        for k in ("lr", "min_lr_ratio", "weight_decay", "aux_weight", "patch_label_weight", "warmup"):
            if not math.isfinite(getattr(self, k)) or getattr(self, k) < 0:
                raise ValueError(f"training setting {k} must be a finite number >= 0, got {getattr(self, k)}")
        if self.lr == 0:
            raise ValueError("training setting lr must be positive, got 0")

    def scene_config(self) -> S.SceneConfig:
        return S.SceneConfig(grid=self.grid, cell_px=self.cell_px, query_cells=self.query_cells)


QUICK = dict(steps=120, batch=16, bank=1500, eval_every=40, eval_sequences=64, warmup=20, layers=2, hidden_size=64, heads=4, intermediate_size=128)


class SceneBank:
    """Rendered training scenes as tensors: pixels, query token, neighbour tokens per relation."""

    def __init__(self, scenes: list[S.Scene], tok: TinyTokenizer) -> None:
        self.pixels = torch.from_numpy(np.stack([np.asarray(s.image) for s in scenes]))  # (N, H, W, 3) uint8
        self.query = torch.tensor([tok.token_id(s.query.name) for s in scenes])  # (N,)
        self.neigh = torch.tensor(
            [[tok.token_id(s.neighbours[r].name) if s.neighbours[r] else -1 for r in R.CARDINAL] for s in scenes]
        )  # (N, 4)
        cells = torch.full((len(scenes), scenes[0].config.grid ** 2), PAD)
        for i, s in enumerate(scenes):
            for o in s.objects:
                cells[i, o.row * s.config.grid + o.col] = tok.token_id(o.name)
        self.cells = cells  # (N, grid²) object token per cell, PAD where empty
        self.grid, self.cell_px = scenes[0].config.grid, scenes[0].config.cell_px
        self.query_cell = torch.tensor([s.query.row * self.grid + s.query.col for s in scenes])  # (N,)
        self.background = (torch.tensor(S.BACKGROUND, dtype=torch.float32) / 255.0).view(1, 3, 1, 1)
        self.by_rel = [torch.nonzero(self.neigh[:, j] >= 0).flatten() for j in range(len(R.CARDINAL))]

    def images(self, idx: torch.Tensor) -> torch.Tensor:
        """(n,) scene indices -> (n, 3, H, W) float pixels in [0, 1]."""
        return self.pixels[idx].permute(0, 3, 1, 2).float() / 255.0


def pixels_of(images) -> torch.Tensor:
    """PIL images -> (N, 3, H, W) float tensor in [0, 1]."""
    return torch.from_numpy(np.stack([np.asarray(im.convert("RGB")) for im in images])).permute(0, 3, 1, 2).float() / 255.0


def build_bank(cfg: TrainConfig, tok: TinyTokenizer, n: int, stream: str) -> SceneBank:
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


def make_batch(bank: SceneBank, B: int, n_items: int, explicit: bool, gen: torch.Generator, tok: TinyTokenizer, P: int, easy: float = 0.0):
    """B sequences of n_items items of one cardinal relation each.

    Returns ids (B, T), pixels (B*n_items, 3, H, W), answer positions (n_items,), answers (B, n_items),
    relation index (B,).
    """
    rel = torch.randint(0, len(R.CARDINAL), (B,), generator=gen)
    idx = torch.empty(B, n_items, dtype=torch.long)
    for j, pool in enumerate(bank.by_rel):
        rows = (rel == j).nonzero().flatten()
        if len(rows):
            idx[rows] = pool[torch.randint(0, len(pool), (len(rows), n_items), generator=gen)]
    q = bank.query[idx]  # (B, n)
    a = bank.neigh[idx, rel[:, None].expand(-1, n_items)]  # (B, n)
    rel_tok = torch.tensor([tok.token_id(r) for r in R.CARDINAL])[rel]  # (B,)
    text = [torch.full((B, n_items), Q), q]
    if explicit:
        text.append(rel_tok[:, None].expand(-1, n_items))
    text += [torch.full((B, n_items), DOT), torch.full((B, n_items), A), a, torch.full((B, n_items), DOT), torch.full((B, n_items), EOC)]
    text_t = torch.stack(text, dim=-1)  # (B, n, L_text)
    item = torch.cat([torch.full((B, n_items, P), IMG), text_t], dim=-1)  # (B, n, P + L_text)
    L_item = item.shape[-1]
    ids = torch.cat([torch.full((B, 1), BOS), item.reshape(B, -1)], dim=1)
    a_off = P + (4 if explicit else 3)  # index of "A:" inside an item
    ans_pos = 1 + torch.arange(n_items) * L_item + a_off  # (n,) positions whose next token is the answer
    px, cells = bank.images(idx.flatten()), bank.cells[idx]
    is_easy = torch.zeros(B, n_items, dtype=torch.bool)
    if easy > 0:
        # "Easy" items: every cell but the query's and the answer's is blanked (image and labels).
        is_easy = torch.rand(B, n_items, generator=gen) < easy  # (B, n)
        g = bank.grid
        qcell = bank.query_cell[idx]  # (B, n)
        acell = qcell + torch.tensor([g * dr + dc for dr, dc in (R.offset(r) for r in R.CARDINAL)])[rel][:, None]
        keep = torch.zeros(B, n_items, g * g, dtype=torch.bool)
        keep.scatter_(2, qcell[..., None], True)
        keep.scatter_(2, acell[..., None], True)
        keep |= ~is_easy[..., None]
        cells = torch.where(keep, cells, torch.full_like(cells, PAD))
        c = bank.cell_px
        m = keep.view(B * n_items, 1, g, 1, g, 1).expand(-1, 3, g, c, g, c).reshape(px.shape)
        px = torch.where(m, px, bank.background)
    return ids, px, ans_pos, a, rel, cells, is_easy


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def _fade(step: int, cfg: TrainConfig, start: float, end: float, until: float) -> float:
    t = step / max(1, until * cfg.steps)
    return end if t >= 1 else start + (end - start) * t


def explicit_share(step: int, cfg: TrainConfig) -> float:
    return _fade(step, cfg, cfg.explicit_start, cfg.explicit_end, cfg.explicit_until)


def easy_share(step: int, cfg: TrainConfig) -> float:
    return _fade(step, cfg, cfg.easy_start, cfg.easy_end, cfg.easy_until)


def step_loss(model, ids, px, ans_pos, a, rel, cells, aux_weight: float, patch_weight: float = 0.0, answer_mask=None):
    feats = model.encode_images(px)
    out = model(input_ids=ids, image_features=feats, return_hidden=True)
    logits = out["logits"][:, ans_pos]  # (B, n, V)
    if answer_mask is None:
        lm = F.cross_entropy(logits.flatten(0, 1), a.flatten())
    else:  # only the answers in answer_mask (B, n) count
        ce = F.cross_entropy(logits.flatten(0, 1), a.flatten(), reduction="none")
        m = answer_mask.flatten().float()
        lm = (ce * m).sum() / m.sum().clamp(min=1)
    if patch_weight:
        img = ids == IMG  # (B, T); patches in (item, cell) order, matching cells (B, n, grid²)
        patch_logits = out["logits"][img]  # (B*n*grid², V)
        lm = lm + patch_weight * F.cross_entropy(patch_logits, cells.flatten())
    acc = (logits.argmax(-1) == a).float()  # (B, n)
    aux = torch.zeros(())
    aux_acc = torch.zeros(())
    if aux_weight and model.relation_head is not None:
        h = out["hidden"][:, ans_pos + 1]  # hidden state at each demo's answer token (B, n, D)
        rl = model.relation_head(h)  # (B, n, 4)
        target = rel[:, None].expand(-1, h.shape[1])
        aux = F.cross_entropy(rl.flatten(0, 1), target.flatten())
        aux_acc = (rl.argmax(-1) == target).float().mean()
    return lm + aux_weight * aux, lm, acc, aux_acc


@torch.no_grad()
def evaluate_positions(model, bank, cfg, tok, P, explicit=False) -> dict:
    """Accuracy at each item position (= number of demonstrations before it) on held-out scenes."""
    model.eval()
    gen = torch.Generator().manual_seed(12345)
    accs = []
    for start in range(0, cfg.eval_sequences, 64):
        B = min(64, cfg.eval_sequences - start)
        ids, px, ans_pos, a, rel, cells, _ = make_batch(bank, B, cfg.n_items, explicit, gen, tok, P)
        _, _, acc, _ = step_loss(model, ids, px, ans_pos, a, rel, cells, 0.0)
        accs.append(acc)
    model.train()
    return {"by_k": [round(float(x), 4) for x in torch.cat(accs).mean(0)]}


def save(model: MmfvTinyForCausalLM, tok: TinyTokenizer, out: Path) -> None:
    """The checkpoint folder's files (config.json, model.safetensors, vocab.json), each replaced
    atomically and durably: an interrupted save leaves the previous complete files."""
    import shutil
    import tempfile

    from mmfv.io import write_bytes

    tmp = Path(tempfile.mkdtemp(prefix=".save-", dir=out))
    try:
        model.save_pretrained(tmp)
        for f in sorted(tmp.iterdir()):
            write_bytes(out / f.name, f.read_bytes())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    tok.save(out)


def train(cfg: TrainConfig, out: str | Path, minutes: float | None = None, log=print) -> dict:
    """Train mmfv-tiny into ``out`` (save_pretrained + vocab + card). Resumes from ``out/state.safetensors``."""
    if minutes is not None and not 0 < minutes < math.inf:
        raise ValueError(f"minutes must be positive, got {minutes}: it is the time budget of this training run")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    scfg = cfg.scene_config()
    P = scfg.grid * scfg.grid
    tok = TinyTokenizer.default(P)
    mcfg = MmfvTinyConfig(
        vocab_size=len(tok), hidden_size=cfg.hidden_size, num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads, intermediate_size=cfg.intermediate_size,
        max_position_embeddings=max(512, 1 + (cfg.n_items + 8) * (P + 8)),
        grid=scfg.grid, cell_px=scfg.cell_px, image_token_id=IMG,
        num_aux_relations=len(R.CARDINAL) if cfg.aux_weight else 0, image_attention=cfg.image_attention,
    )
    model = MmfvTinyForCausalLM(mcfg)
    if cfg.init_from:
        prev = MmfvTinyForCausalLM.from_pretrained(cfg.init_from)
        arch = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "grid", "cell_px", "vocab_size")
        if any(getattr(prev.config, k) != getattr(mcfg, k) for k in arch):
            raise ValueError(f"--set init_from={cfg.init_from}: that checkpoint's architecture differs from this training config")
        model.load_state_dict(prev.state_dict())
        log(f"initialised from {cfg.init_from}")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    gen = torch.Generator().manual_seed(cfg.seed)
    step, history, done_minutes = 0, [], 0.0
    if (out / "state.pt").exists():  # an older release's pickle: never unpickled
        log(f"ignoring {out / 'state.pt'} (an older pickle checkpoint, never loaded): training resumes only from state.safetensors")
    ck = Checkpoint(out / "state.safetensors", {"train_config": asdict(cfg)})  # safetensors + JSON: loading runs no code
    st = ck.load()  # before the scene banks: a damaged checkpoint fails at once
    if st is not None:
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        gen.set_state(st["gen"])
        step, history = st["step"], st["history"]
        done_minutes = st.get("minutes", 0.0)
        log(f"resumed at step {step}")
    t0 = time.time()
    log(f"building scene banks ({cfg.bank} train, held-out eval) ...")
    bank = build_bank(cfg, tok, cfg.bank, "train")
    ev_bank = build_bank(cfg, tok, max(400, cfg.eval_sequences * 2), "eval")
    log(f"banks ready in {time.time() - t0:.1f}s; model {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params")
    erng = random.Random(f"explicit:{cfg.seed}")
    for _ in range(step):
        erng.random()
    t_start = time.time()
    run = {"loss": 0.0, "acc": torch.zeros(cfg.n_items), "aux": 0.0, "n": 0}
    while step < cfg.steps:
        if minutes is not None and time.time() - t_start > minutes * 60:
            log(f"time budget of {minutes} min reached at step {step}")
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        explicit = erng.random() < explicit_share(step, cfg)
        ids, px, ans_pos, a, rel, cells, is_easy = make_batch(bank, cfg.batch, cfg.n_items, explicit, gen, tok, P, easy_share(step, cfg))
        mask = ~is_easy if cfg.easy_no_answer_loss else None
        loss, lm, acc, aux_acc = step_loss(model, ids, px, ans_pos, a, rel, cells, cfg.aux_weight, cfg.patch_label_weight, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        run["loss"] += float(lm.detach()); run["acc"] += acc.detach().mean(0); run["aux"] += float(aux_acc.detach()); run["n"] += 1
        if step % cfg.eval_every == 0 or step == cfg.steps:
            ev = evaluate_positions(model, ev_bank, cfg, tok, P)
            rec = {
                "step": step, "minutes": round(done_minutes + (time.time() - t_start) / 60, 2), "lr": lr_at(step, cfg),
                "train_loss": round(run["loss"] / run["n"], 4), "train_aux_acc": round(run["aux"] / run["n"], 4),
                "train_acc_by_k": [round(float(x), 3) for x in run["acc"] / run["n"]],
                "explicit_share": round(explicit_share(step, cfg), 3), "easy_share": round(easy_share(step, cfg), 3), "eval_acc_by_k": ev["by_k"],
            }
            history.append(rec)
            log(json.dumps(rec))
            run = {"loss": 0.0, "acc": torch.zeros(cfg.n_items), "aux": 0.0, "n": 0}
            ck.save({"model": model.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(), "step": step, "history": history,
                     "minutes": done_minutes + (time.time() - t_start) / 60})
            save(model, tok, out)
    save(model, tok, out)
    card = {
        "name": "mmfv-tiny",
        "train_config": asdict(cfg),
        "scene_config": asdict(scfg),
        "steps_done": step,
        "params": sum(p.numel() for p in model.parameters()),
        "history": history,
        "train_minutes": round(done_minutes + (time.time() - t_start) / 60, 2),
    }
    write_json(out / "card.json", card)
    return card
