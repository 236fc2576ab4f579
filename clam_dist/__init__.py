"""clam-dist: distributed clustering with Associative Memories.

In-memory estimators (scikit-learn compatible) are importable from the top level; the
distributed trainer, data plane and assignment pipeline live in subpackages.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["ClAM", "KMeans", "DCAM", "AttentionClustering", "__version__"]


def __getattr__(name: str):
    # Lazy so that `import clam_dist` stays cheap for Ray workers and the CLI.
    if name in ("ClAM", "KMeans"):
        from clam_dist import estimator

        return getattr(estimator, name)
    if name == "DCAM":
        from clam_dist.dcam_estimator import DCAM

        return DCAM
    if name == "AttentionClustering":
        from clam_dist.attention_estimator import AttentionClustering

        return AttentionClustering
    raise AttributeError(f"module 'clam_dist' has no attribute {name!r}")
