"""Mean head activations and causal mediation analysis (indirect effect of every head).

Definitions: ā[l, h] is the mean head output at the last prompt position over clean prompts; for a
corrupted prompt, IE[l, h] = m(y0 | head (l, h) := ā[l, h]) − m(y0), where the metric m is the
probability of the first answer token (the paper's; log-probability and logit difference are
options, :data:`METRICS`); AIE is the mean IE over prompts. Two engines compute the same numbers:

- ``reference``: the published algorithm — one full forward pass of the whole prompt per head,
  batch 1 (1 + L·H passes per prompt);
- ``fast``: the prompt's positions < T-1 run once and their KV cache is kept (patching the last
  position cannot change anything before it, attention being causal); then only the last token is
  run, once per patched head, many heads per batch sharing that cache;
- ``skip``: as ``fast``, and a head patched at layer l cannot change the last token below l either:
  the unpatched last token runs once, layer by layer, and a patched row joins the batch at its own
  layer with that layer's unpatched input, so it runs layers l..L-1 only (adapters with
  :meth:`LMM.last_steps`; others run ``fast``).

These are functions of model + prompts + metric. How they run (which process takes which batch,
progress bars, checkpoints) is the caller's :class:`mmfv.execution.Execution`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from mmfv import hooks
from mmfv.execution import LOCAL, Checkpoint, Execution
from mmfv.models.base import LMM
from mmfv.prompts import Prompt

ENGINES = ("fast", "skip", "reference")

Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(logits (B, V), answer ids (B,)) -> (B,) score of the answer."""


def _prob(logits: torch.Tensor, answer: torch.Tensor) -> torch.Tensor:
    return logits.float().softmax(-1).gather(-1, answer[:, None])[:, 0]


def _logprob(logits: torch.Tensor, answer: torch.Tensor) -> torch.Tensor:
    return logits.float().log_softmax(-1).gather(-1, answer[:, None])[:, 0]


def _logit_diff(logits: torch.Tensor, answer: torch.Tensor) -> torch.Tensor:
    """Answer logit minus the largest other logit (positive iff the answer is the argmax)."""
    lg = logits.float()
    own = lg.gather(-1, answer[:, None])[:, 0]
    rest = lg.scatter(-1, answer[:, None], float("-inf")).max(-1).values
    return own - rest


METRICS: dict[str, Metric] = {"prob": _prob, "logprob": _logprob, "logit_diff": _logit_diff}
"""What an indirect effect measures the change of: P(first answer token) (default, the paper's),
its log, or its logit minus the best competitor's."""


def metric_fn(metric: str | Metric) -> Metric:
    if callable(metric):
        return metric
    if metric not in METRICS:
        raise ValueError(f"unknown CMA metric {metric!r}: choose one of {', '.join(METRICS)}")
    return METRICS[metric]


class ActivationError(ValueError):
    """Activations are unusable (NaN / inf)."""


@torch.no_grad()
def mean_activations(
    lmm: LMM,
    prompts: Sequence[Prompt],
    batch_size: int = 32,
    only_correct: bool = False,
    head_set: str = "self",
    ex: Execution = LOCAL,
) -> tuple[torch.Tensor, int]:
    """ā (L, H, d): mean head output at the last position over ``prompts``; and how many were used.

    ``only_correct`` keeps only prompts whose argmax first token is the answer (as the paper does).
    """
    hs = lmm.head_sets[head_set]

    def batch_sum(lo: int, hi: int) -> tuple[torch.Tensor, int]:
        batch = lmm.encode(prompts[lo:hi])
        with hooks.read_heads(lmm, head_set=head_set) as store:
            logits = lmm.last_logits(batch)
        keep = torch.ones(batch.size, dtype=torch.bool)
        if only_correct:
            keep = logits.argmax(-1).cpu() == batch.answer_ids.cpu()
        acts = torch.stack([store[l] for l in range(hs.n_layers)], dim=1).double().cpu()  # (B, L, H, d)
        if not torch.isfinite(acts).all():
            raise ActivationError(f"non-finite head activations in prompts {lo}..{hi - 1}: check the model's dtype and inputs")
        return acts[keep].sum(0), int(keep.sum())

    zero = (torch.zeros(hs.n_layers, hs.n_heads, hs.head_dim, dtype=torch.float64), 0)
    total, used = ex.sum_batches(batch_sum, len(prompts), batch_size, "means", zero)
    if used == 0:
        raise ActivationError("no prompt qualified for the mean (only_correct=True and the model answered none correctly)")
    return (total / used).float(), used


