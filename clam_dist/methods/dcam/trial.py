"""One DCAM tuning trial without Ray: the autoencoder is pretrained when the trial is built,
then every ``step()`` is one JOINT epoch (the unit of the training job's optim.epochs and
of ASHA here), scored after every epoch.

The optimisation is ``fit_dcam``'s own ``DCAMTraining``: the training job's Trainer and
``DCAMObjective`` in this process (layer init from the seed, pretraining, k-means++ +
Lloyd on the pretrained latents, beta = scale x ``beta_from_data`` there, joint epochs
with latent masks, reduce-on-plateau per phase, the reconstruction bound's selection of a
state), so the trial measures what the estimator and the training job train.

Scored on the SELECTED state (the one the estimator and the training job return), with
Silhouette of its labels in the input space: the criterion must compare configurations
whose latent spaces differ (lr, recon_weight, masks and beta all reshape the encoder), and
latent Silhouette rewards a latent space pulled tight around the prototypes whatever the
data's structure. The latent Silhouette is reported beside it (``silhouette_latent``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from clam_dist.methods.dcam import DEFAULTS
from clam_dist.methods.dcam.config import DCAMSection, default_hidden
from clam_dist.methods.dcam.model import (
    DCAMConfig,
    DCAMModel,
    DCAMTraining,
    EncoderSpec,
    dcam_assign,
    encode,
)
from clam_dist.metrics import silhouette
from clam_dist.models.clam import MaskSpec, draw_mask
from clam_dist.tune.trial import TrialData


@dataclass(frozen=True)
class DCAMParams:
    n_clusters: int
    beta_scale: float = 1.0
    lr: float = DEFAULTS.lr
    mask_ratio: float = 0.2
    alpha: float = 0.1
    steps: int = 10
    recon_weight: float = DCAMSection.recon_weight
    metric: str = "euclidean"
    fill: str = "mean"
    batch_size: int = 32
    shared_every: int = 3
    encoder: str = DCAMSection.encoder
    latent_dim: int = DCAMSection.latent_dim
    hidden: tuple[int, ...] | None = None  # None: the training job's default
    image_shape: tuple[int, int, int] | None = None
    pretrain_epochs: int = DCAMSection.pretrain_epochs
    recon_tolerance: float = DCAMSection.recon_tolerance
    recon_bound: str = DCAMSection.recon_bound
    plateau_factor: float = 0.8
    plateau_patience: int = 5
    epochs: int = 15  # the most joint epochs the trial can step (Tune: budget.max_epochs)
    seed: int = 0


def encoder_spec(p: DCAMParams, n_features: int) -> EncoderSpec:
    """The training job's architecture for the same [dcam] settings (its defaults for
    ``hidden`` included), so the written config trains the network that was scored."""
    hidden = p.hidden or default_hidden(p.encoder)
    return EncoderSpec(p.encoder, int(n_features), p.latent_dim, tuple(hidden), p.image_shape)


class DCAMTrial:
    """Pretrains in the constructor; ``step()`` = one joint epoch; ``predict`` labels rows.
    The epochs are ``DCAMTraining``, the estimator's own (``fit_dcam``)."""

    silhouette_metric = "euclidean"  # input space (see the module docstring)

    def __init__(self, data: TrialData, params: DCAMParams):
        self.data, self.p = data, params
        x = torch.from_numpy(np.array(data.train, dtype=np.float32))  # writable copy
        n = x.shape[0]
        if n < params.n_clusters:
            raise ValueError(f"{n} training rows, fewer than n_clusters={params.n_clusters}")
        self.steps = params.steps
        config = DCAMConfig(
            spec=encoder_spec(params, x.shape[1]),
            n_clusters=params.n_clusters,
            alpha=params.alpha,
            steps=params.steps,
            metric=params.metric,
            mask=MaskSpec(
                ratio=params.mask_ratio, fill=params.fill, shared_every=params.shared_every
            ),
            pretrain_epochs=params.pretrain_epochs,
            epochs=params.epochs,
            batch_size=params.batch_size,
            lr=params.lr,
            recon_weight=params.recon_weight,
            recon_tolerance=params.recon_tolerance,
            recon_bound=params.recon_bound,
            plateau_factor=params.plateau_factor,
            plateau_patience=params.plateau_patience,
            seed=params.seed,
        )
        self.training = DCAMTraining(x, config, beta_scale=params.beta_scale)
        self.training.pretrain()
        self.beta = self.training.start_joint()
        self.beta_default = self.training.objective.beta_default
        self.epoch = 0
        self._selected: tuple[int, DCAMModel] | None = None
        hold = torch.from_numpy(np.array(data.holdout, dtype=np.float32))
        g = torch.Generator().manual_seed(data.holdout_mask_seed)
        self.holdout = hold
        # Fixed latent masks: every trial and epoch is scored on the same hidden coordinates.
        self.holdout_mask = (
            draw_mask(hold.shape[0], params.latent_dim, params.mask_ratio, False, g)
            if hold.shape[0] and params.mask_ratio > 0
            else None
        )

    @property
    def pretrain_history(self) -> list[float]:
        return self.training.pretrain_history

    @property
    def am_history(self) -> list[float]:
        """Full-sample AM loss: the start of the joint phase, then every epoch."""
        return [h["am"] for h in self.training.history]

    @property
    def selected(self) -> DCAMModel:
        """The state the bound selected (a copy, rebuilt only when the selection moves)."""
        best = self.training.best_epoch
        if self._selected is None or self._selected[0] != best:
            self._selected = (best, self.training.selected_model())
        return self._selected[1]

    def step(self) -> dict:
        # None once the phase has ended ("stop" crossed the bound, or the trial's epochs
        # are spent): the selection stays.
        train_loss = self.training.joint_step()
        self.epoch += 1
        return dict(self.evaluate(), train_loss=train_loss, epoch=self.epoch)

    # -- scores ------------------------------------------------------------------------

    @torch.no_grad()
    def predict(self, rows: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.array(rows, dtype=np.float32))
        return dcam_assign(self.selected, x)[0].numpy()

    @torch.no_grad()
    def evaluate(self) -> dict:
        rows = np.asarray(self.data.score_rows, dtype=np.float32)
        labels = self.predict(rows)
        z = encode(self.selected, torch.from_numpy(rows.copy())).numpy()
        sil = silhouette(rows, labels, sample_size=rows.shape[0], metric="euclidean")
        sil_z = silhouette(z, labels, sample_size=rows.shape[0], metric=self.p.metric)
        out = {
            "silhouette": float(sil) if np.isfinite(sil) else -1.0,
            "silhouette_latent": float(sil_z) if np.isfinite(sil_z) else -1.0,
            "n_nonempty": int(np.unique(labels).size),
            "beta": float(self.beta),
            "recon_ratio": float(self.training.selected_record["recon_ratio"]),
            "selected_epoch": int(self.training.best_epoch),
        }
        if self.holdout.shape[0]:
            # The joint AM loss (decoded evolved latent vs the row) on unseen rows.
            parts = self.selected(self.holdout, self.holdout_mask, "joint")
            out["heldout_loss"] = float(parts["am"])
        return out
