"""ClAM's tuning trial: trained epoch by epoch on an in-memory sample with the in-memory
fit's own trainer (``fit.clam_trainer``: k-means init, data-derived beta times the
trial's scale, Adam + reduce-on-plateau, the kept lowest-loss epoch), dead prototypes
re-seeded before scoring."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from clam_dist.methods.clam import DEFAULTS
from clam_dist.methods.clam.fit import clam_trainer, reseed_dead_prototypes
from clam_dist.metrics import silhouette
from clam_dist.models.am import assign
from clam_dist.models.clam import (
    AMParams,
    MaskSpec,
    beta_from_data,
    clam_loss,
    draw_mask,
    fill_vector,
)
from clam_dist.models.seeding import init_prototypes
from clam_dist.tune.trial import SteppedTrial, TrialData


@dataclass(frozen=True)
class TrialParams:
    """The searched knobs of one trial plus the fixed ones it needs."""

    n_clusters: int
    beta_scale: float = 1.0
    lr: float = DEFAULTS.lr
    mask_ratio: float = 0.2
    alpha: float = 0.1
    steps: int = 10
    metric: str = "euclidean"
    fill: str = "mean"
    batch_size: int = 32
    shared_every: int = 3
    plateau_factor: float = 0.8
    plateau_patience: int = 5
    seed: int = 0
    epochs: int = 15  # the most epochs the trial can step (Tune: budget.max_epochs)


class ClAMTrial(SteppedTrial):
    """Train with ``step()`` (one epoch) and read the epoch's metrics from its return."""

    def __init__(self, data: TrialData, params: TrialParams):
        self.data, self.p = data, params
        # A copy: arrays from the object store are read-only.
        self.x = torch.from_numpy(np.array(data.train, dtype=np.float32))
        n, d = self.x.shape
        if n < params.n_clusters:
            raise ValueError(f"{n} training rows, fewer than n_clusters={params.n_clusters}")
        self.gen = torch.Generator().manual_seed(int(params.seed))
        # Same seed -> same init in every trial: differences between trials are the knobs'.
        protos0 = init_prototypes(self.x, params.n_clusters, "kmeans", self.gen)
        self.beta_default = beta_from_data(self.x, protos0, params.metric)
        self.am = AMParams(
            beta=params.beta_scale * self.beta_default,
            alpha=params.alpha,
            steps=params.steps,
            metric=params.metric,
        )
        stats = (self.x.mean(0), self.x.min(0).values, self.x.max(0).values)
        self.fill = fill_vector(*stats, params.fill, d)
        self.initial = protos0.clone()
        self.trainer = clam_trainer(
            self.x,
            protos0,
            self.am,
            MaskSpec(ratio=params.mask_ratio, fill=params.fill, shared_every=params.shared_every),
            self.fill,
            lr=params.lr,
            batch_size=params.batch_size,
            epochs=params.epochs,
            seed=int(params.seed),
            plateau=(params.plateau_factor, params.plateau_patience),
        )
        hold = torch.from_numpy(np.array(data.holdout, dtype=np.float32))
        g = torch.Generator().manual_seed(data.holdout_mask_seed)
        self.holdout = hold
        # Fixed masks: every trial and epoch is scored on the same hidden coordinates.
        self.holdout_mask = (
            draw_mask(hold.shape[0], d, params.mask_ratio, False, g) if hold.shape[0] else None
        )

    @torch.no_grad()
    def final_prototypes(self) -> torch.Tensor:
        """The best-loss prototypes with dead ones re-seeded (what the estimator returns),
        so a configuration is scored at the k that was asked for."""
        protos = self.best
        for _ in range(self.p.n_clusters):
            protos, moved = reseed_dead_prototypes(self.x, protos, self.am, self.gen)
            if not moved:
                break
        return protos

    @property
    def silhouette_metric(self) -> str:
        return self.am.metric

    @property
    def steps(self) -> int:
        return self.am.steps

    @torch.no_grad()
    def predict(self, rows: np.ndarray) -> np.ndarray:
        """Labels of any rows: AM dynamics towards the final prototypes, then nearest."""
        am, x = self.am, torch.from_numpy(np.array(rows, dtype=np.float32))
        return assign(x, self.final_prototypes(), am.beta, am.alpha, am.steps, am.metric)[0].numpy()

    @torch.no_grad()
    def evaluate(self) -> dict:
        am, protos = self.am, self.final_prototypes()
        rows = torch.from_numpy(np.array(self.data.score_rows, dtype=np.float32))
        labels, _ = assign(rows, protos, am.beta, am.alpha, am.steps, am.metric)
        labels = labels.numpy()
        sil = silhouette(rows.numpy(), labels, sample_size=rows.shape[0], metric=am.metric)
        out = {
            "silhouette": float(sil) if np.isfinite(sil) else -1.0,
            "n_nonempty": int(np.unique(labels).size),
            "beta": float(am.beta),
        }
        if self.holdout_mask is not None:
            out["heldout_loss"] = float(
                clam_loss(
                    self.holdout,
                    protos,
                    am.beta,
                    am.alpha,
                    am.steps,
                    am.metric,
                    self.holdout_mask,
                    self.fill,
                )
            )
        return out
