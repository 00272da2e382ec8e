"""Model-family specs: one small declarative file per family, and the registry that picks one.

Every module in this package that defines ``SPEC`` is a family: adding a family is adding one file
(docs/adding-a-model-family.md). A family from outside the package is added at run time with
:func:`register` (a ``Spec``) or :func:`register_file` (a Python file defining ``SPEC`` or ``SPECS``);
registered families are tried before the built-in ones, so one may also serve a ``model_type`` that
a built-in family serves. ``for_config(config)`` picks the spec from a transformers config's
``model_type`` (or, failing that, its ``architectures``); an unsupported family raises one line naming
the supported ones.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
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
"""The built-in families (this package's files)."""
BY_FAMILY: dict[str, Spec] = {s.family: s for s in SPECS}
REGISTERED: dict[str, Spec] = {}
"""Families added with :func:`register` / :func:`register_file`, by name; tried before :data:`SPECS`."""


class UnsupportedModel(ValueError):
    """No spec serves this model family."""


class SpecError(ValueError):
    """A spec given from outside the package cannot be used (missing file, no SPEC, wrong type, clash)."""


def register(spec: Spec) -> Spec:
    """Add a model family from outside the package; models of its ``model_types`` (or, failing
    those, ``model_class`` in a config's ``architectures``) are then served by it, before any
    built-in family. Registering a name again replaces that registration; a built-in family's name,
    or a ``model_type`` another registered family serves, is refused."""
    if not isinstance(spec, Spec):
        raise SpecError(f"register() takes a mmfv.models.specs.Spec, got {type(spec).__name__}")
    if spec.family in BY_FAMILY:
        raise SpecError(f"model family {spec.family!r} is built in: give your spec another family name")
    for other in REGISTERED.values():
        shared = set(spec.model_types) & set(other.model_types)
        if other.family != spec.family and shared:
            raise SpecError(f"model families {other.family} and {spec.family} both claim model_type {sorted(shared)[0]!r}: one family per model_type")
    import transformers

    if not hasattr(transformers, spec.model_class):
        raise SpecError(f"spec {spec.family}: model_class {spec.model_class!r} is not a transformers class (transformers {transformers.__version__})")
    REGISTERED[spec.family] = spec
    return spec


def unregister(family: str) -> None:
    """Remove a family added with :func:`register` (nothing if it was not)."""
    REGISTERED.pop(family, None)


def register_file(path: str | Path) -> tuple[Spec, ...]:
    """Run the Python file ``path`` and :func:`register` its ``SPEC`` (a Spec) or ``SPECS`` (a list or
    tuple of them). This executes the file's code, as importing it would: pass only files you trust."""
    import runpy
    import traceback

    p = Path(path).expanduser()
    if p.suffix != ".py":
        raise SpecError(f"model spec {p} is not a Python file (.py): give the file that defines SPEC")
    if not p.is_file():
        raise SpecError(f"model spec file {p} does not exist")
    try:
        ns = runpy.run_path(str(p), run_name=f"mmfv_spec_{p.stem}")
    except Exception as e:  # noqa: BLE001 - the user's file: say where it failed, in one line
        here = [f.lineno for f in traceback.extract_tb(e.__traceback__) if Path(f.filename).resolve() == p.resolve()]
        if isinstance(e, SyntaxError) and e.lineno:
            here.append(e.lineno)
        at = f"{p}:{here[-1]}" if here else str(p)
        raise SpecError(f"model spec {at}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")) from None
    if "SPEC" in ns:
        found, what = [ns["SPEC"]], "SPEC"
    elif "SPECS" in ns and isinstance(ns["SPECS"], (list, tuple)):
        found, what = list(ns["SPECS"]), "SPECS"
    elif "SPECS" in ns:
        raise SpecError(f"model spec {p}: SPECS is a {type(ns['SPECS']).__name__}, not a list of mmfv.models.specs.Spec")
    else:
        raise SpecError(f"model spec {p} defines no SPEC (or SPECS): set SPEC = mmfv.models.specs.Spec(...) (docs/adding-a-model-family.md)")
    bad = [x for x in found if not isinstance(x, Spec)]
    if bad or not found:
        got = type(bad[0]).__name__ if bad else "an empty list"
        raise SpecError(f"model spec {p}: {what} must be mmfv.models.specs.Spec, got {got}")
    try:
        return tuple(register(s) for s in found)
    except SpecError as e:
        raise SpecError(f"model spec {p}: {e}") from None


def _all() -> list[Spec]:
    return [*REGISTERED.values(), *SPECS]


def supported() -> list[str]:
    return [s.family for s in _all()]


def get(family: str) -> Spec:
    if family in REGISTERED:
        return REGISTERED[family]
    if family not in BY_FAMILY:
        raise UnsupportedModel(f"unknown model family {family!r}: supported are {', '.join(supported())}")
    return BY_FAMILY[family]


def for_config(config: Any) -> Spec:
    """The spec for a transformers config (object or dict): registered families first."""
    d = config if isinstance(config, dict) else config.to_dict()
    mt = d.get("model_type")
    archs = d.get("architectures") or []
    for s in _all():
        if mt in s.model_types:
            return s
    for s in _all():
        if s.model_class in archs:
            return s
    what = f"model_type {mt!r}" + (f" ({', '.join(archs)})" if archs else "")
    raise UnsupportedModel(f"unsupported model family: {what}; supported are {', '.join(supported())}")


__all__ = ["CrossVision", "REGISTERED", "Spec", "SPECS", "SpecError", "UnsupportedModel", "discover", "for_config", "get", "register",
           "register_file", "supported", "unregister"]
