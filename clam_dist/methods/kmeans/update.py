"""k-means' closed-form step on the distributed loop: per-centre sums and counts of the
assigned rows, all-reduced in one (k x (d + 1)) buffer, then the mini-batch update (each
centre the running mean of its rows) or, for Lloyd, a sum over the epoch applied at its
end. The math is models/kmeans.py's, shared with the in-memory estimator; the choice of the
two is ``[kmeans] algorithm`` (config.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from clam_dist.train.batch import Batch
from clam_dist.train.comm import Comm

if TYPE_CHECKING:
    from clam_dist.train.config import TrainConfig


class KMeansUpdate:
    def __init__(self, cfg: TrainConfig, init: dict, device: torch.device):
        self.cfg = cfg
        self.beta = float(init["beta"])
        self.protos = torch.tensor(init["prototypes"], dtype=torch.float32, device=device)
        k, d = self.protos.shape
        self.counts = torch.zeros(k, device=device)  # mini-batch: rows ever assigned per centre
        self.lloyd_sums = torch.zeros(k, d, device=device)
        self.lloyd_counts = torch.zeros(k, device=device)
        self._sums_counts: torch.Tensor | None = None

    def phase(self, epoch: int) -> str:
        return "train"

    def begin_epoch(self, epoch: int, comm: Comm, rank: int) -> bool:
        return False

    def monitoring(self) -> bool:
        return True

    def model_space(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def prototypes(self) -> torch.Tensor:
        return self.protos

    def parameters(self) -> torch.Tensor:
        return self.protos

    def lr(self) -> float:
        return self.cfg.optim.lr  # reported for a uniform metrics row; k-means has none

    def forward_backward(self, batch: Batch, comm: Comm) -> None:
        from clam_dist.models.kmeans import batch_sums_counts

        metric = self.cfg.model.metric
        if len(batch.x):
            # The assignments (and the energy the monitor reports) from one distance pass
            # per step: the monitor reads them instead of measuring again.
            batch.measure(batch.x, self.protos, self.beta, metric)
            s, c, _ = batch_sums_counts(batch.x, self.protos, metric, labels=batch.nearest_idx)
        else:
            s, c = torch.zeros_like(self.protos), torch.zeros_like(self.counts)
        self._sums_counts = torch.cat([s, c[:, None]], dim=1)

    def all_reduce(self, comm: Comm, meanwhile: Callable[[], None] | None = None) -> None:
        self._sums_counts = comm.all_reduce(self._sums_counts, kind="step", meanwhile=meanwhile)

    def optimizer_step(self, batch: Batch) -> float:
        from clam_dist.models.kmeans import apply_minibatch

        d = self.protos.shape[1]
        s, c = self._sums_counts[:, :d], self._sums_counts[:, d]
        if self.cfg.kmeans.algorithm == "minibatch":
            new, counts = apply_minibatch(self.protos, self.counts, s, c, self.cfg.model.metric)
            self.protos.copy_(new)
            self.counts.copy_(counts)
        else:
            self.lloyd_sums += s
            self.lloyd_counts += c
        # the inertia of this worker's rows, measured by the monitor before the update
        return float(batch.nearest_d2.double().sum()) if len(batch.x) else 0.0

    def end_epoch(self, epoch: int, comm: Comm, rank: int) -> tuple[dict, bool]:
        return {}, False

    def apply_epoch(self, epoch: int, epoch_loss: float) -> None:
        from clam_dist.models.kmeans import apply_lloyd

        if self.cfg.kmeans.algorithm != "lloyd":
            return
        metric = self.cfg.model.metric
        self.protos.copy_(apply_lloyd(self.protos, self.lloyd_sums, self.lloyd_counts, metric))
        self.lloyd_sums.zero_()
        self.lloyd_counts.zero_()

    def finalize(self) -> None:
        pass

    def artifact_fields(self) -> dict:  # nearest centre, no dynamics
        return {"beta": self.beta, "alpha": 1.0, "steps": 0, "metric": self.cfg.model.metric}

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors = {
            "prototypes": self.protos,
            "kmeans_counts": self.counts,
            "lloyd_sums": self.lloyd_sums,
            "lloyd_counts": self.lloyd_counts,
        }
        return tensors, {"objective": {}}

    def load_state_dict(self, tensors: dict[str, torch.Tensor], state: dict) -> None:
        self.protos.copy_(tensors["prototypes"])
        self.counts.copy_(tensors["kmeans_counts"])
        self.lloyd_sums.copy_(tensors["lloyd_sums"])
        self.lloyd_counts.copy_(tensors["lloyd_counts"])