def _all_heads(n_layers: int, n_heads: int) -> torch.Tensor:
    """(L*H, 2) every (layer, head), layer-major."""
    l, h = torch.meshgrid(torch.arange(n_layers), torch.arange(n_heads), indexing="ij")
    return torch.stack([l.flatten(), h.flatten()], dim=1)


@torch.no_grad()
def ie_reference(lmm: LMM, prompt: Prompt, means: torch.Tensor, head_set: str = "self", metric: str | Metric = "prob") -> torch.Tensor:
    """IE (L, H) of one corrupted prompt by the published algorithm: one full pass per head, batch 1."""
    m = metric_fn(metric)
    L, H, _ = means.shape
    batch = lmm.encode([prompt])
    ans = batch.answer_ids
    p_c = m(lmm.last_logits(batch), ans)[0]
    out = torch.zeros(L, H)
    one = torch.zeros(1, dtype=torch.long)
    for l in range(L):
        for h in range(H):
            with hooks.patch_heads(lmm, {l: (one, torch.tensor([h]), means[l, h][None])}, head_set=head_set):
                out[l, h] = m(lmm.last_logits(batch), ans)[0] - p_c
    return out


@torch.no_grad()
def ie_fast(lmm: LMM, prompts: Sequence[Prompt], means: torch.Tensor, heads_per_batch: int = 64, head_set: str = "self",
            metric: str | Metric = "prob") -> torch.Tensor:
    """IE (N, L, H) of corrupted prompts: one pass over positions < T-1, then the last token only.

    Each chunk of ``heads_per_batch`` (layer, head) pairs runs as one batch of last-token rows that
    share the prompt's cache; row j of prompt i patches pair j.
    """
    batch = lmm.encode(prompts)
    return _ie_fast(lmm, batch, lmm.prefix(batch), means, heads_per_batch, head_set, metric_fn(metric))


def _ie_fast(lmm: LMM, batch, pre, means: torch.Tensor, heads_per_batch: int, head_set: str, m: Metric) -> torch.Tensor:
    L, H, _ = means.shape
    N = batch.size
    ans = batch.answer_ids
    p_c = m(lmm.last(pre, 1), ans)  # (N,)
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
        p = m(logits, ans.repeat_interleave(R)).view(N, R)
        ie[:, start : start + R] = p - p_c[:, None]
    return ie.view(N, L, H)


