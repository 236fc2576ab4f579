"""Metrics at scale for committed assignments, and the PNG/HTML report."""

from clam_dist.evaluate.run import EvalResult, EvaluateConfig, run_evaluation

__all__ = ["EvalResult", "EvaluateConfig", "run_evaluation"]
