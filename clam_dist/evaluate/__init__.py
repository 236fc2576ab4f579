"""Metrics at scale for committed assignments, and the PNG/HTML report."""

from __future__ import annotations

__all__ = ["EvalResult", "EvaluateConfig", "run_evaluation"]


def __getattr__(name: str):
    # Lazy: the CLI looks this package up for every command (cli._installed), and its
    # modules import torch and scikit-learn (~3 s), which a refusal must not wait for.
    if name in __all__:
        from clam_dist.evaluate import run

        return getattr(run, name)
    raise AttributeError(f"module 'clam_dist.evaluate' has no attribute {name!r}")
