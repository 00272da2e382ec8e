"""Model-family specs: one small declarative file per family, and the registry that picks one.

Every module in this package that defines ``SPEC`` is a family: adding a family is adding one file
(docs/adding-a-model-family.md). ``for_config(config)`` picks the spec from a transformers config's
``model_type`` (or, failing that, its ``architectures``); an unsupported family raises one line naming
the supported ones.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from mmfv.models.specs.spec import CrossVision, Spec


def discover(package: str = __name__) -> tuple[Spec, ...]:
    """The SPEC of every module in ``package``, in module-name order; two claiming one name fail loudly."""
    pkg = importlib.import_module(package)
    found: list[Spec] = []
    for m in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        spec = getattr(importlib.import_module(f"{package}.{m.name}"), "SPEC", None)
        if isinstance(spec, Spec):
            found.append(spec)
    seen: dict[str, str] = {}
    for s in found:
        for key in {s.family, *s.model_types}:
            if key in seen:
                raise RuntimeError(f"model specs {seen[key]} and {s.family} both claim {key!r}: one family per model_type")
            seen[key] = s.family
    return tuple(found)


SPECS: tuple[Spec, ...] = discover()
BY_FAMILY: dict[str, Spec] = {s.family: s for s in SPECS}


class UnsupportedModel(ValueError):
    """No spec serves this model family."""


def supported() -> list[str]:
    return [s.family for s in SPECS]


def get(family: str) -> Spec:
    if family not in BY_FAMILY:
        raise UnsupportedModel(f"unknown model family {family!r}: supported are {', '.join(supported())}")
    return BY_FAMILY[family]


def for_config(config: Any) -> Spec:
    """The spec for a transformers config (object or dict)."""
    d = config if isinstance(config, dict) else config.to_dict()
    mt = d.get("model_type")
    archs = d.get("architectures") or []
    for s in SPECS:
        if mt in s.model_types:
            return s
    for s in SPECS:
        if s.model_class in archs:
            return s
    what = f"model_type {mt!r}" + (f" ({', '.join(archs)})" if archs else "")
    raise UnsupportedModel(f"unsupported model family: {what}; supported are {', '.join(supported())}")


__all__ = ["CrossVision", "Spec", "SPECS", "UnsupportedModel", "discover", "for_config", "get", "supported"]
