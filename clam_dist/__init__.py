"""clam-dist: distributed clustering with Associative Memories.

In-memory estimators (scikit-learn compatible) are importable from the top level; the
distributed trainer, data plane and assignment pipeline live in subpackages.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["ClAM", "KMeans", "DCAM", "AttentionClustering", "__version__"]


def __getattr__(name: str):
    # Lazy so that `import clam_dist` stays cheap for Ray workers and the CLI.
    if name in __all__:  # each estimator is its method's (clam_dist/methods/<name>/)
        from clam_dist import methods

        return methods.estimator_class(name)
    raise AttributeError(f"module 'clam_dist' has no attribute {name!r}")
