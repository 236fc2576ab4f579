"""One worker's rows of one step, and their distances to the step's prototypes, measured
once per step (k-means' update and the monitor share them)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from clam_dist.models.am import nearest_and_energy


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
        with torch.no_grad():
            self.nearest_d2, self.nearest_idx, self.energy = nearest_and_energy(
                z, prototypes, beta, metric
            )
