"""One attention-clustering tuning trial without Ray: k heads trained epoch by epoch on the
reconstruction risk, scored after every epoch so ASHA can cut it short.

The optimisation is ``fit_attention``'s own trainer (``attention_trainer``, the distributed
loop in this process: Adam on
shuffled minibatches, reduce-on-plateau, the heads of the lowest-loss epoch kept) started
the way the training job starts it (k-means++ refined by Lloyd, beta = scale x
``beta_from_data`` on those heads).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from clam_dist.methods.attention import DEFAULTS
from clam_dist.methods.attention.config import AttentionSection
from clam_dist.methods.attention.model import (
    AttentionLayer,
    attention_loss,
    attention_trainer,
    seed_from,
)
from clam_dist.metrics import silhouette
from clam_dist.models.attention import attention_assign
from clam_dist.models.clam import beta_from_data
from clam_dist.models.seeding import init_prototypes
from clam_dist.tune.trial import SteppedTrial, TrialData


@dataclass(frozen=True)
class AttentionParams:
    n_clusters: int
    beta_scale: float = 1.0
    lr: float = DEFAULTS.lr
    similarity: str = AttentionSection.similarity
    batch_size: int = 32
    plateau_factor: float = 0.8
    plateau_patience: int = 5
    seed: int = 0
    epochs: int = 15  # the most epochs the trial can step (Tune: budget.max_epochs)


class AttentionTrial(SteppedTrial):
    """Train with ``step()`` (one epoch); labels of any rows with ``predict``."""

    silhouette_metric = "euclidean"  # scores live in the input space
    steps = None  # no AM iteration count to write: the layer is one step

    def __init__(self, data: TrialData, params: AttentionParams):
        self.data, self.p = data, params
        self.x = torch.from_numpy(np.array(data.train, dtype=np.float32))  # writable copy
        if self.x.shape[0] < params.n_clusters:
            raise ValueError(
                f"{self.x.shape[0]} training rows, fewer than n_clusters={params.n_clusters}"
            )
        self.gen = torch.Generator().manual_seed(int(params.seed))
        # Same seed -> same heads at the start of every trial: trials differ in their knobs.
        mu0 = init_prototypes(self.x, params.n_clusters, "kmeans", self.gen)
        self.beta_default = beta_from_data(self.x, mu0, "euclidean")
        self.beta = params.beta_scale * self.beta_default
        self.initial = mu0.clone()
        self.trainer = attention_trainer(
            self.x,
            mu0,
            self.beta,
            params.similarity,
            lr=params.lr,
            batch_size=params.batch_size,
            epochs=params.epochs,
            seed=seed_from(self.gen),
            plateau=(params.plateau_factor, params.plateau_patience),
        )
        self.holdout = torch.from_numpy(np.array(data.holdout, dtype=np.float32))

    @torch.no_grad()
    def predict(self, rows: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.array(rows, dtype=np.float32))
        return attention_assign(x, self.best, self.beta, self.p.similarity).numpy()

    @torch.no_grad()
    def evaluate(self) -> dict:
        labels = self.predict(self.data.score_rows)
        rows = np.asarray(self.data.score_rows, dtype=np.float32)
        sil = silhouette(rows, labels, sample_size=rows.shape[0], metric="euclidean")
        out = {
            "silhouette": float(sil) if np.isfinite(sil) else -1.0,
            "n_nonempty": int(np.unique(labels).size),
            "beta": float(self.beta),
        }
        if self.holdout.shape[0]:
            # The reconstruction risk of the kept heads on rows they never trained on.
            layer = AttentionLayer(self.best, self.beta, self.p.similarity)
            out["heldout_loss"] = float(attention_loss(layer, self.holdout))
        return out
