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

import torch
import torch.nn.functional as F

from mmfv import relations as R
from mmfv.data import scenes as S
from mmfv.execution import Checkpoint
from mmfv.io import write_json
from mmfv.models.tiny.modeling import MmfvTinyConfig, MmfvTinyForCausalLM
from mmfv.models.tiny.batches import OFFSETS, SceneBank, build_bank, make_batch, make_parts_batch, pixels_of  # noqa: F401 - pixels_of re-exported
from mmfv.models.tiny.tokenizer import IMG, TinyTokenizer


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
    explicit_form: str = "word"  # explicit items: "word" (Q: cat left . A:, the batch's cardinal relation) or
    # "parts" (any of the 8 spatial relations, drawn per item, named by its parts: Q: cat above left . A:)
    icl_relations: str = "cardinal"  # in-context sequences: of the 4 "cardinal" relations, or of all 8 "spatial" ones ...
    icl_diagonal_share: float = 0.5  # ... of which this share is diagonal (0.5: uniform over the 8)
    offset_weight: float = 0.0  # auxiliary loss: a linear probe reads the answer's grid offset (drow, dcol) ...
    offset_layer: int = 3  # ... from the residual after this decoder layer (MSE; weight 0 = off) ...
    offset_at: str = "query"  # ... at every "A:" token ("query") or at every answer token ("answer", where the item shows its relation)

    def __post_init__(self) -> None:
        for k in ("steps", "batch", "n_items", "bank", "eval_every", "eval_sequences", "hidden_size", "layers", "heads", "intermediate_size"):
            if getattr(self, k) <= 0:
                raise ValueError(f"training setting {k} must be positive, got {getattr(self, k)}")
        if self.icl_relations not in ("cardinal", "spatial"):
            raise ValueError(f"training setting icl_relations must be 'cardinal' or 'spatial', got {self.icl_relations!r}")
        if self.offset_at not in ("query", "answer"):
            raise ValueError(f"training setting offset_at must be 'query' or 'answer', got {self.offset_at!r}")
        if self.explicit_form not in ("word", "parts"):
            raise ValueError(f"training setting explicit_form must be 'word' or 'parts', got {self.explicit_form!r}")
        if self.offset_weight and not 0 <= self.offset_layer < self.layers:
            raise ValueError(f"training setting offset_layer must be a decoder layer 0..{self.layers - 1}, got {self.offset_layer}")
        if not 0 <= self.icl_diagonal_share <= 1:
            raise ValueError(f"training setting icl_diagonal_share must be in [0, 1], got {self.icl_diagonal_share}")
        for k in ("lr", "min_lr_ratio", "weight_decay", "aux_weight", "patch_label_weight", "warmup", "offset_weight"):
            if not math.isfinite(getattr(self, k)) or getattr(self, k) < 0:
                raise ValueError(f"training setting {k} must be a finite number >= 0, got {getattr(self, k)}")
        if self.lr == 0:
            raise ValueError("training setting lr must be positive, got 0")

    def scene_config(self) -> S.SceneConfig:
        return S.SceneConfig(grid=self.grid, cell_px=self.cell_px, query_cells=self.query_cells)


QUICK = dict(steps=120, batch=16, bank=1500, eval_every=40, eval_sequences=64, warmup=20, layers=2, hidden_size=64, heads=4, intermediate_size=128)


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


