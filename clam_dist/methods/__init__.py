"""The method registry: the ONE place that knows clam, kmeans, attention and dcam by name.

Each method registers a :class:`~clam_dist.methods.spec.MethodSpec` in a module of its own
(``clam_dist/methods/<name>.py``): how the distributed trainer trains it, how it is
initialised, how an artifact of it assigns rows, how the pipeline fits it on a sample,
how Ray Tune searches it. The trainer, the pipeline, the predictor, Tune and the CLI ask
the registry and never compare a method's name (``tests/test_method_registry.py`` scans
the package for such comparisons). Adding a fifth method = one new module here plus one
line in ``_BUILTIN`` (docs/design.md, "How to add a method").
"""

from __future__ import annotations

import importlib

from clam_dist.methods.spec import MethodSpec

# name -> module defining SPEC; imported on first use (they pull in torch and friends).
_BUILTIN: dict[str, str] = {
    "clam": "clam_dist.methods.clam",
    "kmeans": "clam_dist.methods.kmeans",
    "attention": "clam_dist.methods.attention",
    "dcam": "clam_dist.methods.dcam",
}
_LOADED: dict[str, MethodSpec] = {}


def names() -> tuple[str, ...]:
    """Every registered method's name, in registration order."""
    return tuple(_BUILTIN)


def get(name: str) -> MethodSpec:
    """The spec of ``name``; ValueError listing the known names otherwise."""
    if name not in _BUILTIN:
        raise ValueError(f"unknown method {name!r}; known methods: {list(_BUILTIN)}")
    if name not in _LOADED:
        spec = importlib.import_module(_BUILTIN[name]).SPEC
        if spec.name != name:
            raise RuntimeError(f"{_BUILTIN[name]} registers {spec.name!r}, expected {name!r}")
        _LOADED[name] = spec
    return _LOADED[name]


def check_name(name: str, where: str, tunable_only: bool = False) -> None:
    """ConfigError naming ``where`` when ``name`` is not a (tunable) method."""
    from clam_dist.config import ConfigError

    allowed = [n for n in names() if not tunable_only or get(n).tune is not None]
    if name not in allowed:
        raise ConfigError(f"{where}: expected one of {allowed}, got {name!r}")


__all__ = ["MethodSpec", "check_name", "get", "names"]
