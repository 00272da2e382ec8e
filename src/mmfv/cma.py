"""Mean head activations and causal mediation analysis (indirect effect of every head).

Definitions (shared/DESIGN.md §1): ā[l, h] is the mean head output at the last prompt position over
clean prompts; for a corrupted prompt, IE[l, h] = P(y0 | head (l, h) := ā[l, h]) − P(y0); AIE is the
mean IE over prompts. Two engines compute the same numbers:

- ``reference``: the published algorithm — one full forward pass of the whole prompt per head,
  batch 1 (1 + L·H passes per prompt);
- ``fast``: the prompt's positions < T-1 run once and their KV cache is kept (patching the last
  position cannot change anything before it, attention being causal); then only the last token is
  run, once per patched head, many heads per batch sharing that cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from mmfv import dist, hooks
from mmfv.models.base import LMM
from mmfv.prompts import Prompt

ENGINES = ("fast", "reference")


class ActivationError(ValueError):
    """Activations are unusable (NaN / inf)."""


@torch.no_grad()
def mean_activations(
    lmm: LMM,
    prompts: Sequence[Prompt],
    batch_size: int = 32,
    only_correct: bool = False,
    head_set: str = "self",
    progress: bool = False,
) -> tuple[torch.Tensor, int]:
    """ā (L, H, d): mean head output at the last position over ``prompts``; and how many were used.

    ``only_correct`` keeps only prompts whose argmax first token is the answer (as the paper does).
    """
    hs = lmm.head_sets[head_set]
    total = torch.zeros(hs.n_layers, hs.n_heads, hs.head_dim, dtype=torch.float64)
    used = 0
    starts = list(range(0, len(prompts), batch_size))
    # Under torchrun each process takes whole batches (so every batch is the one a single process
    # would run) and the sums are reduced at the end.
    for i in tqdm([starts[j] for j in dist.shard(len(starts))], disable=not progress, desc="means", leave=False):
        batch = lmm.encode(prompts[i : i + batch_size])
        with hooks.read_heads(lmm, head_set=head_set) as store:
            logits = lmm.last_logits(batch)
        keep = torch.ones(batch.size, dtype=torch.bool)
        if only_correct:
            keep = logits.argmax(-1).cpu() == batch.answer_ids.cpu()
        acts = torch.stack([store[l] for l in range(hs.n_layers)], dim=1).double().cpu()  # (B, L, H, d)
        if not torch.isfinite(acts).all():
            raise ActivationError(f"non-finite head activations in prompts {i}..{i + batch.size - 1}: check the model's dtype and inputs")
        total += acts[keep].sum(0)
        used += int(keep.sum())
    total = dist.all_sum(total)
    used = int(dist.all_sum(torch.tensor(used)))
    if used == 0:
        raise ActivationError("no prompt qualified for the mean (only_correct=True and the model answered none correctly)")
    return (total / used).float(), used


def _all_heads(n_layers: int, n_heads: int) -> torch.Tensor:
    """(L*H, 2) every (layer, head), layer-major."""
    l, h = torch.meshgrid(torch.arange(n_layers), torch.arange(n_heads), indexing="ij")
    return torch.stack([l.flatten(), h.flatten()], dim=1)


def _prob(logits: torch.Tensor, answer: torch.Tensor) -> torch.Tensor:
    return logits.float().softmax(-1).gather(-1, answer[:, None])[:, 0]


@torch.no_grad()
def ie_reference(lmm: LMM, prompt: Prompt, means: torch.Tensor, head_set: str = "self") -> torch.Tensor:
    """IE (L, H) of one corrupted prompt by the published algorithm: one full pass per head, batch 1."""
    L, H, _ = means.shape
    batch = lmm.encode([prompt])
    ans = batch.answer_ids
    p_c = _prob(lmm.last_logits(batch), ans)[0]
    out = torch.zeros(L, H)
    one = torch.zeros(1, dtype=torch.long)
    for l in range(L):
        for h in range(H):
            with hooks.patch_heads(lmm, {l: (one, torch.tensor([h]), means[l, h][None])}, head_set=head_set):
                out[l, h] = _prob(lmm.last_logits(batch), ans)[0] - p_c
    return out


@torch.no_grad()
def ie_fast(lmm: LMM, prompts: Sequence[Prompt], means: torch.Tensor, heads_per_batch: int = 64, head_set: str = "self") -> torch.Tensor:
    """IE (N, L, H) of corrupted prompts: one pass over positions < T-1, then the last token only.

    Each chunk of ``heads_per_batch`` (layer, head) pairs runs as one batch of last-token rows that
    share the prompt's cache; row j of prompt i patches pair j.
    """
    L, H, _ = means.shape
    batch = lmm.encode(prompts)
    N = batch.size
    ans = batch.answer_ids
    pre = lmm.prefix(batch)
    p_c = _prob(lmm.last(pre, 1), ans)  # (N,)
    pairs = _all_heads(L, H)
    ie = torch.zeros(N, L * H)
    for start in range(0, len(pairs), heads_per_batch):
        chunk = pairs[start : start + heads_per_batch]  # (R, 2)
        R = len(chunk)
        patches = {}
        for l in chunk[:, 0].unique().tolist():
            sel = (chunk[:, 0] == l).nonzero().flatten()  # which rows of each prompt patch layer l
            rows = (torch.arange(N)[:, None] * R + sel[None]).flatten()
            heads = chunk[sel, 1].repeat(N)
            patches[l] = (rows, heads, means[l, heads])
        with hooks.patch_heads(lmm, patches, head_set=head_set):
            logits = lmm.last(pre, R)  # (N*R, V)
        p = _prob(logits, ans.repeat_interleave(R)).view(N, R)
        ie[:, start : start + R] = p - p_c[:, None]
    return ie.view(N, L, H)


def prompts_fingerprint(prompts: Sequence[Prompt]) -> str:
    h = hashlib.sha256()
    for p in prompts:
        h.update(json.dumps([p.kind, p.relation, p.image_ids, [it.answer for it in p.items]]).encode())
    return h.hexdigest()[:16]


@dataclass
class CMAResult:
    """Per-relation CMA output: means (L, H, d), per-prompt IEs (N, L, H) and AIE (L, H)."""

    relation: str
    means: torch.Tensor
    ie: torch.Tensor
    n_mean: int
    engine: str
    head_set: str = "self"

    @property
    def aie(self) -> torch.Tensor:
        return self.ie.mean(0)

    def top_heads(self, k: int) -> list[tuple[int, int]]:
        """The k (layer, head) pairs with the largest AIE, best first."""
        L, H = self.aie.shape
        if not 1 <= k <= L * H:
            raise ValueError(f"k={k} is out of range: the model has {L * H} heads ({L} layers x {H})")
        idx = self.aie.flatten().argsort(descending=True, stable=True)[:k]
        return [(int(i) // H, int(i) % H) for i in idx]

    def top_share(self, k: int) -> float:
        """Share of the total positive AIE carried by the top-k heads."""
        pos = self.aie.clamp(min=0)
        tot = float(pos.sum())
        return float(sum(pos[l, h] for l, h in self.top_heads(k))) / tot if tot > 0 else 0.0


def run_cma(
    lmm: LMM,
    mean_prompts: Sequence[Prompt],
    corrupted_prompts: Sequence[Prompt],
    engine: str = "fast",
    batch_size: int = 8,
    heads_per_batch: int = 64,
    only_correct: bool = False,
    checkpoint: str | os.PathLike | None = None,
    head_set: str = "self",
    progress: bool = False,
    means: tuple[torch.Tensor, int] | None = None,
) -> CMAResult:
    """Means over clean prompts (or the given ``(means, n_mean)``), then IE of every head on each
    corrupted prompt.

    With ``checkpoint``, the IEs are saved after every prompt batch (atomically) and a rerun resumes
    from them; a checkpoint from other prompts, engine or model is refused, never mixed in.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown CMA engine {engine!r}: choose one of {', '.join(ENGINES)}")
    relations = {p.relation for p in corrupted_prompts} | {p.relation for p in mean_prompts}
    if len(relations) != 1:
        raise ValueError(f"CMA runs one relation at a time; got {sorted(relations)}")
    if any(p.kind != "corrupted" for p in corrupted_prompts):
        raise ValueError("CMA measures effects on corrupted prompts: build them with kind='corrupted'")
    if means is None:
        means = mean_activations(lmm, mean_prompts, batch_size=max(batch_size, 16), only_correct=only_correct, head_set=head_set, progress=progress)
    means, n_mean = means
    hs = lmm.head_sets[head_set]
    N = len(corrupted_prompts)
    ie = torch.zeros(N, hs.n_layers, hs.n_heads)
    done = 0
    fp = {"prompts": prompts_fingerprint(corrupted_prompts), "means": prompts_fingerprint(mean_prompts), "engine": engine,
          "model": lmm.config_hash(), "head_set": head_set, "only_correct": only_correct}
    ck = Path(checkpoint) if checkpoint else None
    if ck and ck.exists():
        try:
            st = torch.load(ck, weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"CMA checkpoint {ck} is unreadable ({type(e).__name__}): delete it to start over") from None
        if json.loads(st["fingerprint"]) != fp:
            raise ValueError(f"CMA checkpoint {ck} belongs to another run (prompts, engine or model differ): use another folder or --force")
        done = int(st["done"])
        ie[:done] = st["ie"][:done]
    bar = tqdm(total=N, initial=done, disable=not progress, desc=f"cma {engine}", leave=False)
    step = batch_size if engine == "fast" else 1
    # Chunks start at multiples of `step` (a resumed run batches exactly like an uninterrupted one);
    # under torchrun each round gives one chunk to each process and gathers the rows.
    chunks = [(s, min(s + step, N)) for s in range(done, N, step)]
    W = dist.world()
    for i in range(0, len(chunks), W):
        rnd = chunks[i : i + W]
        part = torch.zeros(N, hs.n_layers, hs.n_heads)
        if dist.rank() < len(rnd):
            s, e = rnd[dist.rank()]
            if engine == "fast":
                part[s:e] = ie_fast(lmm, corrupted_prompts[s:e], means, heads_per_batch, head_set)
            else:
                part[s] = ie_reference(lmm, corrupted_prompts[s], means, head_set)
        part = dist.all_sum(part) if W > 1 else part
        s0, e1 = rnd[0][0], rnd[-1][1]
        ie[s0:e1] = part[s0:e1]
        if not torch.isfinite(ie[s0:e1]).all():
            raise ActivationError(f"non-finite indirect effects in prompts {s0}..{e1 - 1}: check the model's dtype")
        bar.update(e1 - done)
        done = e1
        if ck and dist.is_main():
            ck.parent.mkdir(parents=True, exist_ok=True)
            tmp = ck.with_name(ck.name + ".tmp")
            torch.save({"fingerprint": json.dumps(fp), "done": torch.tensor(done), "ie": ie}, tmp)
            os.replace(tmp, ck)
    bar.close()
    return CMAResult(next(iter(relations)), means, ie, n_mean, engine, head_set)


