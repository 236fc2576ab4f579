"""ClAM's objective on the trainer: masked pattern completion through T AM steps."""

from __future__ import annotations

import torch
from torch import nn

from clam_dist.models.clam import clam_loss
from clam_dist.train.config import TrainConfig
from clam_dist.train.objectives import Objective


class _Prototypes(nn.Module):
    def __init__(self, prototypes: torch.Tensor):
        super().__init__()
        self.prototypes = nn.Parameter(prototypes.detach().clone().float())


class ClAMObjective(Objective):
    """Masked pattern completion by AM dynamics (docs/design.md), the ClAM paper's loss."""

    method = "clam"

    def __init__(self, cfg: TrainConfig, init: dict, device: torch.device):
        super().__init__(cfg, init)
        self.module = _Prototypes(torch.tensor(init["prototypes"])).to(device)
        self.fill = torch.tensor(init["fill"], dtype=torch.float32, device=device)

    def mask_width(self, epoch: int) -> int | None:
        return int(self.module.prototypes.shape[1]) if self.cfg.model.mask_ratio > 0 else None

    def mean_loss(self, x, mask, context, epoch):
        m = self.cfg.model
        return clam_loss(
            x, self.module.prototypes, self.beta, m.alpha, m.steps, m.metric, mask, self.fill
        )

    def artifact_fields(self) -> dict:
        m = self.cfg.model
        return {"beta": self.beta, "alpha": m.alpha, "steps": m.steps, "metric": m.metric}