def step_loss(model, ids, px, ans_pos, a, rel, cells, aux_weight: float, patch_weight: float = 0.0, answer_mask=None, offset=None):
    """Loss of one batch: answers (masked by ``answer_mask`` (B, n)), image-patch labels, the relation
    head at demo answer tokens (``rel`` (B,) index into R.SPATIAL; rows it cannot name and aux_weight 0
    skip it) and, with ``offset`` = (probe, layer, weight, targets (B, n, 2), mask (B, n), at_answer), the
    offset probe's MSE on the residual after ``layer`` at each "A:" token (or each answer token). Returns (loss, lm, acc (B, n), aux_acc, offset_mse)."""
    captured = {}
    hook = None
    if offset is not None:
        hook = model.model.layers[offset[1]].register_forward_hook(lambda m, i, o: captured.__setitem__("h", o[0]))
    try:
        feats = model.encode_images(px)
        out = model(input_ids=ids, image_features=feats, return_hidden=True)
    finally:
        if hook is not None:
            hook.remove()
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
    # the relation head names cardinal relations: rows of other relations (icl_relations "spatial") skip it
    named = rel < model.relation_head.out_features if aux_weight and model.relation_head is not None else None  # (B,)
    if named is not None and named.any():
        h = out["hidden"][named][:, ans_pos + 1]  # hidden state at each demo's answer token (B', n, D)
        rl = model.relation_head(h)  # (B', n, 4)
        target = rel[named][:, None].expand(-1, h.shape[1])
        aux = F.cross_entropy(rl.flatten(0, 1), target.flatten())
        aux_acc = (rl.argmax(-1) == target).float().mean()
    loss = lm + aux_weight * aux
    mse = torch.zeros(())
    if offset is not None:
        probe, _, weight, target, mask, at_answer = offset
        pred = probe(captured["h"][:, ans_pos + int(at_answer)])  # (B, n, 2)
        se = ((pred - target) ** 2).sum(-1)  # (B, n)
        mse = (se * mask).sum() / mask.sum().clamp(min=1)
        loss = loss + weight * mse
    return loss, lm, acc, aux_acc, mse


