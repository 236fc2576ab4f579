"""The toy method's hooks and in-memory estimator."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from clam_dist.in_memory_estimator import TrainerEstimator
from clam_dist.methods.base_hooks import BaseHooks
from toy_method import DEFAULTS
from toy_method.objective import ToyObjective


class ToyClustering(TrainerEstimator):
    method = "toy"

    def __init__(
        self,
        n_clusters: int = DEFAULTS.n_clusters,
        *,
        lr: float = DEFAULTS.lr,
        epochs: int = 10,
        batch_size: int = 64,
        random_state=None,
    ):
        super().__init__(
            n_clusters, lr=lr, epochs=epochs, batch_size=batch_size, random_state=random_state
        )


class Hooks(BaseHooks):
    def make_objective(
        self, cfg: Any, init: dict, device: torch.device, sample: np.ndarray | None
    ) -> ToyObjective:
        return ToyObjective(cfg, init, device)

    def make_estimator(self, config: Any) -> ToyClustering:
        m, o = config.model, config.optim
        return ToyClustering(
            m.n_clusters, lr=o.lr, epochs=o.epochs, batch_size=o.batch_size,
            random_state=config.seed,
        )  # fmt: skip
