"""k-means in memory (scikit-learn compatible): the baseline every comparison runs."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted

from clam_dist.estimator_base import PrototypeClusterer, quiet_inner_kmeans
from clam_dist.methods.kmeans import DEFAULTS
from clam_dist.models.am import METRICS, nearest_prototypes
from clam_dist.models.kmeans import kmeans_fit, kmeans_plus_plus, minibatch_kmeans


class KMeans(PrototypeClusterer):
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
    coarse_clusters : int or None, default=None
        Two levels when set (large k): a coarse k-means with this many cells, then
        ``n_clusters`` fine prototypes fitted inside the cells by this estimator with
        ``n_clusters`` = the cell's share (proportional to its rows). Labels are then the
        nearest fine prototype among the ``nprobe`` nearest cells' (whatever the flat
        rule). In [1, n_clusters].
    nprobe : "auto", "exact" or int, default="auto"
        Cells searched per row by a two-level model: "auto" the smallest measured nprobe
        whose labels agree with the exact search on 99% of held-out rows, "exact" every
        prototype, an integer that many cells. Unused when ``coarse_clusters`` is None.
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
    coarse_centers_ : ndarray of shape (coarse_clusters, n_features)
        Two-level fits only: the coarse cells' centres.
    cell_of_fine_ : ndarray of shape (n_clusters,)
        Two-level fits only: the cell of each prototype (prototypes are grouped by cell).
    cell_offsets_ : ndarray of shape (coarse_clusters + 1,)
        Two-level fits only: cell c's prototypes are rows cell_offsets_[c]:[c + 1].
    agreement_curve_ : list of dict
        Two-level fits only: per nprobe, the share of held-out rows (a tenth, at most
        10,000, left out of the fit) labelled as the exact search labels them, and the
        rows per second.
    nprobe_ : int or "exact"
        Two-level fits only: the resolved ``nprobe``.
    """

    method = "kmeans"

    def __init__(
        self,
        n_clusters: int = DEFAULTS.n_clusters,
        *,
        algorithm: str = "lloyd",
        n_init: int = 1,
        max_iter: int = 300,
        tol: float = 1e-4,
        batch_size: int = 1024,
        metric: str = "euclidean",
        sample_per_centroid: int | None = 256,
        swap_rounds: int = 8,
        coarse_clusters: int | None = None,
        nprobe: int | str = "auto",
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
        self.coarse_clusters = coarse_clusters
        self.nprobe = nprobe
        self.random_state = random_state

    def fit(self, X, y=None) -> KMeans:
        X = self._check_x(X, reset=True)
        two_level = self._begin_fit(X)
        if self.algorithm not in ("lloyd", "minibatch"):
            raise ValueError(f"algorithm must be 'lloyd' or 'minibatch', got {self.algorithm!r}")
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {self.metric!r}")
        if not isinstance(self.n_init, (int, np.integer)) or self.n_init < 1:
            raise ValueError(f"n_init must be an integer >= 1, got {self.n_init!r}")
        if not isinstance(self.swap_rounds, (int, np.integer)) or self.swap_rounds < 0:
            raise ValueError(f"swap_rounds must be an integer >= 0, got {self.swap_rounds!r}")
        if two_level:
            return self._fit_two_level(X)
        x = self._tensor(X)
        gen = torch.Generator().manual_seed(self._seed())
        if self.algorithm == "lloyd":
            with quiet_inner_kmeans():
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
        if self._is_two_level():
            return self._predict_two_level(X)
        _, idx = nearest_prototypes(
            self._tensor(X), self._tensor(self.cluster_centers_), self.metric
        )
        return idx[:, 0].numpy()

    def _after_two_level(self, z, d2, cells) -> None:
        self.inertia_ = float(d2.astype(np.float64).sum())

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
