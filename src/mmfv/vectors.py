"""Function vectors: build from top heads, arithmetic with provenance, save/load (safetensors).

FV_r = Σ over the top-k (l, h) by AIE of ``W_O[:, h·d:(h+1)·d] @ ā[r, l, h]`` (no bias), a (D,)
vector added to the residual stream. Every vector remembers which model (id and config hash) it
came from, so it cannot be applied to another model by mistake.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from mmfv import __version__
from mmfv.models.base import LMM


class VectorError(ValueError):
    """A vector cannot be used as asked (other model, corrupted file, ...)."""


@dataclass(frozen=True)
class FunctionVector:
    """A (D,) vector and where it came from.

    ``relation`` is a name ("left") or, for arithmetic results, an expression ("above + left").
    ``heads`` lists the (layer, head) pairs it was built from (union for combinations).
    """

    vector: torch.Tensor
    relation: str
    model_id: str
    config_hash: str
    n_layers: int
    hidden_size: int
    heads: tuple[tuple[int, int], ...] = ()
    k: int = 0
    mmfv_version: str = __version__
    extra: dict = field(default_factory=dict)
    layer: int | None = None  # the injection layer it was chosen for (used when none is given)

    def __post_init__(self) -> None:
        if not isinstance(self.vector, torch.Tensor) or self.vector.shape != (self.hidden_size,):
            raise VectorError(f"a function vector is a tensor of shape ({self.hidden_size},), got {getattr(self.vector, 'shape', type(self.vector).__name__)}")
        if not torch.isfinite(self.vector).all():
            raise VectorError(f"vector for {self.relation!r} has NaN or infinite entries")
        if self.layer is not None and not 0 <= self.layer < self.n_layers:
            raise VectorError(f"layer {self.layer} is out of range for a model with {self.n_layers} layers")

    def at(self, layer: int) -> "FunctionVector":
        """The same vector, recording ``layer`` as the one to inject it at."""
        return replace(self, layer=int(layer))

    @property
    def provenance(self) -> dict[str, Any]:
        return {
            "relation": self.relation, "model_id": self.model_id, "config_hash": self.config_hash,
            "n_layers": self.n_layers, "hidden_size": self.hidden_size, "heads": [list(h) for h in self.heads],
            "k": self.k, "mmfv_version": self.mmfv_version, "extra": self.extra, **({"layer": self.layer} if self.layer is not None else {}),
        }

    def check_model(self, lmm: LMM) -> None:
        """Raise unless ``lmm`` is the model this vector was built from."""
        if lmm.config_hash() != self.config_hash or lmm.hidden_size != self.hidden_size or lmm.n_layers != self.n_layers:
            raise VectorError(
                f"vector for {self.relation!r} was built from {self.model_id} (config {self.config_hash}, D={self.hidden_size}, "
                f"L={self.n_layers}), not from this model ({lmm.model_id}, config {lmm.config_hash()}): extract it from this model"
            )

    def _combine(self, other: "FunctionVector", op: str) -> "FunctionVector":
        if not isinstance(other, FunctionVector):
            return NotImplemented
        if other.config_hash != self.config_hash:
            raise VectorError(f"cannot combine vectors of different models ({self.model_id} vs {other.model_id})")
        vec = self.vector + other.vector if op == "+" else self.vector - other.vector
        heads = tuple(sorted(set(self.heads) | set(other.heads)))
        extra = {"op": op, "operands": [self.provenance, other.provenance]}
        return replace(self, vector=vec, relation=f"({self.relation} {op} {other.relation})", heads=heads, k=len(heads), extra=extra, layer=None)

    def __add__(self, other: "FunctionVector") -> "FunctionVector":
        return self._combine(other, "+")

    def __sub__(self, other: "FunctionVector") -> "FunctionVector":
        return self._combine(other, "-")

    def __mul__(self, a: float) -> "FunctionVector":
        if not isinstance(a, (int, float)):
            return NotImplemented
        return replace(self, vector=self.vector * float(a), relation=f"{float(a):g}*{self.relation}", extra={"op": "*", "scale": float(a), "operands": [self.provenance]})

    __rmul__ = __mul__

    def __neg__(self) -> "FunctionVector":
        return self * -1.0

    def save(self, path: str | os.PathLike) -> Path:
        """Safetensors with the provenance as JSON metadata; written atomically."""
        from mmfv.io import write_safetensors

        return write_safetensors(path, {"vector": self.vector.float()}, {"mmfv": json.dumps(self.provenance, sort_keys=True)})

    @staticmethod
    def load(path: str | os.PathLike, lmm: LMM | None = None) -> "FunctionVector":
        """Read a vector; with ``lmm``, also check it belongs to that model."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"function vector file {path} does not exist")
        try:
            t = load_file(str(path))
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                meta = json.loads((f.metadata() or {})["mmfv"])
            vec = t["vector"]
        except (SafetensorError, KeyError, json.JSONDecodeError, OSError, ValueError) as e:
            raise VectorError(f"{path} is not a readable mmfv function vector ({type(e).__name__}): re-extract it") from None
        try:
            fv = FunctionVector(
                vec, meta["relation"], meta["model_id"], meta["config_hash"], meta["n_layers"], meta["hidden_size"],
                tuple(tuple(h) for h in meta["heads"]), meta["k"], meta["mmfv_version"], meta.get("extra", {}), meta.get("layer"),
            )
        except (KeyError, TypeError, AttributeError) as e:
            raise VectorError(f"{path} has damaged mmfv metadata ({type(e).__name__}: {e}): re-extract it") from None
        except VectorError as e:
            raise VectorError(f"{path}: {e}: re-extract it") from None
        if lmm is not None:
            fv.check_model(lmm)
        return fv


