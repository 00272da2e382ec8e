"""Fine-tune a function vector with every model weight frozen.

The vector (D,) is the only trainable tensor. Loss: cross-entropy of the first answer token at the
last position of zero-shot prompts, with the vector added to decoder layer ℓ's output there. Adam
(lr 1e-2) with a cosine schedule, as in the paper. The epoch is chosen on ``val``; the caller
reports ``test`` — this module never sees test prompts. Each epoch is checkpointed; a rerun resumes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import random
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F

from mmfv import evaluate, hooks
from mmfv.cma import prompts_fingerprint
from mmfv.execution import LOCAL, Checkpoint, Execution
from mmfv.injection import Stems
from mmfv.models.base import LMM
from mmfv.prompts import Prompt


@dataclass(frozen=True)
class FinetuneSettings:
    """How one vector is trained. The run's defaults live in the finetune stage's config section;
    these are the method's own, for calls from Python."""

    epochs: int = 20
    lr: float = 1e-2
    schedule: str = "cosine"  # or "constant"
    batch_size: int = 16
    min_train: int = 8
    seed: int = 0
    cached: bool = False  # cached injection (mmfv.injection): prompts prepared once, only layers after ℓ run per step


@dataclass
class FinetuneResult:
    vector: torch.Tensor  # (D,) at the epoch chosen on val
    best_epoch: int
    best_val_acc: float
    curve: list[dict] = field(default_factory=list)  # per epoch: train_loss, val_acc


def weights_digest(lmm: LMM) -> str:
    """SHA-256 of every parameter and buffer: equal before and after means nothing moved."""
    h = hashlib.sha256()
    for k, v in sorted(lmm.module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()


def finetune(
    lmm: LMM,
    init: torch.Tensor,
    layer: int,
    train: Sequence[Prompt],
    val: Sequence[Prompt],
    settings: FinetuneSettings = FinetuneSettings(),
    checkpoint: str | None = None,
    ex: Execution = LOCAL,
) -> FinetuneResult:
    """Train ``init`` (D,) as the only parameter; return the vector of the best ``val`` epoch.

    With ``checkpoint`` (a file path) the state is saved after every epoch and a rerun resumes
    from it (refused if it belongs to other prompts, settings, layer, model or init)."""
    if not 0 <= layer < lmm.n_layers:
        raise ValueError(f"layer {layer} is out of range: the model has layers 0..{lmm.n_layers - 1}")
    if len(train) < settings.min_train:
        raise ValueError(f"training set has {len(train)} prompts; at least {settings.min_train} are needed")
    if not val:
        raise ValueError("validation set is empty: the epoch must be chosen on val, never on test")
    if not (isinstance(settings.epochs, int) and settings.epochs >= 1 and isinstance(settings.batch_size, int) and settings.batch_size >= 1):
        raise ValueError(f"epochs and batch_size must be positive integers, got {settings.epochs!r} and {settings.batch_size!r}")
    if not 0 < settings.lr < math.inf:
        raise ValueError(f"learning rate must be a positive number, got {settings.lr!r}")
    if settings.schedule not in ("cosine", "constant"):
        raise ValueError(f"unknown schedule {settings.schedule!r}: choose cosine or constant")
    if init.shape != (lmm.hidden_size,):
        raise ValueError(f"initial vector has shape {tuple(init.shape)}, the model's hidden size is {lmm.hidden_size}")
    if not torch.isfinite(init).all():
        raise ValueError("initial vector has NaN or infinite entries")
    lmm.freeze()
    assert not any(p.requires_grad for p in lmm.module.parameters()), "model weights must be frozen"
    vec = init.detach().clone().float().requires_grad_(True)
    opt = torch.optim.Adam([vec], lr=settings.lr)
    order = list(range(len(train)))
    random.Random(f"finetune:{settings.seed}").shuffle(order)
    groups = [[train[i] for i in order[s : s + settings.batch_size]] for s in range(0, len(order), settings.batch_size)]
    # Encode once: image features and token ids are reused by every epoch. Cached: each batch's prefix
    # and residuals are prepared once too (train and val), and a step runs layers > ℓ on the last token.
    stems = Stems(lmm) if settings.cached else None
    batches = None if stems else [lmm.encode(g) for g in groups]
    total = settings.epochs * len(groups)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, (lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))) if settings.schedule == "cosine" else (lambda s: 1.0)
    )
    start, curve = 0, []
    best = (-1.0, 0, vec.detach().clone())
    fp_settings = dataclasses.asdict(settings)
    if not settings.cached:  # checkpoints of the reference path keep the fingerprint they always had
        del fp_settings["cached"]
    fp = {"train": prompts_fingerprint(train), "val": prompts_fingerprint(val), "layer": layer, "model": lmm.config_hash(),
          "settings": fp_settings, "init": hashlib.sha256(init.detach().float().cpu().numpy().tobytes()).hexdigest()[:16]}
    ck = Checkpoint(checkpoint, fp) if checkpoint else None
    st = ck.load() if ck else None
    if st is not None:
        with torch.no_grad():
            vec.copy_(st["vec"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        start, curve, best = st["epoch"], st["curve"], tuple(st["best"])
    gen = torch.Generator().manual_seed(settings.seed)
    for _ in range(start):
        torch.randperm(len(groups), generator=gen)
    with ex.bar(settings.epochs, f"finetune L{layer}", initial=start) as bar:
        for epoch in range(start, settings.epochs):
            losses = []
            for bi in torch.randperm(len(groups), generator=gen).tolist():
                if stems is not None:
                    stem = stems.get(groups[bi])
                    b, logits = stem.batch, stem.logits(lmm, layer, vec)
                else:
                    b = batches[bi]
                    with hooks.add_to_layer(lmm, layer, vec):
                        logits = lmm.last_logits(b)
                loss = F.cross_entropy(logits.float(), b.answer_ids.to(logits.device))
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                losses.append(float(loss.detach()))
            val_acc = evaluate.accuracy(lmm, val, vec.detach(), layer, stems=stems)["acc"]
            curve.append({"epoch": epoch + 1, "train_loss": round(sum(losses) / len(losses), 5), "val_acc": val_acc})
            if val_acc > best[0]:
                best = (val_acc, epoch + 1, vec.detach().clone())
            if ck is not None:
                ck.save({"vec": vec.detach(), "opt": opt.state_dict(), "sched": sched.state_dict(), "epoch": epoch + 1, "curve": curve, "best": best})
            bar.update(1)
    return FinetuneResult(best[2], best[1], best[0], curve)
