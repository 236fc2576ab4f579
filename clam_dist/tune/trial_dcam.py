"""One DCAM tuning trial without Ray: the autoencoder is pretrained when the trial is built,
then every ``step()`` is one JOINT epoch (the unit of the training job's optim.epochs and
of ASHA here), scored after every epoch.

The optimisation is ``fit_dcam``'s, in the same order of random draws (layer init from
the seed, pretraining, k-means++ + Lloyd on the pretrained latents, beta = scale x
``beta_from_data`` there, joint epochs with latent masks, the reconstruction bound's
selection of a state), plus the training job's reduce-on-plateau schedule (a new one per
phase, as the trainer rebuilds its optimizer), which leaves the first
``plateau_patience`` epochs of each phase unchanged.

Scored on the SELECTED state (the one the estimator and the training job return), with
Silhouette of its labels in the input space: the criterion must compare configurations
whose latent spaces differ (lr, recon_weight, masks and beta all reshape the encoder), and
latent Silhouette rewards a latent space pulled tight around the prototypes whatever the
data's structure. The latent Silhouette is reported beside it (``silhouette_latent``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from clam_dist.metrics import silhouette
from clam_dist.models.clam import MaskSpec, beta_from_data, draw_mask
from clam_dist.models.dcam import DCAMModel, EncoderSpec, dcam_assign, dcam_loss, encode, evaluate
from clam_dist.models.kmeans import kmeans_plus_plus, lloyd
from clam_dist.tune.trial import TrialData

# Adam and its reduce-on-plateau schedule; one pair per phase, as the training job.
OptSched = tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.ReduceLROnPlateau]


@dataclass(frozen=True)
class DCAMParams:
    n_clusters: int
    beta_scale: float = 1.0
    lr: float = 0.01
    mask_ratio: float = 0.2
    alpha: float = 0.1
    steps: int = 10
    recon_weight: float = 1.0
    metric: str = "euclidean"
    fill: str = "mean"
    batch_size: int = 32
    shared_every: int = 3
    encoder: str = "mlp"
    latent_dim: int = 10
    hidden: tuple[int, ...] | None = None  # None: the training job's default
    image_shape: tuple[int, int, int] | None = None
    pretrain_epochs: int = 5
    recon_tolerance: float = 0.10
    recon_bound: str = "select"
    plateau_factor: float = 0.8
    plateau_patience: int = 5
    seed: int = 0


def encoder_spec(p: DCAMParams, n_features: int) -> EncoderSpec:
    """The training job's architecture for the same [dcam] settings (its defaults for
    ``hidden`` included), so the written config trains the network that was scored."""
    hidden = p.hidden or ((128, 64) if p.encoder == "mlp" else (16, 32))
    return EncoderSpec(p.encoder, int(n_features), p.latent_dim, tuple(hidden), p.image_shape)


class DCAMTrial:
    """Pretrains in the constructor; ``step()`` = one joint epoch; ``predict`` labels rows."""

    silhouette_metric = "euclidean"  # input space (see the module docstring)

    def __init__(self, data: TrialData, params: DCAMParams):
        self.data, self.p = data, params
        self.x = torch.from_numpy(np.array(data.train, dtype=np.float32))  # writable copy
        n = self.x.shape[0]
        if n < params.n_clusters:
            raise ValueError(f"{n} training rows, fewer than n_clusters={params.n_clusters}")
        self.steps = params.steps
        self.mask = MaskSpec(
            ratio=params.mask_ratio, fill=params.fill, shared_every=params.shared_every
        )
        spec = encoder_spec(params, self.x.shape[1])
        self.gen = torch.Generator().manual_seed(int(params.seed))
        with torch.random.fork_rng(devices=[]):
            # Layer init draws from the global RNG: seeded locally, as fit_dcam does.
            torch.manual_seed(int(params.seed))
            self.model = DCAMModel(
                spec,
                n_clusters=params.n_clusters,
                alpha=params.alpha,
                steps=params.steps,
                metric=params.metric,
                recon_weight=params.recon_weight,
                fill=params.fill,
            )
        # Phase 1: the autoencoder alone (prototypes do not exist yet).
        pretrain_opt = self._optimizer(self.model.autoencoder.parameters())
        self.pretrain_history = [
            self._epoch("pretrain", i, pretrain_opt) for i in range(params.pretrain_epochs)
        ]
        self._start_joint()

    # -- phases ------------------------------------------------------------------------

    def _optimizer(self, params: Iterable[torch.nn.Parameter]) -> OptSched:
        opt = torch.optim.Adam(params, lr=self.p.lr)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, factor=self.p.plateau_factor, patience=self.p.plateau_patience
        )
        return opt, sched

    def _epoch(self, phase: str, epoch: int, opt_sched: OptSched) -> float:
        """One pass over the training rows; returns the mean batch loss."""
        opt, sched = opt_sched
        x, bs = self.x, self.p.batch_size
        n, latent = x.shape[0], self.model.prototypes.shape[1]
        use_mask = phase == "joint" and self.p.mask_ratio > 0
        shared = self.mask.shared_for_epoch(epoch)
        perm = torch.randperm(n, generator=self.gen)
        total = 0.0
        for b0 in range(0, n, bs):
            xb = x[perm[b0 : b0 + bs]]
            mask = (
                draw_mask(xb.shape[0], latent, self.p.mask_ratio, shared, self.gen)
                if use_mask
                else None
            )
            loss, _ = dcam_loss(self.model, xb, mask, phase)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * xb.shape[0]
        mean = total / n
        if not np.isfinite(mean):
            raise FloatingPointError(f"DCAM {phase} loss became {mean} at epoch {epoch}")
        sched.step(mean)
        return mean

    @torch.no_grad()
    def _start_joint(self) -> None:
        """Prototypes by k-means on the pretrained latents, beta from their scale, the
        reference reconstruction loss, and the start state as the first candidate."""
        p, model = self.p, self.model
        z = encode(model, self.x)
        seeds = kmeans_plus_plus(z, p.n_clusters, self.gen, metric=p.metric)
        protos = lloyd(z, seeds, 100, metric=p.metric).centers
        self.beta_default = beta_from_data(z, protos, p.metric)
        self.beta = p.beta_scale * self.beta_default
        model.prototypes.copy_(protos)
        model.beta = float(self.beta)
        self.recon_pretrained = evaluate(model, self.x, "pretrain")["recon"]
        self.selected = copy.deepcopy(model).eval()
        self.selected_epoch, self.recon_ratio = -1, None
        self.am_history: list[float] = []  # full-sample AM loss: the start, then every epoch
        self.best_am, self.within = self._consider(-1)
        self.joint_opt = self._optimizer(model.parameters())
        self.epoch, self.stopped = 0, False
        hold = torch.from_numpy(np.array(self.data.holdout, dtype=np.float32))
        g = torch.Generator().manual_seed(self.data.holdout_mask_seed)
        self.holdout = hold
        # Fixed latent masks: every trial and epoch is scored on the same hidden coordinates.
        self.holdout_mask = (
            draw_mask(hold.shape[0], p.latent_dim, p.mask_ratio, False, g)
            if hold.shape[0] and p.mask_ratio > 0
            else None
        )

    def _consider(self, epoch: int) -> tuple[float, bool]:
        """The reconstruction bound: keep this state when it is within the bound (or the
        bound is off) and its AM loss is the lowest so far. Returns (its am, within)."""
        ev = evaluate(self.model, self.x, "joint")
        recon_pre = self.recon_pretrained
        ratio = ev["recon"] / recon_pre if recon_pre > 0 else float("inf")
        within = ev["recon"] <= (1.0 + self.p.recon_tolerance) * recon_pre
        if not (np.isfinite(ev["am"]) and np.isfinite(ev["recon"])):
            raise FloatingPointError(f"DCAM loss became non-finite at joint epoch {epoch}")
        self.am_history.append(ev["am"])
        eligible = within or self.p.recon_bound == "none"
        if epoch == -1 or (eligible and ev["am"] < self.best_am):
            self.selected.load_state_dict(self.model.state_dict())
            self.selected_epoch, self.recon_ratio = epoch, ratio
            self.best_am = ev["am"]
        return ev["am"], within

    def step(self) -> dict:
        train_loss = None
        if not self.stopped:  # "stop": the bound was crossed; the selected state stays
            train_loss = self._epoch("joint", self.epoch, self.joint_opt)
            _, within = self._consider(self.epoch)
            self.stopped = self.p.recon_bound == "stop" and not within
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
            "recon_ratio": float(self.recon_ratio),
            "selected_epoch": int(self.selected_epoch),
        }
        if self.holdout.shape[0]:
            # The joint AM loss (decoded evolved latent vs the row) on unseen rows.
            parts = self.selected(self.holdout, self.holdout_mask, "joint")
            out["heldout_loss"] = float(parts["am"])
        return out