def head_contribution(lmm: LMM, layer: int, head: int, mean: torch.Tensor, head_set: str = "self") -> torch.Tensor:
    """``gate · W_O[:, h·d:(h+1)·d] @ mean`` (D,): what one head's mean output writes into the residual.

    ``gate`` is 1 for plain attention; for gated cross-attention it is the block's tanh gate, without
    which cross-head vectors would be off by that factor (0 for an unopened gate)."""
    W = lmm.o_proj(layer, head_set).weight  # (D, H*d)
    d = mean.shape[-1]
    gate = lmm.head_output_gate(layer, head_set)  # float, (1,) or (D,)
    out = W[:, head * d : (head + 1) * d].detach().float() @ mean.float()  # (D,)
    return out * (gate.to(out.device) if isinstance(gate, torch.Tensor) else float(gate))


def head_bias(lmm: LMM, layer: int, head_set: str = "self") -> torch.Tensor | None:
    """``gate · b_O`` (D,) of a layer's output projection, or None when it has no bias."""
    proj = lmm.o_proj(layer, head_set)
    if getattr(proj, "bias", None) is None:
        return None
    gate = lmm.head_output_gate(layer, head_set)
    b = proj.bias.detach().float()
    return b * (gate.to(b.device) if isinstance(gate, torch.Tensor) else float(gate))


def build(lmm: LMM, means: torch.Tensor, heads: Sequence[tuple[int, int]], relation: str, head_set: str = "self", extra: dict | None = None,
          bias: bool = False) -> FunctionVector:
    """FV = Σ over ``heads`` of each head's W_O slice times its mean activation. means: (L, H, d).

    ``bias``: also add the output projection's bias once per head, as the paper's code does (its
    OpenFlamingo ``dense`` has one: a top-10 FV then carries the bias 10 times)."""
    L, H, _ = means.shape
    for l, h in heads:
        if not (0 <= l < L and 0 <= h < H):
            raise VectorError(f"head ({l}, {h}) is out of range for a model with {L} layers x {H} heads")
    if not torch.isfinite(means).all():
        raise VectorError(f"the mean activations of {relation!r} have NaN or infinite entries: rerun the means stage (check the model's dtype)")
    vec = torch.zeros(lmm.hidden_size)
    for l, h in heads:
        vec += head_contribution(lmm, l, h, means[l, h], head_set)
        if bias and (b := head_bias(lmm, l, head_set)) is not None:
            vec += b.cpu()
    return FunctionVector(vec, relation, lmm.model_id, lmm.config_hash(), lmm.n_layers, lmm.hidden_size, tuple((int(l), int(h)) for l, h in heads), len(heads), extra=extra or {})
