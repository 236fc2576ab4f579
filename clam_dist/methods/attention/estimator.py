"""scikit-learn style attention-based clustering (in memory). Training: ``model.py``;
scores: clam_dist.models.attention."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted

from clam_dist.estimator_base import PrototypeEstimator
from clam_dist.methods.attention import DEFAULTS
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
    random_state : int, RandomState or None

    Attributes
    ----------
    cluster_centers_ : ndarray of shape (n_clusters, n_features)
        The trained heads mu_h.
    labels_ : ndarray of shape (n_samples,)
        Head with the highest attention weight for each training row.
    beta_ : float
    loss_history_ : list of float
        Reconstruction risk per epoch.
    best_epoch_ : int
        Epoch whose heads were kept.
    n_iter_ : int
        Epochs run.
    n_nonempty_ : int
        Heads that win at least one training row.
    n_features_in_ : int
    """

    method = "attention"

    def __init__(
        self,
        n_clusters: int = DEFAULTS.n_clusters,
        *,
        similarity: str = "distance",
        beta: float | None = None,
        init: str = "kmeans++",
        lr: float = DEFAULTS.lr,
        epochs: int = 30,
        batch_size: int = 64,
        random_state=None,
    ):
        self.n_clusters = n_clusters
        self.similarity = similarity
        self.beta = beta
        self.init = init
        self.lr = lr
        self.epochs = epochs
        self.batch_size = batch_size
        self.random_state = random_state

    def fit(self, X, y=None) -> AttentionClustering:
        X = self._check_x(X, reset=True)
        self._check_n_clusters(X.shape[0])
        if self.similarity not in SCORES:
            raise ValueError(f"similarity must be one of {SCORES}, got {self.similarity!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if self.beta is not None:
            check_beta(self.beta)
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
        """Head with the highest attention weight for each row."""
        check_is_fitted(self, "cluster_centers_")
        X = self._check_x(X, reset=False)
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
