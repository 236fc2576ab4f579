"""k-means' hooks: closed-form centre updates on the distributed trainer (the loop
all-reduces per-cluster sums and counts; no objective), nearest-prototype assignment."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from clam_dist.methods.base_hooks import BaseHooks
from clam_dist.methods.kmeans.estimator import KMeans


class Hooks(BaseHooks):
    def make_objective(
        self, cfg: Any, init: dict, device: torch.device, sample: np.ndarray | None
    ) -> None:
        return None  # the closed-form update (train/kmeans_update.py)

    def fit_on_sample(self, config: Any, z: np.ndarray) -> KMeans:
        m = config.model
        return KMeans(
            n_clusters=m.n_clusters,
            n_init=max(1, config.train.n_init),
            metric=m.metric,
            random_state=config.seed,
        ).fit(z)

    def estimator_history(self, estimator: Any) -> dict:
        return {}
