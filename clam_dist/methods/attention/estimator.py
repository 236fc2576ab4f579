"""scikit-learn style attention-based clustering (in memory). Training: ``model.py``;
scores: clam_dist.models.attention."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted

from clam_dist.estimator_base import PrototypeEstimator
from clam_dist.methods.attention import DEFAULTS
from clam_dist.methods.attention.config import AttentionSection
from clam_dist.methods.attention.model import fit_attention
from clam_dist.models.attention import SCORES, attention_assign, attention_weights, check_beta
from clam_dist.models.clam import beta_from_data
from clam_dist.models.kmeans import kmeans_plus_plus

INITS = ("kmeans++", "random")


class AttentionClustering(PrototypeEstimator):
    """Attention layer with ``n_clusters`` heads whose vectors mu_h are the clusters.

    For a row x the layer outputs sum_h softmax_h(s(x, mu_h)) mu_h with scores
    s = -beta/2 ||x - mu_h||^2 (``similarity='distance'``, one ClAM step with alpha = 1) or
    beta x.mu_h (``similarity='dot'``). Training minimises the reconstruction risk
    E||x - layer(x)||^2 with Adam on minibatches and keeps the heads of the lowest-loss
    epoch; a row's cluster is the head with the highest attention weight.

    init: 'kmeans++' (seeding on the data) or 'random' (distinct random rows).
    beta=None derives the inverse temperature from the initial heads' distance scale.
    The estimator does not standardise: do it first if features have different units.
    ``score_samples`` gives the per-row negative reconstruction error, ``score`` its mean.
    (The score function is named ``similarity``, not ``score``: scikit-learn reserves
    ``score`` for the method, and a parameter of that name would shadow it.)

    Parameters
    ----------
    n_clusters : int, default=8
        Number of heads (clusters).
    similarity : {"distance", "dot"}, default="distance"
        Score between a row and a head.
    beta : float or None, default=None
        Inverse temperature of the attention softmax; None derives it from the data.
    init : {"kmeans++", "random"}, default="kmeans++"
    lr : float, default=0.05
        Adam learning rate.
    epochs : int, default=30
    batch_size : int, default=64
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
        The trained heads mu_h.
    labels_ : ndarray of shape (n_samples,)
        Head with the highest attention weight for each training row.
    beta_ : float
        The inverse temperature used (two levels: the median of the cells').
    loss_history_ : list of float
        Reconstruction risk per epoch (flat fits only).
    best_epoch_ : int
        Epoch whose heads were kept (flat fits only).
    n_iter_ : int
        Epochs run.
    n_nonempty_ : int
        Heads that win at least one training row.
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

    method = "attention"
    _flat_only_attrs = ("loss_history_", "best_epoch_")

    def __init__(
        self,
        n_clusters: int = DEFAULTS.n_clusters,
        *,
        similarity: str = AttentionSection.similarity,
        beta: float | None = None,
        init: str = "kmeans++",
        lr: float = DEFAULTS.lr,
        epochs: int = 30,
        batch_size: int = 64,
        coarse_clusters: int | None = None,
        nprobe: int | str = "auto",
        random_state=None,
    ):
        self.n_clusters = n_clusters
        self.similarity = similarity
        self.beta = beta
        self.init = init
        self.lr = lr
        self.epochs = epochs
        self.batch_size = batch_size
        self.coarse_clusters = coarse_clusters
        self.nprobe = nprobe
        self.random_state = random_state

    def fit(self, X, y=None) -> AttentionClustering:
        X = self._check_x(X, reset=True)
        two_level = self._begin_fit(X)
        if self.similarity not in SCORES:
            raise ValueError(f"similarity must be one of {SCORES}, got {self.similarity!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if self.beta is not None:
            check_beta(self.beta)
        if two_level:
            return self._fit_two_level(X)
        x = self._tensor(X)
        gen = torch.Generator().manual_seed(self._seed())
        k = int(self.n_clusters)
        if self.init == "kmeans++":
            mu0 = kmeans_plus_plus(x, k, gen)
        else:
            mu0 = x[torch.randperm(x.shape[0], generator=gen)[:k]].clone()
        beta = float(self.beta) if self.beta is not None else beta_from_data(x, mu0)
        res = fit_attention(
            x, mu0, beta, self.similarity, self.lr, self.epochs, self.batch_size, gen
        )
        self.cluster_centers_ = res.mu.numpy().astype(X.dtype)
        self.beta_ = res.beta
        self.loss_history_ = res.loss_history
        self.best_epoch_ = res.best_epoch
        self.n_iter_ = len(res.loss_history)
        self.labels_ = self.predict(X)
        self.n_nonempty_ = int(np.unique(self.labels_).size)
        return self

    def predict(self, X) -> np.ndarray:
        """Head with the highest attention weight for each row (two levels: the nearest
        head of the ``nprobe_`` nearest cells)."""
        check_is_fitted(self, "cluster_centers_")
        X = self._check_x(X, reset=False)
        if self._is_two_level():
            return self._predict_two_level(X)
        return attention_assign(
            self._tensor(X), self._tensor(self.cluster_centers_), self.beta_, self.similarity
        ).numpy()

    def transform(self, X) -> np.ndarray:
        """Attention weights over the heads (soft assignment), shape (n_samples, n_clusters)."""
        check_is_fitted(self, "cluster_centers_")
        X = self._check_x(X, reset=False)
        w = attention_weights(
            self._tensor(X).double(),
            self._tensor(self.cluster_centers_).double(),
            self.beta_,
            self.similarity,
        )
        return w.numpy()

    def score_samples(self, X) -> np.ndarray:
        """Negative reconstruction error -||x - layer(x)||^2 of each row (higher = better)."""
        check_is_fitted(self, "cluster_centers_")
        X = self._check_x(X, reset=False)
        mu = self._tensor(self.cluster_centers_).double()
        x = self._tensor(X).double()
        recon = attention_weights(x, mu, self.beta_, self.similarity) @ mu
        return -((x - recon) ** 2).sum(1).numpy()

    def score(self, X, y=None) -> float:
        """Mean of ``score_samples``: minus the reconstruction risk (higher = better)."""
        return float(self.score_samples(X).mean())

    def _after_two_level(self, z, d2, cells) -> None:
        fallback = None
        if not cells:
            fallback = beta_from_data(self._tensor(z), self._tensor(self.cluster_centers_))
        self.beta_ = self._median_of_cells(cells, "beta_", fallback)

    def _artifact_fields(self) -> dict:
        # The distance-score layer is one AM step with alpha = 1; meta['score'] is the
        # similarity, the name the predictor reads.
        return {
            "beta": self.beta_,
            "alpha": 1.0,
            "steps": 1,
            "metric": "euclidean",
            "meta": {"score": self.similarity},
        }
