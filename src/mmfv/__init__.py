"""mmfv: multimodal function vectors — find the attention heads that carry a relation in context,
and turn them into vectors that steer, fine-tune and compose it.

The Python API in a few lines (docs/api.md, examples/quickstart.py)::

    import mmfv
    lmm = mmfv.load_model("tiny")                                  # or an HF id / folder, gguf:<file>
    data = mmfv.items(lmm, "eval")                                 # relation -> items, in the model's scene style
    clean = mmfv.build_prompts("clean", data, "left", k=5, n=100)
    corrupt = mmfv.build_prompts("corrupted", data, "left", k=5, n=25, seed=1)
    res = mmfv.causal_mediation(lmm, clean, corrupt)               # means, per-prompt IEs, AIE
    fv = mmfv.function_vector(lmm, res, k=10)                      # Σ top-k heads' W_O · mean
    val = mmfv.build_prompts("zero-shot", mmfv.items(lmm, "val"), "left", n=100)
    fv = fv.at(mmfv.best_layer(lmm, val, fv))                      # the layer chosen on val
    test = mmfv.build_prompts("zero-shot", mmfv.items(lmm, "test"), "left", n=200)
    mmfv.accuracy(lmm, test), mmfv.accuracy(lmm, test, fv)

The whole pipeline (every stage, a report) is :func:`run`, or `mmfv run` on the command line.
Names are imported on first use, so ``import mmfv`` stays light. (No name here shadows a
submodule: ``mmfv.cma``, ``mmfv.prompts``, ``mmfv.finetune`` … stay the modules.)
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any, Mapping, Sequence

__version__ = "0.1.0"

_LAZY = {
    # models
    "load_model": ("mmfv.models", "load_model"),
    "LMM": ("mmfv.models.base", "LMM"),
    # data and prompts
    "Item": ("mmfv.prompts", "Item"),
    "Prompt": ("mmfv.prompts", "Prompt"),
    "Template": ("mmfv.prompts", "Template"),
    "FLAMINGO": ("mmfv.prompts", "FLAMINGO"),
    "relations": ("mmfv.relations", None),
    # method
    "CMAResult": ("mmfv.cma", "CMAResult"),
    "FunctionVector": ("mmfv.vectors", "FunctionVector"),
    "finetune_vector": ("mmfv.finetune", "finetune"),
    "FinetuneSettings": ("mmfv.finetune", "FinetuneSettings"),
    "composed": ("mmfv.compose", "composed"),
    "analogy_vector": ("mmfv.compose", "analogy_vector"),
    "layer_sweep": ("mmfv.evaluate", "layer_sweep"),
    "retain": ("mmfv.retain", None),
    "rsa": ("mmfv.rsa", None),
    "baselines": ("mmfv.baselines", None),
    # pipeline and results
    "Config": ("mmfv.config", "Config"),
    "load_config": ("mmfv.config", "load"),
    "Run": ("mmfv.results", "Run"),
    "plots": ("mmfv.plots", None),
    "stages": ("mmfv.stages", None),
}

__all__ = ["__version__", "items", "build_prompts", "causal_mediation", "function_vector", "accuracy", "best_layer", "run", *_LAZY]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time these load on first use
    from mmfv import baselines, plots, relations, retain, rsa, stages  # noqa: F401
    from mmfv.cma import CMAResult
    from mmfv.compose import analogy_vector, composed  # noqa: F401
    from mmfv.config import Config, load as load_config  # noqa: F401
    from mmfv.evaluate import layer_sweep  # noqa: F401
    from mmfv.finetune import FinetuneSettings  # noqa: F401
    from mmfv.finetune import finetune as finetune_vector  # noqa: F401
    from mmfv.models import load_model  # noqa: F401
    from mmfv.models.base import LMM
    from mmfv.prompts import FLAMINGO, Item, Prompt, Template  # noqa: F401
    from mmfv.results import Run  # noqa: F401
    from mmfv.vectors import FunctionVector


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        mod = import_module(module)
        value = mod if attr is None else getattr(mod, attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mmfv' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


def items(model: "LMM | Any", split: str, relations: Sequence[str] | None = None, n_scenes: int | None = None, seed: int = 0,
          **data: Any) -> dict[str, list["Item"]]:
    """relation -> items of ``split`` ("eval", "train", "val", "test").

    Synthetic scenes by default, drawn in ``model``'s scene style (pass the model; its
    ``scene_config()`` is used), ``n_scenes`` of them (default: the run config's size for the split).
    Real data: ``dataset="gqa" | "vsr" | "tasks"`` with ``files=[...]`` and ``image_dir=...`` — the
    keys of the ``[data]`` config section."""
    from mmfv.settings import DataSettings

    kw: dict[str, Any] = {"seed": seed, **data}
    if relations is not None:
        kw["relations"] = list(relations) if not isinstance(relations, str) else relations
    if n_scenes is not None:
        kw[f"{split}_scenes"] = n_scenes
    try:
        settings = DataSettings(**kw)
    except ValueError as e:
        from mmfv.config import ConfigError, _message

        raise ConfigError(_message("data", e).replace("config key data.", "argument ")) from None
    return settings.items(model, split)


def build_prompts(kind: str, items: Mapping[str, Sequence["Item"]], relation: str, k: int = 0, n: int = 100, seed: int = 0,
            protocol: str = "mmfv") -> list["Prompt"]:
    """``n`` prompts of ``kind`` ("clean", "corrupted", "zero-shot") for ``relation``, with ``k``
    demonstrations drawn from ``items`` (relation -> items, e.g. from :func:`items`)."""
    from mmfv.prompts import build

    if relation not in items:
        raise ValueError(f"no items of relation {relation!r}: the items have {', '.join(items)}")
    return build(kind, items[relation], items, k if kind != "zero-shot" else 0, n, seed, protocol)


def causal_mediation(model: "LMM", clean: Sequence["Prompt"], corrupted: Sequence["Prompt"], engine: str = "fast", metric: str = "prob",
        only_correct: bool = False, head_set: str = "self", batch_size: int = 8) -> "CMAResult":
    """Causal mediation analysis of one relation: mean head outputs over ``clean`` prompts, then the
    indirect effect of every head on each ``corrupted`` prompt (``.ie`` (N, L, H), ``.aie``, ``.top_heads(k)``)."""
    from mmfv.cma import run_cma

    return run_cma(model, clean, corrupted, engine=engine, batch_size=batch_size, only_correct=only_correct, head_set=head_set, metric=metric)


def function_vector(model: "LMM", result: "CMAResult", k: int = 10, bias: bool = False) -> "FunctionVector":
    """The function vector of ``result``'s relation: its top-``k`` heads' output projections applied
    to their mean activations, summed (``bias``: plus the projection's bias per head, as the paper's code)."""
    from mmfv import vectors as V

    return V.build(model, result.means, result.top_heads(k), result.relation, head_set=result.head_set, bias=bias)


def accuracy(model: "LMM", prompts: Sequence["Prompt"], vector: "FunctionVector | Any" = None, layer: int | None = None,
             batch_size: int = 64) -> float:
    """First-token accuracy of ``prompts``, optionally with ``vector`` added at ``layer`` (default:
    the layer the FunctionVector records). ``mmfv.evaluate.accuracy`` also gives the 95% interval."""
    from mmfv import evaluate

    return evaluate.accuracy(model, prompts, vector, layer, batch_size)["acc"]


def best_layer(model: "LMM", prompts: Sequence["Prompt"], vector: "FunctionVector | Any", batch_size: int = 64) -> int:
    """The injection layer where ``vector`` gives the best accuracy on ``prompts`` (use val prompts)."""
    from mmfv import evaluate

    return evaluate.best_layer(evaluate.layer_sweep(model, prompts, getattr(vector, "vector", vector), batch_size))


def run(config: "str | Any | None" = None, out: str | None = None, **kw: Any) -> "Run":
    """The whole pipeline (or part: ``only=``, ``start=``, ``until=``) into ``out``; returns the :class:`Run`.
    ``config``: a TOML path, a Config, or None for the built-in one."""
    from mmfv import config as C
    from mmfv import runner
    from mmfv.results import Run

    cfg = config if isinstance(config, C._ConfigBase) else C.load(config)
    out = out or cfg.run.out
    runner.run(cfg, out, quiet=kw.pop("quiet", True), **kw)
    return Run(out)
