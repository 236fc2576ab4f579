"""scikit-learn style attention-based clustering (in memory). Math: clam_dist.models.attention."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted, check_random_state, validate_data

from clam_dist.dcam_estimator import check_n_clusters
from clam_dist.models.attention import (
    SCORES,
    attention_assign,
    attention_weights,
    check_beta,
    fit_attention,
)
from clam_dist.models.clam import beta_from_data
from clam_dist.models.kmeans import kmeans_plus_plus

INITS = ("kmeans++", "random")


class AttentionClustering(ClusterMixin, TransformerMixin, BaseEstimator):
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
    """

    def __init__(
        self,
        n_clusters: int = 8,
        *,
        similarity: str = "distance",
        beta: float | None = None,
        init: str = "kmeans++",
        lr: float = 0.05,
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

    def _check_x(self, X, reset: bool) -> np.ndarray:
        return validate_data(
            self, X, reset=reset, dtype=[np.float32, np.float64], ensure_min_samples=1
        )

    @staticmethod
    def _tensor(X) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(X, dtype=np.float32))

    def fit(self, X, y=None) -> AttentionClustering:
        X = self._check_x(X, reset=True)
        check_n_clusters(self.n_clusters, X.shape[0])
        if self.similarity not in SCORES:
            raise ValueError(f"similarity must be one of {SCORES}, got {self.similarity!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if self.beta is not None:
            check_beta(self.beta)
        x = self._tensor(X)
        gen = torch.Generator().manual_seed(
            int(check_random_state(self.random_state).randint(0, 2**31 - 1))
        )
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

    def fit_predict(self, X, y=None) -> np.ndarray:
        return self.fit(X).labels_

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

    def to_artifact(self, scaler_mean=None, scaler_scale=None, meta: dict | None = None):
        """The fitted heads as a ``ModelArtifact`` (method 'attention'; meta['score'] is
        the ``similarity``, the name the predictor reads)."""
        from clam_dist.artifacts import ModelArtifact

        check_is_fitted(self, "cluster_centers_")
        return ModelArtifact(
            method="attention",
            prototypes=self.cluster_centers_,
            n_features=int(self.n_features_in_),
            beta=self.beta_,
            alpha=1.0,  # the distance-score layer is one AM step with alpha = 1
            steps=1,
            metric="euclidean",
            scaler_mean=scaler_mean,
            scaler_scale=scaler_scale,
            meta=dict(
                meta or {},
                score=self.similarity,
                params={k: v for k, v in self.get_params().items() if k != "random_state"},
            ),
        )
