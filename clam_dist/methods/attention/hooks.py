"""Attention clustering's hooks: k heads whose parameters become the centroids, trained
on reconstruction risk; rows go to the best-scoring head."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from clam_dist.config import ConfigError
from clam_dist.methods.attention.estimator import AttentionClustering
from clam_dist.methods.attention.objective import AttentionObjective
from clam_dist.methods.attention.trial import AttentionParams, AttentionTrial
from clam_dist.methods.base_hooks import BaseHooks
from clam_dist.tune.methods import common_params
from clam_dist.tune.trial import TrialData


class Hooks(BaseHooks):
    def make_objective(
        self, cfg: Any, init: dict, device: torch.device, sample: np.ndarray | None
    ) -> AttentionObjective:
        return AttentionObjective(cfg, init, device)

    def make_estimator(self, config: Any) -> AttentionClustering:
        m, o = config.model, config.optim
        return AttentionClustering(
            n_clusters=m.n_clusters,
            similarity=config.attention.similarity,
            beta=m.beta,
            lr=o.lr,
            epochs=o.epochs,
            batch_size=o.batch_size,
            random_state=config.seed,
            coarse_clusters=m.coarse_clusters,
            nprobe=m.nprobe,
        )

    def trial_params(self, config: Any, k: int, point: dict, seed: int | None) -> AttentionParams:
        return AttentionParams(
            **common_params(config, k, point, seed),
            similarity=str(point["similarity"]),
            epochs=config.budget.max_epochs,
        )

    def make_trial(self, data: TrialData, params: AttentionParams) -> AttentionTrial:
        return AttentionTrial(data, params)

    def model_sections(self, config: Any, k: int, point: dict, final: dict) -> dict:
        # Absolute beta (input space, standardised: the training job's data-derived beta
        # on its own k-means init is close to the trials'); alpha/steps/mask do not apply.
        model = {
            "method": config.model.method,
            "n_clusters": k,
            "init": "kmeans",
            "beta": float(final["beta"]),
            "metric": "euclidean",
        }
        return {"model": model, "attention": {"similarity": point["similarity"]}}

    def check_tune_job(self, config: Any) -> None:
        if config.model.metric != "euclidean":
            raise ConfigError(
                f"model.metric={config.model.metric!r} does not apply to "
                f"model.method={config.model.method}: its score function is "
                "search.similarity (distance or dot)"
            )
