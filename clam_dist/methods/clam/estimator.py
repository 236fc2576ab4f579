"""ClAM in memory (scikit-learn compatible): prototypes trained by masked pattern
completion through T AM steps (``fit.py``), assigned by the AM dynamics."""

from __future__ import annotations

import numpy as np
from sklearn.utils.validation import check_is_fitted, check_random_state

from clam_dist.estimator_base import PrototypeClusterer, quiet_inner_kmeans
from clam_dist.methods.clam import DEFAULTS
from clam_dist.methods.clam.fit import ClAMConfig, fit_clam
from clam_dist.models.am import assign, check_dynamics, energy, nearest_prototypes
from clam_dist.models.clam import FILL_VALUES, AMParams, MaskSpec, beta_from_data

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


class ClAM(PrototypeClusterer):
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

    Attributes
    ----------
    cluster_centers_ : ndarray of shape (n_clusters, n_features)
        The trained prototypes.
    labels_ : ndarray of shape (n_samples,)
        Cluster of each training row (nearest prototype after T AM steps).
    beta_ : float
        The inverse temperature used (two levels: the median of the cells').
    loss_history_ : list of float
        Training loss per epoch (flat fits only).
    best_epoch_ : int
        Epoch whose prototypes were kept (flat fits only).
    inertia_ : float
        k-means inertia of the prototypes on the training rows.
    n_iter_ : int
        Epochs run.
    n_nonempty_ : int
        Prototypes that own at least one training row.
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

    method = "clam"
    _flat_only_attrs = ("loss_history_", "best_epoch_")

    def __init__(
        self,
        n_clusters: int = DEFAULTS.n_clusters,
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
        lr: float = DEFAULTS.lr,
        epochs: int | None = None,
        batch_size: int | None = None,
        n_init: int = 1,
        coarse_clusters: int | None = None,
        nprobe: int | str = "auto",
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
        self.coarse_clusters = coarse_clusters
        self.nprobe = nprobe
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
        two_level = self._begin_fit(X)
        if not isinstance(self.n_init, (int, np.integer)) or self.n_init < 1:
            raise ValueError(f"n_init must be an integer >= 1, got {self.n_init!r}")
        if two_level:
            self._config(0, X.shape[0])  # the dynamics and fill checks, before any work
            return self._fit_two_level(X)
        rs = check_random_state(self.random_state)
        best = None
        for _ in range(self.n_init):
            # Restarts are compared by their own training loss: unsupervised selection.
            with quiet_inner_kmeans():
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
        """Label = nearest prototype after T AM steps from each point (two levels: the
        nearest prototype of the ``nprobe_`` nearest cells, no AM steps)."""
        check_is_fitted(self, "cluster_centers_")
        X = self._check_x(X, reset=False)
        if self._is_two_level():
            return self._predict_two_level(X)
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

    def _after_two_level(self, z, d2, cells) -> None:
        fallback = (
            None
            if cells
            else beta_from_data(self._tensor(z), self._tensor(self.cluster_centers_), self.metric)
        )
        self.beta_ = self._median_of_cells(cells, "beta_", fallback)
        self.inertia_ = float(d2.astype(np.float64).sum())

    def _artifact_fields(self) -> dict:
        return {"beta": self.beta_, "alpha": self.alpha, "steps": self.steps, "metric": self.metric}

    def score(self, X, y=None) -> float:
        """Negative mean AM energy on X (higher is better)."""
        return -float(self.energy(X).mean())
