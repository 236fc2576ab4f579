"""The promotion gate: a challenger replaces the champion only if it beats it on rows of
the new partition that neither was trained on, by a stated margin."""

from __future__ import annotations

import numpy as np

from clam_dist.artifacts import ModelArtifact
from clam_dist.models.predictor import ClusterPredictor
from clam_dist.registry.config import GateSection


def score(artifact: ModelArtifact, x: np.ndarray, metric: str, seed: int) -> float:
    """inertia: mean squared distance of a row to its assigned prototype in the model's
    space (lower is better); silhouette: on the same rows, in that space (higher)."""
    predictor = ClusterPredictor.from_artifact(artifact)
    out = predictor.predict(x, ())
    if metric == "inertia":
        return float(np.mean(out["distance"], dtype=np.float64))
    from clam_dist.metrics import silhouette

    z = predictor.to_model_space(x).cpu().numpy()
    return float(silhouette(z, out["cluster"], seed=seed))


def decide(
    champion: ModelArtifact, challenger: ModelArtifact, x: np.ndarray, settings: GateSection,
    seed: int,
) -> dict:  # fmt: skip
    """The gate's numbers and verdict (``passed``)."""
    before = score(champion, x, settings.metric, seed)
    after = score(challenger, x, settings.metric, seed)
    if settings.metric == "inertia":
        passed = after <= before * (1.0 - settings.margin)
        rule = f"challenger <= champion x (1 - {settings.margin})"
    else:
        passed = after >= before + settings.margin
        rule = f"challenger >= champion + {settings.margin}"
    return {
        "metric": settings.metric,
        "champion": before,
        "challenger": after,
        "margin": settings.margin,
        "rule": rule,
        "holdout_rows": int(len(x)),
        "passed": bool(passed),
    }
