"""k-means' hooks: closed-form centre updates on the distributed trainer (``update.py``:
the loop all-reduces per-cluster sums and counts; no objective), nearest-prototype
assignment."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from clam_dist.artifacts import ModelArtifact
from clam_dist.methods.base_hooks import BaseHooks
from clam_dist.methods.kmeans.estimator import KMeans
from clam_dist.methods.kmeans.update import KMeansUpdate
from clam_dist.methods.spec import WarmFit


class Hooks(BaseHooks):
    def make_objective(
        self, cfg: Any, init: dict, device: torch.device, sample: np.ndarray | None
    ) -> None:
        return None  # no gradient: closed_form_update trains k-means

    def closed_form_update(self, cfg: Any, init: dict, device: torch.device) -> KMeansUpdate:
        return KMeansUpdate(cfg, init, device)

    def make_estimator(self, config: Any) -> KMeans:
        m = config.model
        return KMeans(
            n_clusters=m.n_clusters,
            n_init=max(1, config.train.n_init),
            metric=m.metric,
            random_state=config.seed,
            coarse_clusters=m.coarse_clusters,
            nprobe=m.nprobe,
        )

    def estimator_history(self, estimator: Any) -> dict:
        return {}

    def scratch_fit(self, config: Any, z: np.ndarray, seed: int) -> WarmFit:
        """The KMeans estimator (k-means++ on a bounded sample, Lloyd, centroid swaps)."""
        m = config.model
        est = KMeans(n_clusters=m.n_clusters, metric=m.metric, random_state=seed).fit(z)
        return WarmFit(
            prototypes=np.asarray(est.cluster_centers_, np.float32),
            fields={"beta": 1.0, "alpha": 1.0, "steps": 0, "metric": m.metric},
            steps=int(est.n_iter_),
        )

    def warm_fit(
        self, config: Any, z: np.ndarray, parent: ModelArtifact, prototypes: np.ndarray, seed: int
    ) -> WarmFit:
        """Optimiser-free: Lloyd from ``prototypes`` (refresh.kmeans_iterations at most,
        stopping at the estimator's relative tolerance); a loss per iteration (inertia per
        row, for the schedule benchmark)."""
        from clam_dist.models.kmeans import lloyd

        losses: list[tuple[int, float]] = []
        x = torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32))

        def record(iteration: int, inertia: float, *_: Any) -> None:
            losses.append((int(iteration) + 1, float(inertia) / max(1, len(x))))

        result = lloyd(
            x,
            torch.from_numpy(np.asarray(prototypes, np.float32)),
            max_iter=config.refresh.kmeans_iterations,
            metric=parent.metric,
            callback=record,
        )
        return WarmFit(
            prototypes=result.centers.numpy(),
            fields={"beta": parent.beta, "alpha": 1.0, "steps": 0, "metric": parent.metric},
            steps=int(result.n_iter),
            losses=losses,
        )
