"""What every tuning trial shares, without Ray: the rows it trains and scores on, and the
epoch-by-epoch surface the search steps (a method's trial lives in its package:
``clam_dist/methods/<name>/trial.py``). A trial's optimisation is its in-memory fit's own
epoch stepper, so Tune measures what the estimator trains; it adds a score after every
epoch for the early-stopping scheduler.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from clam_dist.train.in_process import InProcessTrainer


@dataclass(frozen=True)
class TrialData:
    """The rows a trial trains on, the rows its Silhouette is measured on, and the held-out
    rows (with fixed masks) its held-out loss is measured on. Shared by every trial."""

    train: np.ndarray
    score_rows: np.ndarray
    holdout: np.ndarray
    holdout_mask_seed: int = 12345


def split_sample(x: np.ndarray, holdout: float, silhouette_sample: int, seed: int) -> TrialData:
    """Hold out a fraction for the masked loss; Silhouette rows are a fixed subsample of
    the training rows (Silhouette scores a clustering of the data, not a prediction)."""
    x = np.asarray(x, dtype=np.float32)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(x.shape[0])
    n_hold = int(round(holdout * x.shape[0]))
    hold, train = x[perm[:n_hold]], x[perm[n_hold:]]
    m = min(silhouette_sample, train.shape[0])
    score_rows = train[rng.choice(train.shape[0], m, replace=False)]
    return TrialData(train=train, score_rows=score_rows, holdout=hold)


class SteppedTrial:
    """A trial whose epochs are the in-memory trainer's (``self.trainer``: the estimator's
    own loop, the distributed trainer's in this process) and whose scores come from
    ``self.evaluate()`` after every epoch. ``self.initial``: the prototypes it started
    from (what ``best`` is before any epoch was compared)."""

    trainer: InProcessTrainer
    initial: torch.Tensor

    @property
    def epoch(self) -> int:
        return len(self.trainer.epoch_losses)

    @property
    def best(self) -> torch.Tensor:
        """The prototypes of the lowest-loss comparable epoch so far."""
        return self.trainer.kept(self.initial)[0]

    def step(self) -> dict:
        epoch_loss = self.trainer.run_epoch()["epoch_loss"]
        return dict(self.evaluate(), train_loss=epoch_loss, epoch=self.epoch)

    def evaluate(self) -> dict:
        raise NotImplementedError
