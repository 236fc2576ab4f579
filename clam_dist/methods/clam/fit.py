"""ClAM in memory (one process): the initialisation, the distributed trainer's loop run
in this process (``clam_trainer``), and the re-seeding of prototypes that own no row.
What the scikit-learn estimator and the Tune trial call."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from clam_dist.methods.clam import DEFAULTS
from clam_dist.models.am import assign, normalize_rows, set_matmul_precision
from clam_dist.models.clam import (
    AMParams,
    MaskSpec,
    beta_from_data,
    fill_vector,
)
from clam_dist.models.seeding import Init, init_prototypes
from clam_dist.train.in_process import (
    InProcessTrainer,
    fit_config,
    memory_init,
    train_to_the_end,
)
from clam_dist.train.memory_batches import row_chunk_for


@dataclass
class ClAMConfig:
    """Hyper-parameters of one ClAM fit (defaults chosen on the ClAM-paper data sets)."""

    n_clusters: int = DEFAULTS.n_clusters
    am: AMParams = field(default_factory=AMParams)
    mask: MaskSpec = field(default_factory=MaskSpec)
    masked: bool = True  # False: the paper's unmasked ablation
    # "kmeans": k-means++ seeding refined by Lloyd, then ClAM training (measured best on
    # the paper data); "kmeans++": seeding only; "gaussian": the authors' random init.
    init: Init = "kmeans"
    lr: float = DEFAULTS.lr
    epochs: int = 15
    batch_size: int = 32
    plateau_factor: float = 0.8
    plateau_patience: int = 5
    seed: int = 0
    # init="kmeans": best of this many k-means runs by inertia (the estimator uses 10; 1
    # here keeps the Ray Tune stepper, which seeds with one run, identical to this loop).
    kmeans_restarts: int = 1
    # Rows per epoch: None = every row; otherwise each epoch trains on a fresh random
    # subset of this many rows (how the estimator keeps a 1M-row fit a small multiple of
    # a k-means fit: the prototypes start at k-means centroids and need refinement, not
    # many passes over a million rows).
    rows_per_epoch: int | None = None
    # Initialisation (k-means++ seeding and Lloyd) and the beta heuristic see at most this
    # many rows per cluster (kmeans_fit's bound); None = all rows.
    init_per_centroid: int | None = 256

    def __post_init__(self) -> None:
        if not isinstance(self.n_clusters, (int, np.integer)) or self.n_clusters < 1:
            raise ValueError(f"n_clusters must be an integer >= 1, got {self.n_clusters!r}")
        if self.init not in ("kmeans", "kmeans++", "gaussian"):
            raise ValueError(f"init must be 'kmeans', 'kmeans++' or 'gaussian', got {self.init!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if not isinstance(self.kmeans_restarts, (int, np.integer)) or self.kmeans_restarts < 1:
            raise ValueError(
                f"kmeans_restarts must be an integer >= 1, got {self.kmeans_restarts!r}"
            )
        if self.rows_per_epoch is not None and self.rows_per_epoch < 1:
            raise ValueError(f"rows_per_epoch must be >= 1 or None, got {self.rows_per_epoch!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(
                f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}"
            )


@dataclass
class ClAMFitResult:
    prototypes: torch.Tensor  # (k, d) best prototypes (lowest epoch loss)
    beta: float
    loss_history: list[float]
    best_epoch: int
    n_epochs: int
    n_nonempty: int
    n_reseeded: int
    labels: torch.Tensor | None = None  # (n,) AM assignment of the training rows


@torch.no_grad()
def reseed_dead_prototypes(
    x: torch.Tensor,
    prototypes: torch.Tensor,
    am: AMParams,
    generator: torch.Generator,
    return_labels: bool = False,
):
    """Move prototypes that own no point onto the worst-served points.

    "Worst served" = largest squared distance to the prototype the AM dynamics assign
    them to; a dead prototype placed there takes over the far tail of an overloaded
    cluster, so the model returns the k clusters asked for. With ``return_labels`` the
    assignment computed here is returned too (valid when nothing moved), which saves the
    caller another full AM pass over x.
    """
    labels, dist = assign(x, prototypes, am.beta, am.alpha, am.steps, am.metric)
    k = prototypes.shape[0]
    counts = torch.bincount(labels, minlength=k)
    dead = torch.nonzero(counts == 0).flatten()
    if dead.numel() == 0:
        return (prototypes, 0, labels) if return_labels else (prototypes, 0)
    order = torch.argsort(dist, descending=True)
    # Skip points that are alone in their cluster (moving them would kill another).
    movable = order[counts[labels[order]] > 1][: dead.numel()]
    new = prototypes.clone()
    src = x if am.metric == "euclidean" else normalize_rows(x)
    new[dead[: movable.numel()]] = src[movable]
    moved = int(movable.numel())
    return (new, moved, labels) if return_labels else (new, moved)


def clam_trainer(
    x: torch.Tensor,
    prototypes: torch.Tensor,
    am: AMParams,
    mask: MaskSpec | None,
    fill: torch.Tensor,
    *,
    lr: float,
    batch_size: int,
    epochs: int,
    seed: int,
    plateau: tuple[float, int] = (0.8, 5),
    rows_per_epoch: int | None = None,
) -> InProcessTrainer:
    """ClAM's epochs in memory (fit_clam and the Tune trial): the distributed trainer's own
    loop and objective in this process (train/in_process.py), so an in-memory fit trains
    what `clam-dist train` trains. ``mask=None`` or ratio 0: the unmasked ablation. Masks
    are a function of (row, epoch, seed) and shared by the batch on the MaskSpec's epochs;
    the objective keeps the lowest-loss epoch, shared-mask epochs compared only with each
    other (unless every epoch shares its mask)."""
    n, d = x.shape
    use_mask = mask is not None and mask.ratio > 0
    spec = mask or MaskSpec()
    cfg = fit_config(
        "clam",
        seed,
        {
            "model": {
                "n_clusters": int(prototypes.shape[0]),
                "beta": float(am.beta),
                "alpha": am.alpha,
                "steps": am.steps,
                "metric": am.metric,
                "mask_ratio": spec.ratio if use_mask else 0.0,
                "fill": spec.fill,
                "shared_every": spec.shared_every,
            },
            "optim": {
                "lr": lr,
                "epochs": epochs,
                "batch_size": batch_size,
                "schedule": "plateau",
                "plateau_factor": plateau[0],
                "plateau_patience": plateau[1],
            },
        },
    )
    init = memory_init(prototypes.detach().float().numpy(), am.beta, n, fill.detach().numpy())
    per_epoch = 0 if rows_per_epoch is None else math.ceil(rows_per_epoch / batch_size)
    return InProcessTrainer(
        cfg, x.numpy(), init, row_chunk=row_chunk_for(n), steps_per_epoch=per_epoch
    )


def fit_clam(
    x: np.ndarray | torch.Tensor,
    config: ClAMConfig,
    fill_stats: dict | None = None,
    init_prototypes_: torch.Tensor | None = None,
) -> ClAMFitResult:
    """Train ClAM prototypes on an in-memory float matrix (n, d).

    ``fill_stats`` ({'mean','min','max'} arrays) overrides the data's own statistics for
    the mask fill value, so a sample can be trained with global statistics.
    """
    x = torch.as_tensor(
        np.asarray(x, dtype=np.float32) if not torch.is_tensor(x) else x, dtype=torch.float32
    )
    n, d = x.shape
    k = config.n_clusters
    if n < k:
        raise ValueError(f"n_samples={n} should be >= n_clusters={k}")
    set_matmul_precision()
    gen = torch.Generator().manual_seed(int(config.seed))
    protos0 = (
        init_prototypes_
        if init_prototypes_ is not None
        else init_prototypes(
            x, k, config.init, gen, config.kmeans_restarts, config.init_per_centroid
        )
    )
    am = config.am
    if am.beta is None:
        # The median-gap heuristic is a median: a bounded sample of rows estimates it.
        cap = n if config.init_per_centroid is None else config.init_per_centroid * k
        rows = None if cap >= n else torch.randperm(n, generator=gen)[:cap]
        am = am.with_beta(beta_from_data(x if rows is None else x[rows], protos0, am.metric))
    stats = fill_stats or {"mean": x.mean(0), "min": x.min(0).values, "max": x.max(0).values}
    fill = fill_vector(stats.get("mean"), stats.get("min"), stats.get("max"), config.mask.fill, d)

    trainer = clam_trainer(
        x,
        protos0,
        am,
        config.mask if config.masked else None,
        fill,
        lr=config.lr,
        batch_size=config.batch_size,
        epochs=config.epochs,
        seed=int(config.seed),
        plateau=(config.plateau_factor, config.plateau_patience),
        rows_per_epoch=config.rows_per_epoch,
    )
    history = train_to_the_end(trainer)
    best, best_epoch = trainer.kept(protos0.float())
    n_reseeded = 0
    # Re-seed until every prototype owns a point: a moved prototype can still lose its
    # points to the dynamics, so repeat (bounded by k rounds).
    final, labels = best, None
    for _ in range(k):
        final, moved, labels = reseed_dead_prototypes(x, final, am, gen, return_labels=True)
        n_reseeded += moved
        if not moved:
            break
    else:
        labels, _ = assign(x, final, am.beta, am.alpha, am.steps, am.metric)
    n_nonempty = int((torch.bincount(labels, minlength=k) > 0).sum())
    return ClAMFitResult(
        final, float(am.beta), history, best_epoch, config.epochs, n_nonempty, n_reseeded, labels
    )