@torch.no_grad()
def evaluate_positions(model, bank, cfg, tok, P, explicit=False) -> dict:
    """Accuracy at each item position (= number of demonstrations before it) on held-out scenes;
    with explicit_form "parts" also the explicit-item accuracy on cardinal and on diagonal relations."""
    model.eval()
    gen = torch.Generator().manual_seed(12345)
    accs, parts = [], {"cardinal": [], "diagonal": []}
    for start in range(0, cfg.eval_sequences, 64):
        B = min(64, cfg.eval_sequences - start)
        ids, px, ans_pos, a, rel, cells, _ = make_batch(bank, B, cfg.n_items, explicit, gen, tok, P)
        accs.append(step_loss(model, ids, px, ans_pos, a, rel, cells, 0.0)[2])
        if cfg.explicit_form == "parts":
            ids, px, ans_pos, a, rel, cells = make_parts_batch(bank, B, cfg.n_items, gen, tok, P)
            acc = step_loss(model, ids, px, ans_pos, a, rel, cells, 0.0)[2]
            diag = rel >= len(R.CARDINAL)
            parts["cardinal"].append(acc[~diag])
            parts["diagonal"].append(acc[diag])
    model.train()
    out = {"by_k": [round(float(x), 4) for x in torch.cat(accs).mean(0)]}
    if cfg.explicit_form == "parts":
        out["parts"] = {k: round(float(torch.cat(v).mean()), 4) for k, v in parts.items()}
    return out


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
    prev = MmfvTinyForCausalLM.from_pretrained(cfg.init_from) if cfg.init_from else None
    if prev is not None:  # a further stage keeps the checkpoint's relation head, used or not (aux_weight 0)
        mcfg.num_aux_relations = prev.config.num_aux_relations
    model = MmfvTinyForCausalLM(mcfg)
    if prev is not None:
        arch = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "grid", "cell_px", "vocab_size")
        if any(getattr(prev.config, k) != getattr(mcfg, k) for k in arch):
            raise ValueError(f"--set init_from={cfg.init_from}: that checkpoint's architecture differs from this training config")
        model.load_state_dict(prev.state_dict())
        log(f"initialised from {cfg.init_from}")
    # the offset probe is a training aid only: it lives in the training state, never in the shipped weights
    probe = torch.nn.Linear(cfg.hidden_size, 2) if cfg.offset_weight else None
    params = list(model.parameters()) + (list(probe.parameters()) if probe is not None else [])
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    gen = torch.Generator().manual_seed(cfg.seed)
    step, history, done_minutes = 0, [], 0.0
    if (out / "state.pt").exists():  # an older release's pickle: never unpickled
        log(f"ignoring {out / 'state.pt'} (an older pickle checkpoint, never loaded): training resumes only from state.safetensors")
    ck = Checkpoint(out / "state.safetensors", {"train_config": asdict(cfg)})  # safetensors + JSON: loading runs no code
    st = ck.load()  # before the scene banks: a damaged checkpoint fails at once
    if st is not None:
        model.load_state_dict(st["model"])
        if probe is not None:
            probe.load_state_dict(st["probe"])
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
    n_icl = len(R.CARDINAL if cfg.icl_relations == "cardinal" else R.SPATIAL)
    t_start = time.time()
    fresh = lambda: {"loss": 0.0, "acc": torch.zeros(cfg.n_items), "aux": 0.0, "n": 0, "mse": 0.0}  # noqa: E731 - running sums between evaluations
    run = fresh()
    while step < cfg.steps:
        if minutes is not None and time.time() - t_start > minutes * 60:
            log(f"time budget of {minutes} min reached at step {step}")
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        explicit = erng.random() < explicit_share(step, cfg)
        if explicit and cfg.explicit_form == "parts":
            ids, px, ans_pos, a, rel, cells = make_parts_batch(bank, cfg.batch, cfg.n_items, gen, tok, P)
            mask, aux_w, target, off_mask = None, 0.0, OFFSETS[rel], torch.ones(rel.shape)  # (B, n, 2), (B, n)
        else:
            ids, px, ans_pos, a, rel, cells, is_easy = make_batch(bank, cfg.batch, cfg.n_items, explicit, gen, tok, P, easy_share(step, cfg), n_icl,
                                                                  cfg.icl_diagonal_share)
            mask, aux_w = (~is_easy if cfg.easy_no_answer_loss else None), cfg.aux_weight
            target = OFFSETS[rel][:, None].expand(-1, cfg.n_items, -1)  # (B, n, 2)
            # the relation is knowable from the question (explicit), from >= 1 demonstration, or at the answer from the item itself
            knowable = explicit or cfg.offset_at == "answer"
            off_mask = (~is_easy).float() * (torch.ones(cfg.n_items) if knowable else (torch.arange(cfg.n_items) >= 1).float())
        offset = (probe, cfg.offset_layer, cfg.offset_weight, target, off_mask, cfg.offset_at == "answer") if probe is not None else None
        loss, lm, acc, aux_acc, mse = step_loss(model, ids, px, ans_pos, a, rel, cells, aux_w, cfg.patch_label_weight, mask, offset)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        run["loss"] += float(lm.detach()); run["acc"] += acc.detach().mean(0); run["aux"] += float(aux_acc.detach()); run["n"] += 1
        run["mse"] += float(mse.detach())
        if step % cfg.eval_every == 0 or step == cfg.steps:
            ev = evaluate_positions(model, ev_bank, cfg, tok, P)
            rec = {
                "step": step, "minutes": round(done_minutes + (time.time() - t_start) / 60, 2), "lr": lr_at(step, cfg),
                "train_loss": round(run["loss"] / run["n"], 4), "train_aux_acc": round(run["aux"] / run["n"], 4),
                "train_acc_by_k": [round(float(x), 3) for x in run["acc"] / run["n"]],
                "explicit_share": round(explicit_share(step, cfg), 3), "easy_share": round(easy_share(step, cfg), 3), "eval_acc_by_k": ev["by_k"],
            }
            if probe is not None:
                rec["train_offset_mse"] = round(run["mse"] / run["n"], 4)
            if "parts" in ev:
                rec["eval_parts_acc"] = ev["parts"]
            history.append(rec)
            log(json.dumps(rec))
            run = fresh()
            ck.save({"model": model.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(), "step": step, "history": history,
                     "minutes": done_minutes + (time.time() - t_start) / 60, **({"probe": probe.state_dict()} if probe is not None else {})})
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
