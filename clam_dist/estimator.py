"""scikit-learn compatible in-memory estimators: ``ClAM`` and ``KMeans``.

Parameters are stored untouched in ``__init__``; validation happens in ``fit``; learned
state ends in ``_``. Both share the chunked torch distance kernel of the AM core.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted, check_random_state, validate_data

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


def _seed(random_state) -> int:
    return int(check_random_state(random_state).randint(0, 2**31 - 1))


def _validate_n_clusters(n_clusters, n_samples: int) -> None:
    if (
        not isinstance(n_clusters, (int, np.integer))
        or isinstance(n_clusters, bool)
        or n_clusters < 1
    ):
        raise ValueError(f"n_clusters must be an integer >= 1, got {n_clusters!r}")
    if n_samples < n_clusters:
        raise ValueError(f"n_samples={n_samples} should be >= n_clusters={n_clusters}")


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


class _PrototypeClusterer(ClusterMixin, TransformerMixin, BaseEstimator):
    """Shared predict/transform for estimators whose state is a set of prototypes."""

    def _check_x(self, X, reset: bool) -> np.ndarray:
        # validate_data rejects NaN/inf, non-numeric and empty input with clear messages,
        # and on predict checks the number of features against n_features_in_.
        return validate_data(
            self, X, reset=reset, dtype=[np.float32, np.float64], ensure_min_samples=1
        )

    def _tensor(self, X) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(X, dtype=np.float32))

    def transform(self, X) -> np.ndarray:
        """Euclidean distances to every cluster centre, shape (n_samples, n_clusters)."""
        check_is_fitted(self, "cluster_centers_")
        X = self._check_x(X, reset=False)
        x = self._tensor(X)
        c = self._tensor(self.cluster_centers_)
        if self.metric == "spherical":
            x, c = normalize_rows(x), normalize_rows(c)
        return torch.cdist(x.double(), c.double()).numpy()

    def fit_predict(self, X, y=None) -> np.ndarray:
        return self.fit(X).labels_

    def to_artifact(self, scaler_mean=None, scaler_scale=None, meta: dict | None = None):
        """The fitted model as a ``ModelArtifact`` (save it with ``save_artifact``)."""
        from clam_dist.artifacts import ModelArtifact

        check_is_fitted(self, "cluster_centers_")
        is_clam = isinstance(self, ClAM)
        return ModelArtifact(
            method="clam" if is_clam else "kmeans",
            prototypes=self.cluster_centers_,
            n_features=int(self.n_features_in_),
            beta=self.beta_ if is_clam else 1.0,
            alpha=self.alpha if is_clam else 1.0,
            steps=self.steps if is_clam else 0,
            metric=self.metric,
            scaler_mean=scaler_mean,
            scaler_scale=scaler_scale,
            meta=dict(
                meta or {},
                params={k: v for k, v in self.get_params().items() if k != "random_state"},
            ),
        )


class KMeans(_PrototypeClusterer):
    """k-means in torch: k-means++ seeding, then Lloyd (``algorithm='lloyd'``) or
    mini-batch updates (``algorithm='minibatch'``).

    Lloyd runs ``kmeans_fit``: seeding and the first Lloyd passes on a sample of
    ``sample_per_centroid * n_clusters`` rows (None = all rows), ``n_init`` restarts
    compared on that sample, then Lloyd on all rows until the relative inertia change is
    below ``tol``. ``n_init`` defaults to 1, as scikit-learn's "auto" does for k-means++.
    """

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
        self.random_state = random_state

    def fit(self, X, y=None) -> KMeans:
        X = self._check_x(X, reset=True)
        _validate_n_clusters(self.n_clusters, X.shape[0])
        if self.algorithm not in ("lloyd", "minibatch"):
            raise ValueError(f"algorithm must be 'lloyd' or 'minibatch', got {self.algorithm!r}")
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {self.metric!r}")
        if not isinstance(self.n_init, (int, np.integer)) or self.n_init < 1:
            raise ValueError(f"n_init must be an integer >= 1, got {self.n_init!r}")
        x = self._tensor(X)
        gen = torch.Generator().manual_seed(_seed(self.random_state))
        if self.algorithm == "lloyd":
            best = kmeans_fit(
                x,
                self.n_clusters,
                n_init=int(self.n_init),
                max_iter=self.max_iter,
                tol=self.tol,
                sample_per_centroid=self.sample_per_centroid,
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
    """

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
        _validate_n_clusters(self.n_clusters, X.shape[0])
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

    def score(self, X, y=None) -> float:
        """Negative mean AM energy on X (higher is better)."""
        return -float(self.energy(X).mean())
