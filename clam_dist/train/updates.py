"""How one step changes the parameters, behind one interface: gradient methods (an
objective of the method registry, Adam, one flat all-reduced gradient) and k-means'
closed-form update (all-reduced per-centre sums and counts). The loop calls the same
steps for both and never asks which method runs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from clam_dist.train.comm import Comm
from clam_dist.train.config import TrainConfig


@dataclass
class Batch:
    """This worker's rows of one step (standardised) and where the step is."""

    x: torch.Tensor
    ids: np.ndarray
    epoch: int
    step: int  # in the epoch
    global_step: int
    # Squared distance of each row to its nearest prototype and that prototype's index,
    # when the monitor measured them under the step's starting prototypes (k-means' loss
    # is that inertia and its update those assignments: reused, not computed again).
    nearest_d2: torch.Tensor | None = None
    nearest_idx: torch.Tensor | None = None
    energy: torch.Tensor | None = None

    def measure(self, z: torch.Tensor, prototypes: torch.Tensor, beta: float, metric: str) -> None:
        """Fill nearest_d2, nearest_idx and energy of the rows ``z`` (this batch in model
        space) under ``prototypes``, ONCE per step: whoever needs them first (k-means'
        update, else the monitor) measures, the other reads them."""
        if self.nearest_idx is not None:
            return
        from clam_dist.models.am import nearest_and_energy

        with torch.no_grad():
            self.nearest_d2, self.nearest_idx, self.energy = nearest_and_energy(
                z, prototypes, beta, metric
            )


class Update(Protocol):
    beta: float

    def phase(self, epoch: int) -> str: ...

    def begin_epoch(self, epoch: int, comm: Comm, rank: int) -> bool:
        """True when a new phase starts (the parameters are verified again)."""

    def model_space(self, x: torch.Tensor) -> torch.Tensor | None:
        """x where the prototypes live, or None while they mean nothing yet."""

    def prototypes(self) -> torch.Tensor: ...

    def parameters(self) -> torch.Tensor:
        """Every parameter, flat (fingerprints, divergence)."""

    def lr(self) -> float: ...

    def forward_backward(self, batch: Batch, comm: Comm) -> None:
        """Local statistics of this worker's rows (gradients, or sums and counts)."""

    def all_reduce(self, comm: Comm, meanwhile: Callable[[], None] | None = None) -> None:
        """Combine the workers' statistics; ``meanwhile`` runs while that is in flight."""

    def optimizer_step(self, batch: Batch) -> float:
        """Apply the all-reduced update; this worker's share of the step's loss SUM."""

    def end_epoch(self, epoch: int, comm: Comm, rank: int) -> tuple[dict, bool]:
        """(extra epoch metrics, stop now), before the epoch's metrics are reduced."""

    def apply_epoch(self, epoch: int, epoch_loss: float) -> None:
        """Per-epoch updates after the epoch loss is known (Lloyd, reduce-on-plateau)."""

    def finalize(self) -> None: ...

    def artifact_fields(self) -> dict: ...

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict]:
        """(tensors, JSON-able state) for the checkpoint."""

    def load_state_dict(self, tensors: dict[str, torch.Tensor], state: dict) -> None: ...


def make_update(
    cfg: TrainConfig,
    init: dict,
    device: torch.device,
    sample: np.ndarray | None,
    total_steps: int,
) -> Update:
    """The method's update: its registered objective trained by gradient, or k-means'
    closed form when the registry gives no objective."""
    from clam_dist.train.gradient_update import GradientUpdate
    from clam_dist.train.kmeans_update import KMeansUpdate
    from clam_dist.train.objectives import make_objective

    objective = make_objective(cfg, init, device, sample)
    if objective is None:
        return KMeansUpdate(cfg, init, device)
    return GradientUpdate(cfg, objective, total_steps)
