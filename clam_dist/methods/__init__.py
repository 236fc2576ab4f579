"""The method registry: the ONE place that knows clam, kmeans, attention and dcam by name.

Each method is a package ``clam_dist/methods/<name>/`` whose ``__init__`` exports
``SPEC`` (a :class:`~clam_dist.methods.spec.MethodSpec`): its math, objective,
estimator, Tune trial, config section and defaults all live in that folder. The
trainer, the pipeline, the predictor, Tune and the CLI import this registry and
``methods.spec`` only, and never name a method (``tests/test_method_structure.py``
scans the package's AST for both). Adding a fifth method = one new folder plus one
line in ``_BUILTIN`` (docs/design.md, "How to add a method").
"""

from __future__ import annotations

import importlib
import os

from clam_dist.config import ConfigError
from clam_dist.methods.spec import MethodSpec

# name -> the package that exports SPEC. Imported on first use by its name: a package's
# __init__ is light (its heavy parts load through spec.Ref when a run needs them).
_BUILTIN: dict[str, str] = {
    "clam": "clam_dist.methods.clam",
    "kmeans": "clam_dist.methods.kmeans",
    "attention": "clam_dist.methods.attention",
    "dcam": "clam_dist.methods.dcam",
}
# Methods that are not built in, as "name=package,name=package" (a plug-in's own
# package, importable where the job runs): read at import, so the processes Ray starts
# for a job know them too, as they inherit the driver's environment.
PLUGINS_ENV = "CLAM_DIST_METHODS"


def _plugins(value: str) -> dict[str, str]:
    found = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        name, sep, package = item.partition("=")
        if not sep or not name.strip() or not package.strip():
            raise ValueError(f"{PLUGINS_ENV}: expected name=package, got {item!r}")
        if name.strip() in _BUILTIN:
            raise ValueError(f"{PLUGINS_ENV}: {name.strip()!r} is a built-in method")
        found[name.strip()] = package.strip()
    return found


_REGISTERED: dict[str, str] = {**_BUILTIN, **_plugins(os.environ.get(PLUGINS_ENV, ""))}
_LOADED: dict[str, MethodSpec] = {}

# The method a job trains when none is named, and the baseline every report compares with.
DEFAULT = "clam"
BASELINE = "kmeans"


def names() -> tuple[str, ...]:
    """Every registered method's name, in registration order."""
    return tuple(_REGISTERED)


def get(name: str) -> MethodSpec:
    """The spec of ``name``; ValueError listing the known names otherwise."""
    if name not in _REGISTERED:
        raise ValueError(f"unknown method {name!r}; known methods: {list(_REGISTERED)}")
    if name not in _LOADED:
        try:
            spec = importlib.import_module(_REGISTERED[name]).SPEC
        except (ImportError, AttributeError) as exc:  # a plug-in's package (built-ins import)
            raise ValueError(
                f"method {name!r}: its package {_REGISTERED[name]!r} does not import or has no "
                f"SPEC ({exc}); check {PLUGINS_ENV} and PYTHONPATH"
            ) from exc
        if spec.name != name:
            raise RuntimeError(f"{_REGISTERED[name]} registers {spec.name!r}, expected {name!r}")
        _LOADED[name] = spec
    return _LOADED[name]


def register(name: str, package: str) -> None:
    """Register a method that is not built in (a plug-in, or a test's toy method): the
    package exports SPEC. In this process only: for the processes of a Ray job, name it
    in CLAM_DIST_METHODS before Ray starts. Job config classes built before this call do
    not gain its config section."""
    if name in _REGISTERED and _REGISTERED[name] != package:
        raise ValueError(f"method {name!r} is already registered by {_REGISTERED[name]}")
    _REGISTERED[name] = package


def unregister(name: str) -> None:
    """Forget a method registered with :func:`register` (built-in ones stay)."""
    if name in _BUILTIN:
        raise ValueError(f"method {name!r} is built in")
    _REGISTERED.pop(name, None)
    _LOADED.pop(name, None)


def check_name(name: str, where: str, tunable_only: bool = False) -> None:
    """ConfigError naming ``where`` when ``name`` is not a (tunable) method."""
    allowed = [n for n in names() if not tunable_only or get(n).tune is not None]
    if name not in allowed:
        raise ConfigError(f"{where}: expected one of {allowed}, got {name!r}")


def sections() -> dict[str, type]:
    """Each method's own config section by the method's name (``[dcam]``)."""
    return {n: s for n in names() if (s := get(n).section) is not None}


def estimator_class(class_name: str) -> type:
    """The in-memory estimator exported as ``clam_dist.<class_name>``."""
    for n in names():
        ref = get(n).estimator
        if ref.target.rpartition(":")[2] == class_name:
            return ref.load()
    raise AttributeError(f"module 'clam_dist' has no attribute {class_name!r}")


__all__ = [
    "BASELINE", "DEFAULT", "PLUGINS_ENV", "MethodSpec", "check_name", "estimator_class", "get", "names",
    "register", "sections", "unregister",
]  # fmt: skip
