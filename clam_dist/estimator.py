"""scikit-learn compatible in-memory estimators: ``ClAM`` and ``KMeans``.

Parameters are stored untouched in ``__init__``; validation happens in ``fit``; learned
state ends in ``_``. Both share the chunked torch distance kernel of the AM core.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted, check_random_state

from clam_dist.estimator_base import PrototypeEstimator
from clam_dist.models.am import (
    METRICS,
    assign,
    check_dynamics,
    energy,
    nearest_prototypes,
    normalize_rows,
)
from clam_dist.models.clam import FILL_VALUES, AMParams, MaskSpec
from clam_dist.models.clam_fit import ClAMConfig, fit_clam
from clam_dist.models.kmeans import kmeans_fit, kmeans_plus_plus, minibatch_kmeans

# Up to this many rows ClAM keeps the paper's schedule (15 epochs, batches of 32).
_SMALL_N = 10_000


def _clam_schedule(n: int, k: int, epochs, batch_size, init_restarts) -> dict:
    """ClAM's epochs / batch size / rows per epoch / k-means restarts, from n when None.

    See the ClAM docstring for the rule. Explicit values are kept; rows_per_epoch is only
    bounded when neither epochs nor batch_size was given (an explicit schedule means
    "every row, every epoch").
    """
    small = n <= _SMALL_N
    explicit = epochs is not None or batch_size is not None
    return {
        "epochs": 15 if epochs is None else epochs,
        "batch_size": (32 if small else 1024) if batch_size is None else batch_size,
        "rows_per_epoch": None if small or explicit else min(n, max(_SMALL_N, 64 * k)),
        "kmeans_restarts": (10 if small else 1) if init_restarts is None else init_restarts,
        # Small data: k-means on every row (the paper's protocol); large: a bounded sample.
        "init_per_centroid": None if small else 256,
    }


class _PrototypeClusterer(PrototypeEstimator):
    """Euclidean distances to the prototypes as the transform (KMeans and ClAM)."""

    def transform(self, X) -> np.ndarray:
        """Euclidean distances to every cluster centre, shape (n_samples, n_clusters)."""
        check_is_fitted(self, "cluster_centers_")
        X = self._check_x(X, reset=False)
        x = self._tensor(X)
        c = self._tensor(self.cluster_centers_)
        if self.metric == "spherical":
            x, c = normalize_rows(x), normalize_rows(c)
        return torch.cdist(x.double(), c.double()).numpy()


class KMeans(_PrototypeClusterer):
    """k-means in torch: k-means++ seeding, then Lloyd (``algorithm='lloyd'``) or
    mini-batch updates (``algorithm='minibatch'``).

    Lloyd runs ``kmeans_fit``: seeding and the first Lloyd passes on a sample of
    ``sample_per_centroid * n_clusters`` rows (None = all rows), ``n_init`` restarts
    compared on that sample, then Lloyd on all rows until the relative inertia change is
    below ``tol``. ``n_init`` defaults to 1, as scikit-learn's "auto" does for k-means++.
    Before the sample's Lloyd, rounds of centroid swaps (``models/kmeans_swaps.py``, on
    at most 64 rows per centroid of the sample) move the centroids Lloyd leaves in a local
    minimum (two in one group, one between two): at k = 4,096 on a 1M-row mixture they take the inertia
    below scikit-learn's MiniBatchKMeans (docs/benchmarks.md, "Speed against faiss").

    Parameters
    ----------
    n_clusters : int, default=8
        Number of centroids.
    algorithm : {"lloyd", "minibatch"}, default="lloyd"
        Full-batch Lloyd iterations or mini-batch updates.
    n_init : int, default=1
        Seedings tried; the lowest inertia wins.
    max_iter : int, default=300
        Most Lloyd iterations (or mini-batch epochs).
    tol : float, default=1e-4
        Stop when the relative change of inertia falls below this.
    batch_size : int, default=1024
        Rows per mini-batch update (``algorithm='minibatch'``).
    metric : {"euclidean", "spherical"}, default="euclidean"
        Spherical: rows and centroids compared as unit vectors.
    sample_per_centroid : int or None, default=256
        Seeding and first passes on at most this many rows per centroid; None = all rows.
    swap_rounds : int, default=8
        Most rounds of centroid swaps (``algorithm='lloyd'``, Euclidean metric); 0 gives
        plain Lloyd from the seeds.
    random_state : int, RandomState or None
        Seed of the seeding and sampling.

    Attributes
    ----------
    cluster_centers_ : ndarray of shape (n_clusters, n_features)
    labels_ : ndarray of shape (n_samples,)
        Nearest centroid of each training row.
    inertia_ : float
        Sum of squared distances of the training rows to their centroid.
    n_iter_ : int
        Iterations run.
    n_nonempty_ : int
        Centroids that own at least one training row.
    n_features_in_ : int
    """

    method = "kmeans"

    def __init__(
        self,
        n_clusters: int = 8,
        *,
        algorithm: str = "lloyd",
        n_init: int = 1,
        max_iter: int = 300,
        tol: float = 1e-4,
        batch_size: int = 1024,
        metric: str = "euclidean",
        sample_per_centroid: int | None = 256,
        swap_rounds: int = 8,
        random_state=None,
    ):
        self.n_clusters = n_clusters
        self.algorithm = algorithm
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.batch_size = batch_size
        self.metric = metric
        self.sample_per_centroid = sample_per_centroid
        self.swap_rounds = swap_rounds
        self.random_state = random_state

    def fit(self, X, y=None) -> KMeans:
        X = self._check_x(X, reset=True)
        self._check_n_clusters(X.shape[0])
        if self.algorithm not in ("lloyd", "minibatch"):
            raise ValueError(f"algorithm must be 'lloyd' or 'minibatch', got {self.algorithm!r}")
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {self.metric!r}")
        if not isinstance(self.n_init, (int, np.integer)) or self.n_init < 1:
            raise ValueError(f"n_init must be an integer >= 1, got {self.n_init!r}")
        if not isinstance(self.swap_rounds, (int, np.integer)) or self.swap_rounds < 0:
            raise ValueError(f"swap_rounds must be an integer >= 0, got {self.swap_rounds!r}")
        x = self._tensor(X)
        gen = torch.Generator().manual_seed(self._seed())
        if self.algorithm == "lloyd":
            best = kmeans_fit(
                x,
                self.n_clusters,
                n_init=int(self.n_init),
                max_iter=self.max_iter,
                tol=self.tol,
                sample_per_centroid=self.sample_per_centroid,
                swap_rounds=int(self.swap_rounds),
                generator=gen,
                metric=self.metric,
            )
        else:
            best = None
            for _ in range(self.n_init):
                init = kmeans_plus_plus(x, self.n_clusters, gen, metric=self.metric)
                res = minibatch_kmeans(x, init, self.batch_size, self.max_iter, gen, self.metric)
                if best is None or res.inertia < best.inertia:
                    best = res
        self.cluster_centers_ = best.centers.numpy().astype(X.dtype)
        self.labels_ = best.labels.numpy()
        self.inertia_ = float(best.inertia)
        self.n_iter_ = int(best.n_iter)
        self.n_nonempty_ = int(np.unique(self.labels_).size)
        return self

    def predict(self, X) -> np.ndarray:
        check_is_fitted(self, "cluster_centers_")
        X = self._check_x(X, reset=False)
        _, idx = nearest_prototypes(
            self._tensor(X), self._tensor(self.cluster_centers_), self.metric
        )
        return idx[:, 0].numpy()

    def _artifact_fields(self) -> dict:
        return {"beta": 1.0, "alpha": 1.0, "steps": 0, "metric": self.metric}

    def score(self, X, y=None) -> float:
        """Negative inertia on X (higher is better, as scikit-learn)."""
        check_is_fitted(self, "cluster_centers_")
        X = self._check_x(X, reset=False)
        d2, _ = nearest_prototypes(
            self._tensor(X), self._tensor(self.cluster_centers_), self.metric
        )
        return -float(d2.double().sum())


class ClAM(_PrototypeClusterer):
    """Clustering with Associative Memories (Saha et al., ICML 2023).

    Prototypes are trained end-to-end with the masked pattern-completion loss through T
    unrolled AM steps; a point's cluster is the prototype nearest to where the AM
    dynamics carry it. ``beta=None`` derives the inverse temperature from the data's
    distance scale (``clam_dist.models.clam.beta_from_data``). The estimator does not
    standardise: do it first if features have different units (the paper does).

    ``init="kmeans"`` starts from the best of ``init_restarts`` k-means++ + Lloyd runs (by
    inertia) on at most 256 rows per cluster; ``n_init`` full ClAM restarts are compared
    by their own training loss.

    Defaults chosen from n (the number of rows) when ``epochs``, ``batch_size`` or
    ``init_restarts`` are None: up to 10,000 rows (the paper's data sets) 15 epochs over
    every row in batches of 32 and 10 k-means restarts; above that 15 epochs each over a
    fresh random subset of max(10,000, 64 * n_clusters) rows in batches of 1024 (CPU
    GEMMs need ~1k rows to run near peak) and 1 restart. The prototypes start at k-means
    centroids, so training refines them; a 1M-row fit then costs a small multiple of
    a k-means fit, dominated by the final AM assignment of every row.
    ``score`` is the negative mean AM energy; ``inertia_`` is the k-means inertia of the
    prototypes (squared distance to the nearest one, summed).

    Parameters
    ----------
    n_clusters : int, default=8
        Number of prototypes (memories).
    beta : float or None, default=None
        Inverse temperature of the AM softmax; None derives it from the data.
    alpha : float, default=0.1
        Step size of the AM dynamics, in (0, 1].
    steps : int, default=10
        AM steps T unrolled in training and run at prediction.
    metric : {"euclidean", "spherical"}, default="euclidean"
    mask_ratio : float, default=0.2
        Share of coordinates hidden per row in the pattern-completion loss.
    fill : {"mean", "min", "max", "zero"}, default="mean"
        Value hidden coordinates start from.
    shared_mask_every : int, default=3
        Every this many epochs one mask is shared by the whole batch (0 = never).
    masked : bool, default=True
        False: the unmasked ablation (every coordinate evolves).
    init : {"kmeans", "kmeans++", "gaussian"}, default="kmeans"
        How prototypes start.
    init_restarts : int or None, default=None
        k-means restarts for ``init='kmeans'``; None chooses from n.
    lr : float, default=0.01
        Adam learning rate.
    epochs, batch_size : int or None, default=None
        Training schedule; None chooses from n (see above).
    n_init : int, default=1
        Full ClAM restarts, compared by their training loss.
    random_state : int, RandomState or None

    Attributes
    ----------
    cluster_centers_ : ndarray of shape (n_clusters, n_features)
        The trained prototypes.
    labels_ : ndarray of shape (n_samples,)
        Cluster of each training row (nearest prototype after T AM steps).
    beta_ : float
        The inverse temperature used.
    loss_history_ : list of float
        Training loss per epoch.
    best_epoch_ : int
        Epoch whose prototypes were kept.
    inertia_ : float
        k-means inertia of the prototypes on the training rows.
    n_iter_ : int
        Epochs run.
    n_nonempty_ : int
        Prototypes that own at least one training row.
    n_features_in_ : int
    """

    method = "clam"

    def __init__(
        self,
        n_clusters: int = 8,
        *,
        beta: float | None = None,
        alpha: float = 0.1,
        steps: int = 10,
        metric: str = "euclidean",
        mask_ratio: float = 0.2,
        fill: str = "mean",
        shared_mask_every: int = 3,
        masked: bool = True,
        init: str = "kmeans",
        init_restarts: int | None = None,
        lr: float = 0.01,
        epochs: int | None = None,
        batch_size: int | None = None,
        n_init: int = 1,
        random_state=None,
    ):
        self.n_clusters = n_clusters
        self.beta = beta
        self.alpha = alpha
        self.steps = steps
        self.metric = metric
        self.mask_ratio = mask_ratio
        self.fill = fill
        self.shared_mask_every = shared_mask_every
        self.masked = masked
        self.init = init
        self.init_restarts = init_restarts
        self.lr = lr
        self.epochs = epochs
        self.batch_size = batch_size
        self.n_init = n_init
        self.random_state = random_state

    def _config(self, seed: int, n: int) -> ClAMConfig:
        if self.beta is not None:
            check_dynamics(self.beta, self.alpha, self.steps)
        if self.fill not in FILL_VALUES:
            raise ValueError(f"fill must be one of {FILL_VALUES}, got {self.fill!r}")
        return ClAMConfig(
            n_clusters=int(self.n_clusters),
            am=AMParams(beta=self.beta, alpha=self.alpha, steps=self.steps, metric=self.metric),
            mask=MaskSpec(
                ratio=self.mask_ratio, fill=self.fill, shared_every=self.shared_mask_every
            ),
            masked=bool(self.masked),
            init=self.init,
            lr=self.lr,
            seed=seed,
            **_clam_schedule(
                n, int(self.n_clusters), self.epochs, self.batch_size, self.init_restarts
            ),
        )

    def fit(self, X, y=None) -> ClAM:
        X = self._check_x(X, reset=True)
        self._check_n_clusters(X.shape[0])
        if not isinstance(self.n_init, (int, np.integer)) or self.n_init < 1:
            raise ValueError(f"n_init must be an integer >= 1, got {self.n_init!r}")
        rs = check_random_state(self.random_state)
        best = None
        for _ in range(self.n_init):
            # Restarts are compared by their own training loss: unsupervised selection.
            res = fit_clam(X, self._config(int(rs.randint(0, 2**31 - 1)), X.shape[0]))
            if best is None or min(res.loss_history) < min(best.loss_history):
                best = res
        self.cluster_centers_ = best.prototypes.numpy().astype(X.dtype)
        self.beta_ = float(best.beta)
        self.loss_history_ = list(best.loss_history)
        self.n_iter_ = int(best.n_epochs)
        self.best_epoch_ = int(best.best_epoch)
        # fit_clam's last AM pass already assigned every training row: no second pass.
        self.labels_ = best.labels.numpy() if best.labels is not None else self.predict(X)
        self.n_nonempty_ = int(np.unique(self.labels_).size)
        d2, _ = nearest_prototypes(
            self._tensor(X), self._tensor(self.cluster_centers_), self.metric
        )
        self.inertia_ = float(d2.double().sum())
        return self

    def predict(self, X) -> np.ndarray:
        """Label = nearest prototype after T AM steps from each point."""
        check_is_fitted(self, "cluster_centers_")
        X = self._check_x(X, reset=False)
        labels, _ = assign(
            self._tensor(X),
            self._tensor(self.cluster_centers_),
            self.beta_,
            self.alpha,
            self.steps,
            self.metric,
        )
        return labels.numpy()

    def energy(self, X) -> np.ndarray:
        """AM energy of each row (a novelty score: high = far from every memory)."""
        check_is_fitted(self, "cluster_centers_")
        X = self._check_x(X, reset=False)
        e = energy(self._tensor(X), self._tensor(self.cluster_centers_), self.beta_, self.metric)
        return e.double().numpy()

    def _artifact_fields(self) -> dict:
        return {"beta": self.beta_, "alpha": self.alpha, "steps": self.steps, "metric": self.metric}

    def score(self, X, y=None) -> float:
        """Negative mean AM energy on X (higher is better)."""
        return -float(self.energy(X).mean())