@torch.no_grad()
def ie_skip(lmm: LMM, prompts: Sequence[Prompt], means: torch.Tensor, heads_per_batch: int = 64, head_set: str = "self",
            metric: str | Metric = "prob") -> torch.Tensor:
    """IE (N, L, H) as :func:`ie_fast` computes it, running fewer layers: a row patching a head of
    layer l runs the decoder layers from the one holding it (:meth:`LMM.decoder_layer_of`) on.

    The last token runs layer by layer (:meth:`LMM.last_steps`). The first chunk of ``heads_per_batch``
    (layer, head) pairs carries the unpatched token as row 0 of each prompt's block from layer 0 on,
    and the inputs it meets at each layer are kept; a pair's row joins the batch (row-major per
    prompt, in chunk order) at its own layer with that layer's unpatched input, and later chunks start
    at their lowest layer. Adapters without layer stepping, or head sets whose decoder layers are
    unknown, get :func:`ie_fast`."""
    m = metric_fn(metric)
    L, H, _ = means.shape
    batch = lmm.encode(prompts)
    pre = lmm.prefix(batch)
    steps = lmm.last_steps(pre)
    join = [lmm.decoder_layer_of(l, head_set) for l in range(L)]
    if steps is None or None in join or join != sorted(join):
        return _ie_fast(lmm, batch, pre, means, heads_per_batch, head_set, m)
    N, ans, n_dec = batch.size, batch.answer_ids, lmm.n_layers
    inputs: list[torch.Tensor] = []  # inputs[j] (N, D): the unpatched last token's input to decoder layer j
    pairs = _all_heads(L, H)
    ie = torch.zeros(N, L * H)
    p_c = None
    for start in range(0, len(pairs), heads_per_batch):
        chunk = pairs[start : start + heads_per_batch]  # (R, 2), layer-major
        R = len(chunk)
        base = int(start == 0)  # the first chunk carries the unpatched row
        dl = torch.tensor([join[l] for l in chunk[:, 0].tolist()])  # (R,) decoder layer where each row joins
        upto = [base + int((dl <= j).sum()) for j in range(n_dec)]  # rows per prompt in the batch at decoder layer j
        patches = {}
        for l in chunk[:, 0].unique().tolist():
            sel = (chunk[:, 0] == l).nonzero().flatten()  # positions in the chunk = row positions in each block after the unpatched row
            rows = (torch.arange(N)[:, None] * upto[join[l]] + base + sel[None]).flatten()
            heads = chunk[sel, 1].repeat(N)
            patches[l] = (rows, heads, means[l, heads])
        x = steps.embed()[:, None]  # (N, rows so far, D)
        if not base:
            x = x[:, :0]
        with hooks.patch_heads(lmm, patches, head_set=head_set):
            for j in range(0 if base else int(dl.min()), n_dec):
                if base:
                    inputs.append(x[:, 0])
                if upto[j] > x.shape[1]:  # rows joining at layer j enter with its unpatched input
                    x = torch.cat([x, inputs[j][:, None].expand(-1, upto[j] - x.shape[1], -1)], dim=1)
                x = steps.layer(j, x.flatten(0, 1), x.shape[1]).unflatten(0, (N, -1))
        logits = steps.logits(x.flatten(0, 1)).unflatten(0, (N, -1))  # (N, base + R, V)
        if base:
            p_c = m(logits[:, 0], ans)  # (N,)
        p = m(logits[:, base:].flatten(0, 1), ans.repeat_interleave(R)).view(N, R)
        ie[:, start : start + R] = p - p_c[:, None]
    return ie.view(N, L, H)


def prompts_fingerprint(prompts: Sequence[Prompt]) -> str:
    h = hashlib.sha256()
    for p in prompts:
        h.update(json.dumps([p.kind, p.relation, p.image_ids, [it.answer for it in p.items]]).encode())
    return h.hexdigest()[:16]


