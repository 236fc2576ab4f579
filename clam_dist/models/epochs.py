"""The in-memory epoch loop every gradient method shares: the estimators' fits and the
Tune trials step through the same code, so Tune measures what the estimator trains.

One ``step()`` is one epoch: a seeded permutation of the rows (optionally only its first
``rows_per_epoch``), minibatches, Adam, the epoch's row-weighted mean loss, a stop on a
non-finite loss, reduce-on-plateau, and the parameters of the lowest-loss epoch kept.
The method gives the batch loss and says which epochs are comparable: ClAM's
shared-mask epochs hide the same coordinates in every row, a loss on another scale than
the per-row-mask epochs, so only like is compared with like for the plateau schedule and
the best epoch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


class EpochStepper:
    def __init__(
        self,
        parameters: list[torch.nn.Parameter],
        batch_loss: Callable[[torch.Tensor, int], torch.Tensor],
        x: torch.Tensor,
        *,
        batch_size: int,
        lr: float,
        generator: torch.Generator,
        snapshot: Callable[[], torch.Tensor],
        plateau: tuple[float, int] | None = (0.8, 5),
        rows_per_epoch: int | None = None,
        comparable: Callable[[int], bool] = lambda epoch: True,
        name: str = "training",
    ) -> None:
        """``batch_loss(rows, epoch)`` -> scalar mean loss of the rows; ``snapshot()`` ->
        a detached copy of what "best" keeps; ``plateau`` = (factor, patience) of
        ReduceLROnPlateau or None; ``comparable(epoch)``: does this epoch's loss enter the
        plateau schedule and the best-epoch choice."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        self.x, self.batch_loss, self.snapshot = x, batch_loss, snapshot
        self.batch_size, self.generator, self.name = batch_size, generator, name
        self.rows_per_epoch, self.comparable = rows_per_epoch, comparable
        self.optimizer = torch.optim.Adam(parameters, lr=lr)
        self.scheduler = (
            torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer, factor=plateau[0], patience=plateau[1]
            )
            if plateau is not None
            else None
        )
        self.epoch = 0
        self.history: list[float] = []
        self.best_loss, self.best_epoch, self.best = math.inf, 0, snapshot()

    def step(self) -> float:
        """Train one epoch; returns its mean loss."""
        n = self.x.shape[0]
        perm = torch.randperm(n, generator=self.generator)
        if self.rows_per_epoch is not None:
            perm = perm[: self.rows_per_epoch]
        total = 0.0
        for b0 in range(0, perm.numel(), self.batch_size):
            rows = self.x[perm[b0 : b0 + self.batch_size]]
            loss = self.batch_loss(rows, self.epoch)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += float(loss.detach()) * rows.shape[0]
        epoch_loss = total / max(1, perm.numel())
        if not math.isfinite(epoch_loss):
            raise FloatingPointError(
                f"{self.name} loss became {epoch_loss} at epoch {self.epoch}; lower lr or beta"
            )
        self.history.append(epoch_loss)
        if self.comparable(self.epoch):
            if self.scheduler is not None:
                self.scheduler.step(epoch_loss)
            if epoch_loss < self.best_loss:
                self.best_loss, self.best_epoch = epoch_loss, self.epoch
                self.best = self.snapshot()
        self.epoch += 1
        return epoch_loss
