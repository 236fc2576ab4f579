"""In-memory ClAM training loop (one process). The distributed trainer runs the same
``clam_loss`` per worker; this loop is what the scikit-learn estimator calls."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from clam_dist.models.am import assign, normalize_rows, set_matmul_precision
from clam_dist.models.clam import (
    AMParams,
    MaskSpec,
    beta_from_data,
    clam_loss,
    draw_mask,
    fill_vector,
)
from clam_dist.models.epochs import EpochStepper
from clam_dist.models.kmeans import kmeans_fit, kmeans_plus_plus

Init = Literal["kmeans", "kmeans++", "gaussian"]


@dataclass
class ClAMConfig:
    """Hyper-parameters of one ClAM fit (defaults chosen on the ClAM-paper data sets)."""

    n_clusters: int = 8
    am: AMParams = field(default_factory=AMParams)
    mask: MaskSpec = field(default_factory=MaskSpec)
    masked: bool = True  # False: the paper's unmasked ablation
    # "kmeans": k-means++ seeding refined by Lloyd, then ClAM training (measured best on
    # the paper data); "kmeans++": seeding only; "gaussian": the authors' random init.
    init: Init = "kmeans"
    lr: float = 0.01
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


def init_prototypes(
    x: torch.Tensor,
    k: int,
    init: Init,
    generator: torch.Generator,
    kmeans_restarts: int = 1,
    per_centroid: int | None = 256,
) -> torch.Tensor:
    """k-means++ seeding (optionally refined by Lloyd), or the authors' Gaussian.

    Seeding and Lloyd run on at most ``per_centroid * k`` rows (``kmeans_fit``'s sample),
    never full-data Lloyd to convergence: at large n the training that follows refines
    the prototypes anyway. When n fits in the sample this is the full k-means it was.
    """
    if init == "kmeans++":
        size = x.shape[0] if per_centroid is None else per_centroid * k
        if size < x.shape[0]:
            rows = torch.randperm(x.shape[0], generator=generator)[:size]
            return kmeans_plus_plus(x[rows], k, generator)
        return kmeans_plus_plus(x, k, generator)
    if init == "kmeans":
        # Best of several k-means++ + Lloyd restarts by inertia: a poor local optimum at
        # the start is rarely escaped by the (slow, local) prototype training.
        with warnings.catch_warnings():
            # Small data sets with many clusters are normal here; no k-means warning.
            warnings.simplefilter("ignore", UserWarning)
            res = kmeans_fit(
                x,
                k,
                n_init=max(1, kmeans_restarts),
                max_iter=100,
                sample_per_centroid=per_centroid,
                full_iter=0,
                # Plain Lloyd starts, no centroid swaps: swaps pull every restart to the
                # same low-inertia start, and ClAM's restarts (selected by Silhouette)
                # then lose their spread: measured on the paper's data sets, ecoli's
                # selected ClAM fell from Silhouette 0.344 / ARI 0.704 to 0.263 / 0.516.
                swap_rounds=0,
                generator=generator,
            )
        return res.centers
    mean, std = x.mean(0), x.std(0) if x.shape[0] > 1 else torch.ones(x.shape[1])
    return mean + std * torch.randn((k, x.shape[1]), generator=generator, dtype=x.dtype)


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


def clam_epochs(
    x: torch.Tensor,
    prototypes: torch.nn.Parameter,
    am: AMParams,
    mask: MaskSpec | None,
    fill: torch.Tensor,
    *,
    lr: float,
    batch_size: int,
    generator: torch.Generator,
    plateau: tuple[float, int] | None = (0.8, 5),
    rows_per_epoch: int | None = None,
) -> EpochStepper:
    """ClAM's epochs (fit_clam and the Tune trial): the masked pattern-completion loss of
    each batch (``mask=None`` or ratio 0: the unmasked ablation), masks drawn from
    ``generator`` batch by batch, shared by the batch on the MaskSpec's epochs. Shared-mask
    epochs are compared only with each other (unless every epoch shares its mask)."""
    d = x.shape[1]
    use_mask = mask is not None and mask.ratio > 0

    def batch_loss(rows: torch.Tensor, epoch: int) -> torch.Tensor:
        m = None
        if use_mask:
            m = draw_mask(rows.shape[0], d, mask.ratio, mask.shared_for_epoch(epoch), generator)
        return clam_loss(rows, prototypes, am.beta, am.alpha, am.steps, am.metric, m, fill)

    def comparable(epoch: int) -> bool:
        return not use_mask or mask.shared_every == 1 or not mask.shared_for_epoch(epoch)

    return EpochStepper(
        [prototypes],
        batch_loss,
        x,
        batch_size=batch_size,
        lr=lr,
        generator=generator,
        snapshot=lambda: prototypes.detach().clone(),
        plateau=plateau,
        rows_per_epoch=rows_per_epoch,
        comparable=comparable,
        name="ClAM",
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

    prototypes = torch.nn.Parameter(protos0.clone().float())
    stepper = clam_epochs(
        x,
        prototypes,
        am,
        config.mask if config.masked else None,
        fill,
        lr=config.lr,
        batch_size=config.batch_size,
        generator=gen,
        plateau=(config.plateau_factor, config.plateau_patience),
        rows_per_epoch=config.rows_per_epoch,
    )
    for _ in range(config.epochs):
        stepper.step()
    history, best_epoch, best = stepper.history, stepper.best_epoch, stepper.best
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