def top_heads(aie: torch.Tensor, k: int) -> list[tuple[int, int]]:
    """The k (layer, head) pairs of ``aie`` (L, H) with the largest values, best first (ties: lower index)."""
    L, H = aie.shape
    if not 1 <= k <= L * H:
        raise ValueError(f"k={k} is out of range: the model has {L * H} heads ({L} layers x {H})")
    idx = aie.flatten().argsort(descending=True, stable=True)[:k]
    return [(int(i) // H, int(i) % H) for i in idx]


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
        return top_heads(self.aie, k)

    def top_share(self, k: int) -> float:
        """Share of the total positive AIE carried by the top-k heads."""
        pos = self.aie.clamp(min=0)
        tot = float(pos.sum())
        return float(sum(pos[l, h] for l, h in self.top_heads(k))) / tot if tot > 0 else 0.0


def indirect_effects(
    lmm: LMM,
    corrupted_prompts: Sequence[Prompt],
    means: torch.Tensor,
    engine: str = "fast",
    batch_size: int = 8,
    heads_per_batch: int = 64,
    head_set: str = "self",
    metric: str | Metric = "prob",
    ex: Execution = LOCAL,
    checkpoint: Checkpoint | None = None,
) -> torch.Tensor:
    """IE (N, L, H) of every head on each corrupted prompt, ``means`` (L, H, d) patched in.

    ``fast`` and ``skip`` run prompts in batches of ``batch_size``, ``reference`` one at a time; ``ex`` runs the
    chunks (and saves ``checkpoint`` after each round, from which a rerun resumes)."""
    if engine not in ENGINES:
        raise ValueError(f"unknown CMA engine {engine!r}: choose one of {', '.join(ENGINES)}")
    if any(p.kind != "corrupted" for p in corrupted_prompts):
        raise ValueError("CMA measures effects on corrupted prompts: build them with kind='corrupted'")
    metric_fn(metric)
    for name, v in (("batch_size", batch_size), ("heads_per_batch", heads_per_batch)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if head_set not in lmm.head_sets:
        raise ValueError(f"{lmm.model_id} has no {head_set!r} heads (it has {', '.join(lmm.head_sets)})")
    hs = lmm.head_sets[head_set]
    if tuple(means.shape) != (hs.n_layers, hs.n_heads, hs.head_dim):
        raise ValueError(f"means of shape {tuple(means.shape)} do not fit {lmm.model_id}'s {head_set} heads "
                         f"({hs.n_layers}, {hs.n_heads}, {hs.head_dim}): compute them with this model")

    def chunk(s: int, e: int) -> torch.Tensor:
        if engine == "fast":
            return ie_fast(lmm, corrupted_prompts[s:e], means, heads_per_batch, head_set, metric)
        if engine == "skip":
            return ie_skip(lmm, corrupted_prompts[s:e], means, heads_per_batch, head_set, metric)
        return ie_reference(lmm, corrupted_prompts[s], means, head_set, metric)[None]

    def finite(rows: torch.Tensor, s: int, e: int) -> None:
        if not torch.isfinite(rows).all():
            raise ActivationError(f"non-finite indirect effects in prompts {s}..{e - 1}: check the model's dtype")

    step = 1 if engine == "reference" else batch_size
    return ex.rows(chunk, len(corrupted_prompts), step, (hs.n_layers, hs.n_heads), f"cma {engine}", checkpoint, finite)


def cma_fingerprint(lmm: LMM, mean_prompts: Sequence[Prompt], corrupted_prompts: Sequence[Prompt], engine: str, head_set: str,
                    only_correct: bool, metric: str = "prob") -> dict:
    """What an IE checkpoint belongs to: a rerun with any of these changed starts over."""
    fp = {"prompts": prompts_fingerprint(corrupted_prompts), "means": prompts_fingerprint(mean_prompts), "engine": engine,
          "model": lmm.config_hash(), "head_set": head_set, "only_correct": only_correct}
    if metric != "prob":
        fp["metric"] = metric
    return fp


def run_cma(
    lmm: LMM,
    mean_prompts: Sequence[Prompt],
    corrupted_prompts: Sequence[Prompt],
    engine: str = "fast",
    batch_size: int = 8,
    heads_per_batch: int = 64,
    only_correct: bool = False,
    checkpoint: str | None = None,
    head_set: str = "self",
    metric: str = "prob",
    ex: Execution = LOCAL,
    means: tuple[torch.Tensor, int] | None = None,
) -> CMAResult:
    """Means over clean prompts (or the given ``(means, n_mean)``), then IE of every head on each
    corrupted prompt: the whole analysis for one relation in one call.

    With ``checkpoint`` (a file path), the IEs are saved after every prompt batch and a rerun
    resumes from them; a checkpoint from other prompts, engine or model is refused, never mixed in.
    """
    relations = {p.relation for p in corrupted_prompts} | {p.relation for p in mean_prompts}
    if len(relations) != 1:
        raise ValueError(f"CMA runs one relation at a time; got {sorted(relations)}")
    if engine not in ENGINES:
        raise ValueError(f"unknown CMA engine {engine!r}: choose one of {', '.join(ENGINES)}")
    if any(p.kind != "corrupted" for p in corrupted_prompts):
        raise ValueError("CMA measures effects on corrupted prompts: build them with kind='corrupted'")
    if means is None:
        means = mean_activations(lmm, mean_prompts, batch_size=max(batch_size, 16), only_correct=only_correct, head_set=head_set, ex=ex)
    m, n_mean = means
    ck = Checkpoint(checkpoint, cma_fingerprint(lmm, mean_prompts, corrupted_prompts, engine, head_set, only_correct, metric)) if checkpoint else None
    ie = indirect_effects(lmm, corrupted_prompts, m, engine, batch_size, heads_per_batch, head_set, metric, ex, ck)
    return CMAResult(next(iter(relations)), m, ie, n_mean, engine, head_set)


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
