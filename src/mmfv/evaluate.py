"""Accuracy of a model on relation prompts: ICL baselines by shots, zero-shot ± function vector.

Accuracy is first-token top-1 (argmax at the last prompt position equals the answer's first
token); 95% Wilson intervals are reported beside every mean.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Callable, ContextManager, Mapping, Sequence

import torch

from mmfv import prompts as P
from mmfv.execution import LOCAL, Execution
from mmfv.injection import Stems
from mmfv.models.base import LMM
from mmfv.prompts import Item, Prompt


def wilson(k: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for k successes out of n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    den = 1 + z * z / n
    c = (p + z * z / (2 * n)) / den
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, c - h), min(1.0, c + h))


@torch.no_grad()
def predictions(
    lmm: LMM,
    prompts: Sequence[Prompt],
    batch_size: int = 64,
    context: Callable[[int], ContextManager] | None = None,
    ex: Execution = LOCAL,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted, answer) first-token ids, each (N,): the argmax at the last position and the answer's.

    ``context(batch_size)`` may return a hook context (e.g. adding a vector) entered per batch;
    ``ex`` decides which process runs which batch (every process gets the full result).
    """
    _check_batch_size(batch_size)

    def run(lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
        batch = lmm.encode(prompts[lo:hi])
        with (context(batch.size) if context else nullcontext()):
            logits = lmm.last_logits(batch)  # (B, V)
        if not torch.isfinite(logits).all():  # argmax of NaN is an arbitrary token: never score it
            raise ValueError(f"the model's logits are NaN or infinite on prompts {lo}..{hi - 1}" + (
                " with the vector added: its norm is too large for the model's dtype (scale it down)" if context else
                ": check the model's dtype and inputs"))
        return logits.argmax(-1), batch.answer_ids

    return ex.map_batches(run, len(prompts), batch_size, "eval", [(torch.long, ()), (torch.long, ())])


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


def correct(
    lmm: LMM,
    prompts: Sequence[Prompt],
    batch_size: int = 64,
    context: Callable[[int], ContextManager] | None = None,
    ex: Execution = LOCAL,
) -> torch.Tensor:
    """(N,) bool: does the argmax first token equal the answer's first token?"""
    pred, ans = predictions(lmm, prompts, batch_size, context, ex)
    return pred == ans


def summarize(c: torch.Tensor) -> dict:
    n = int(c.numel())
    k = float(c.float().sum())
    lo, hi = wilson(k, n)
    return {"acc": round(k / max(n, 1), 4), "ci95": [round(lo, 4), round(hi, 4)], "n": n}


def icl(
    lmm: LMM,
    queries: Mapping[str, Sequence[Item]],
    pools: Mapping[str, Sequence[Item]],
    shots: Sequence[int],
    n: int,
    kinds: Sequence[str] = ("clean", "corrupted"),
    seed: int = 0,
    batch_size: int = 64,
    ex: Execution = LOCAL,
    protocol: str = "mmfv",
) -> dict:
    """ICL accuracy table: ``out[kind][str(k)][relation]`` = {acc, ci95, n}, plus ``mean`` per k.

    Zero shots is the zero-shot prompt for every kind. ``queries``/``pools`` map relation -> items.
    """
    out: dict = {}
    zero: dict[str, dict] = {}  # zero-shot cells: the same prompts for every kind, scored once
    for kind in kinds:
        out[kind] = {}
        for k in shots:
            row = {}
            for rel, qs in queries.items():
                if k == 0 and rel in zero:
                    row[rel] = dict(zero[rel])
                    continue
                prompts = P.build(kind if k > 0 else "zero-shot", qs, pools, k, n, seed, protocol)
                row[rel] = summarize(correct(lmm, prompts, batch_size, ex=ex))
                if k == 0:
                    zero[rel] = row[rel]
            accs = [row[r]["acc"] for r in queries]
            total_n = sum(row[r]["n"] for r in queries)
            mean = sum(accs) / len(accs)
            lo, hi = wilson(mean * total_n, total_n)
            row["mean"] = {"acc": round(mean, 4), "ci95": [round(lo, 4), round(hi, 4)], "n": total_n}
            out[kind][str(k)] = row
    return out


def format_icl_table(res: dict, relations: Sequence[str]) -> str:
    """Plain-text table: one line per (kind, k), accuracy per relation and the mean with its CI."""
    lines = [f"{'kind':<10} {'k':>2}  " + "  ".join(f"{r:>7}" for r in relations) + "     mean  [95% CI]"]
    for kind, by_k in res.items():
        for k, row in by_k.items():
            m = row["mean"]
            lines.append(
                f"{kind:<10} {k:>2}  " + "  ".join(f"{row[r]['acc']:>7.3f}" for r in relations)
                + f"    {m['acc']:.3f}  [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]"
            )
    return "\n".join(lines)


def with_vector(lmm: LMM, vector: torch.Tensor, layer: int, scale: float = 1.0) -> Callable[[int], ContextManager]:
    """A per-batch context that adds ``scale * vector`` at ``layer``'s output, last position."""
    from mmfv import hooks

    return lambda B: hooks.add_to_layer(lmm, layer, vector, position=-1, scale=scale)


def _vector_and_layer(lmm: LMM, vector, layer: int | None) -> tuple[torch.Tensor, int]:
    """A (D,) tensor and its layer from a tensor or a FunctionVector (whose chosen layer is the default)."""
    v = getattr(vector, "vector", vector)
    if layer is None:
        layer = getattr(vector, "layer", None)
        if layer is None:
            raise ValueError("no injection layer: pass layer=, or a FunctionVector that records its layer")
    if not isinstance(v, torch.Tensor) or v.shape != (lmm.hidden_size,):
        raise ValueError(f"vector must be a FunctionVector or a tensor of shape ({lmm.hidden_size},), got {getattr(v, 'shape', type(v).__name__)}")
    if not torch.isfinite(v).all():
        raise ValueError("vector has NaN or infinite entries: it cannot be injected")
    if not 0 <= int(layer) < lmm.n_layers:
        raise ValueError(f"layer {layer} is out of range: the model has layers 0..{lmm.n_layers - 1}")
    return v, int(layer)


def accuracy(lmm: LMM, prompts: Sequence[Prompt], vector=None, layer: int | None = None, batch_size: int = 64, ex: Execution = LOCAL,
             stems: Stems | None = None) -> dict:
    """{acc, ci95, n} of ``prompts``, optionally with ``vector`` (tensor or FunctionVector) added at ``layer``.

    With ``stems`` (:class:`mmfv.injection.Stems`) a vector is added by cached injection: each prompt
    batch's prefix and residuals are prepared once there and reused by every later call on the same
    prompts (any vector, any layer); without, a hook on a full forward (the reference path)."""
    ctx = None
    if vector is not None:
        v, layer = _vector_and_layer(lmm, vector, layer)
        if stems is not None:
            return summarize(_correct_cached(lmm, prompts, v, layer, batch_size, ex, stems))
        ctx = with_vector(lmm, v, layer)
    return summarize(correct(lmm, prompts, batch_size, ctx, ex))


ROWS = 1024
"""Most last-token rows one cached pass scores (prompts x vectors, :func:`accuracies`)."""


def _correct_cached(lmm: LMM, prompts: Sequence[Prompt], vectors: torch.Tensor, layer: int, batch_size: int, ex: Execution, stems: Stems) -> torch.Tensor:
    """As :func:`correct` with each vector added at ``layer``, by cached injection: (N,) bool for one
    vector (D,), (N, K) for K vectors (K, D), all K scored on each prompt batch at once (K last-token
    rows per prompt sharing its prefix, at most :data:`ROWS` rows a pass)."""
    _check_batch_size(batch_size)
    V = vectors[None] if vectors.dim() == 1 else vectors  # (K, D)
    K = V.shape[0]

    @torch.no_grad()
    def run(lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
        stem = stems.get(prompts[lo:hi])
        step = max(1, ROWS // (hi - lo))
        preds = []
        for k in range(0, K, step):
            logits = stem.logits(lmm, layer, V[k : k + step])  # (B*k, V), prompt-major
            if not torch.isfinite(logits).all():  # as predictions(): argmax of NaN is an arbitrary token
                raise ValueError(f"the model's logits are NaN or infinite on prompts {lo}..{hi - 1} with the vector added: "
                                 "its norm is too large for the model's dtype (scale it down)")
            preds.append(logits.argmax(-1).view(hi - lo, -1))
        return torch.cat(preds, 1), stem.batch.answer_ids  # (B, K), (B,)

    pred, ans = ex.map_batches(run, len(prompts), batch_size, "eval", [(torch.long, (K,)), (torch.long, ())])
    correct = pred == ans[:, None]  # (N, K)
    return correct[:, 0] if vectors.dim() == 1 else correct


def accuracies(lmm: LMM, prompts: Sequence[Prompt], vectors: Sequence[torch.Tensor], layer: int, batch_size: int = 64, ex: Execution = LOCAL,
               stems: Stems | None = None) -> list[float]:
    """Accuracy of each of K vectors (each (D,)) added at ``layer``, on the same prompts. With
    ``stems`` every prompt batch is scored for all K at once (:func:`_correct_cached`); without, one
    :func:`accuracy` each (the reference)."""
    vs = [_vector_and_layer(lmm, v, layer)[0] for v in vectors]
    if stems is None or not vs:
        return [accuracy(lmm, prompts, v, layer, batch_size, ex)["acc"] for v in vs]
    correct = _correct_cached(lmm, prompts, torch.stack(vs), layer, batch_size, ex, stems)  # (N, K)
    return [summarize(correct[:, k])["acc"] for k in range(correct.shape[1])]


def layer_sweep(lmm: LMM, prompts: Sequence[Prompt], vector: torch.Tensor, batch_size: int = 64, layers: Sequence[int] | None = None,
                ex: Execution = LOCAL, stems: Stems | None = None) -> list[float]:
    """Accuracy with ``vector`` injected at each layer (index = layer); ``stems``: cached injection
    (the prompts prepared once for every layer), see :func:`accuracy`."""
    layers = list(range(lmm.n_layers)) if layers is None else list(layers)
    return [accuracy(lmm, prompts, vector, l, batch_size, ex, stems)["acc"] for l in layers]


def best_layer(accs: Sequence[float]) -> int:
    """The layer with the highest validation accuracy (earliest on ties)."""
    return max(range(len(accs)), key=lambda i: (accs[i], -i))
