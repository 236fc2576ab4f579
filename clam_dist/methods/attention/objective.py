"""Attention clustering's objective on the trainer: the reconstruction risk of k heads."""

from __future__ import annotations

import torch

from clam_dist.methods.attention.model import AttentionLayer, attention_loss
from clam_dist.train.config import TrainConfig
from clam_dist.train.objectives import Objective


class AttentionObjective(Objective):
    """k attention heads whose vectors are the clusters; reconstruction risk
    E||x - layer(x)||^2 (the attention-clustering paper's objective)."""

    method = "attention"

    def __init__(self, cfg: TrainConfig, init: dict, device: torch.device):
        super().__init__(cfg, init)
        self.module = AttentionLayer(
            torch.tensor(init["prototypes"]), self.beta, cfg.attention.similarity
        ).to(device)

    def prototypes(self) -> torch.Tensor:
        return self.module.mu.detach()

    def mean_loss(self, x, mask, context, epoch):
        return attention_loss(self.module, x)

    def artifact_fields(self) -> dict:
        # The distance-score layer is one AM step with alpha = 1 (what the predictor runs).
        return {
            "beta": self.beta,
            "alpha": 1.0,
            "steps": 1,
            "metric": "euclidean",
            "meta": {"score": self.cfg.attention.similarity},
        }
