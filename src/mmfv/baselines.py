"""Parameter-efficient baselines for the fine-tuned function vector, with the backbone frozen:
LoRA on every layer's attention projections (through ``peft``) and soft prompt tuning (virtual
tokens before the prompt, through the adapter's :meth:`~mmfv.models.base.LMM.prepend` and a hook on
its input embeddings: ``peft``'s PromptTuning wraps whole HF models and cannot wrap an adapter).

Training is the fine-tuned FV's (:mod:`mmfv.finetune`): the same zero-shot train prompts, loss
(first answer token at the last position), optimizer (Adam), schedule, epochs and batch size, the
epoch chosen on ``val``; the caller reports ``test``. Each adapter lives inside a context manager
that restores the model exactly on exit.
"""

from __future__ import annotations

import math
import random
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mmfv import evaluate
from mmfv.execution import LOCAL, Execution
from mmfv.finetune import FinetuneSettings
from mmfv.models.base import LMM
from mmfv.prompts import Prompt


@dataclass
class BaselineResult:
    best_epoch: int
    best_val_acc: float
    n_params: int  # trained parameters
    curve: list[dict] = field(default_factory=list)  # per epoch: train_loss, val_acc


@contextmanager
def lora(lmm: LMM, rank: int, layers: Sequence[int] | None = None, alpha: float | None = None) -> Iterator[list[nn.Parameter]]:
    """LoRA (``peft``) of ``rank`` on the attention projections of ``layers`` (default: all, of every head set), the rest
    frozen; yields the trainable parameters (B starts at zero: the model starts unchanged). On exit
    the adapter is removed and the original modules put back."""
    try:
        from peft import LoraConfig
        from peft.tuners.lora import LoraModel
    except ImportError:
        raise ImportError("the LoRA baseline needs peft: pip install 'mmfv[peft]'") from None
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"LoRA rank must be a positive integer, got {rank!r}")
    sets = [(hs.name, range(hs.n_layers) if layers is None else layers) for hs in lmm.head_sets.values()]  # self- and any cross-attention
    names = list(dict.fromkeys(n for name, ls in sets for l in ls for n in lmm.attention_projections(l, name)))
    lmm.freeze()
    cfg = LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else rank, target_modules=names, lora_dropout=0.0, bias="none")
    model = LoraModel(lmm.module, cfg, "default")
    try:
        yield [p for n, p in lmm.module.named_parameters() if "lora_" in n]
    finally:
        model.unload()
        lmm.freeze()


@contextmanager
def soft_prompt(lmm: LMM, n_tokens: int, init: torch.Tensor | None = None) -> Iterator[list[nn.Parameter]]:
    """``n_tokens`` trainable virtual-token embeddings (n, D) before every prompt the model encodes
    inside the context (initialised from ``init``, else from the embeddings of random tokens);
    yields ``[the (n, D) parameter]``. On exit the model encodes and runs as before."""
    if not isinstance(n_tokens, int) or n_tokens < 1:
        raise ValueError(f"virtual tokens must be a positive integer, got {n_tokens!r}")
    lmm.freeze()
    emb = lmm.input_embeddings()
    if init is None:  # what the embedding module outputs for random tokens (some models scale their embeddings)
        with torch.no_grad():
            ids = torch.randint(emb.num_embeddings, (n_tokens,), generator=torch.Generator().manual_seed(0))
            init = emb(ids.to(emb.weight.device))
    soft = nn.Parameter(init.detach().clone().float().reshape(n_tokens, lmm.hidden_size))

    def hook(mod, args, out):  # out: (B, n + T, D)
        return torch.cat([soft.to(out.dtype)[None].expand(out.shape[0], -1, -1), out[:, n_tokens:]], 1)

    encode = lmm.encode
    lmm.encode = lambda prompts: lmm.prepend(encode(prompts), n_tokens)  # type: ignore[method-assign]
    handle = emb.register_forward_hook(hook)
    try:
        yield [soft]
    finally:
        handle.remove()
        del lmm.encode  # the class's method again


def train(lmm: LMM, params: Sequence[nn.Parameter], train: Sequence[Prompt], val: Sequence[Prompt], settings: FinetuneSettings = FinetuneSettings(),
          ex: Execution = LOCAL, label: str = "baseline") -> BaselineResult:
    """Train ``params`` (an adapter's, inside its context) as :func:`mmfv.finetune.finetune` trains a
    vector; the parameters end at the epoch best on ``val``."""
    if len(train) < settings.min_train:
        raise ValueError(f"training set has {len(train)} prompts; at least {settings.min_train} are needed")
    if not val:
        raise ValueError("validation set is empty: the epoch must be chosen on val, never on test")
    params = list(params)
    opt = torch.optim.Adam(params, lr=settings.lr)
    order = list(range(len(train)))
    random.Random(f"finetune:{settings.seed}").shuffle(order)
    batches = [lmm.encode([train[i] for i in order[s : s + settings.batch_size]]) for s in range(0, len(order), settings.batch_size)]
    total = settings.epochs * len(batches)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, (lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))) if settings.schedule == "cosine" else (lambda s: 1.0))
    gen = torch.Generator().manual_seed(settings.seed)
    best = (-1.0, 0, [p.detach().clone() for p in params])
    curve = []
    with ex.bar(settings.epochs, label) as bar:
        for epoch in range(settings.epochs):
            losses = []
            for bi in torch.randperm(len(batches), generator=gen).tolist():
                b = batches[bi]
                loss = F.cross_entropy(lmm.last_logits(b).float(), b.answer_ids)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                losses.append(float(loss.detach()))
            with torch.no_grad():
                val_acc = evaluate.accuracy(lmm, val)["acc"]
            curve.append({"epoch": epoch + 1, "train_loss": round(sum(losses) / len(losses), 5), "val_acc": val_acc})
            if val_acc > best[0]:
                best = (val_acc, epoch + 1, [p.detach().clone() for p in params])
            bar.update(1)
    with torch.no_grad():
        for p, v in zip(params, best[2]):
            p.copy_(v)
    return BaselineResult(best[1], best[0], sum(p.numel() for p in params), curve)