def attribution_patching(lmm: LMM, prompts: Sequence[Prompt], means: torch.Tensor, batch_size: int = 8, head_set: str = "self") -> torch.Tensor:
    """Linear estimate of IE (N, L, H) from one forward + one backward per batch (a screening mode,
    NOT exact): IE[l, h] ≈ (ā[l, h] − a[l, h]) · ∂P(y0)/∂a[l, h] at the last position."""
    hs = lmm.head_sets[head_set]
    out = []
    for i in range(0, len(prompts), batch_size):
        batch = lmm.encode(prompts[i : i + batch_size])
        B = batch.size
        probes: dict[int, torch.Tensor] = {}
        acts: dict[int, torch.Tensor] = {}
        handles = []

        def make(l: int):
            def pre(mod, args):
                x = args[0]
                z = torch.zeros(x.shape[0], x.shape[-1], dtype=x.dtype, device=x.device, requires_grad=True)
                probes[l] = z
                acts[l] = x[:, -1].detach()
                x = x.clone()
                x[:, -1] = x[:, -1] + z
                return (x, *args[1:])

            return pre

        try:
            for l in range(hs.n_layers):
                handles.append(lmm.o_proj(l, head_set).register_forward_pre_hook(make(l)))
            with torch.enable_grad():
                p = _prob(lmm.last_logits(batch), batch.answer_ids).sum()
                grads = torch.autograd.grad(p, [probes[l] for l in range(hs.n_layers)])
        finally:
            for h in handles:
                h.remove()
        est = torch.zeros(B, hs.n_layers, hs.n_heads)
        for l, g in enumerate(grads):
            delta = means[l].reshape(-1)[None] - acts[l].float()  # (B, H*d)
            est[:, l] = (delta * g.float()).view(B, hs.n_heads, hs.head_dim).sum(-1)
        out.append(est)
    return torch.cat(out)


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Rank correlation of two equally shaped tensors (flattened)."""
    ra = a.flatten().argsort().argsort().double()
    rb = b.flatten().argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))
