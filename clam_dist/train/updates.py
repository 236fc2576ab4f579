"""How one step changes the parameters, behind one interface: gradient methods (an
objective of the method registry, Adam, one flat all-reduced gradient) and a method's
own closed-form update (k-means': all-reduced per-centre sums and counts, in its package).
The loop calls the same steps for both and never asks which method runs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch

from clam_dist import methods
from clam_dist.train.batch import Batch
from clam_dist.train.comm import Comm
from clam_dist.train.config import TrainConfig
from clam_dist.train.gradient_update import GradientUpdate
from clam_dist.train.objectives import make_objective


class Update(Protocol):
    beta: float

    def phase(self, epoch: int) -> str: ...

    def begin_epoch(self, epoch: int, comm: Comm, rank: int) -> bool:
        """True when a new phase starts (the parameters are verified again)."""

    def monitoring(self) -> bool:
        """Do the prototypes mean anything yet (not in a phase before them)?"""

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
    """The method's update: its own closed form when its hooks give one (k-means), else
    its registered objective trained by gradient."""
    closed_form = methods.get(cfg.model.method).load_hooks().closed_form_update(cfg, init, device)
    if closed_form is not None:
        return closed_form
    objective = make_objective(cfg, init, device, sample)
    if objective is None:
        raise ValueError(f"method {cfg.model.method!r} gives neither an objective nor an update")
    return GradientUpdate(cfg, objective, total_steps)
