"""What every in-memory estimator (KMeans, ClAM, AttentionClustering, DCAM) shares: input
checks, the n_clusters check, seeding, fit_predict and ``to_artifact`` with one signature.

A subclass sets ``method`` (its registry name), implements ``fit``/``predict`` and
``_artifact_fields`` (beta, alpha, steps, metric and any extra tensors or meta of its
model); the base turns that into a ``ModelArtifact`` the predictor and the pipeline read.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted, check_random_state, validate_data

from clam_dist.models.am import normalize_rows


def check_n_clusters(n_clusters, n_samples: int) -> None:
    """n_clusters is an integer in [1, n_samples] (scikit-learn's wording)."""
    if (
        not isinstance(n_clusters, (int, np.integer))
        or isinstance(n_clusters, bool)
        or n_clusters < 1
    ):
        raise ValueError(f"n_clusters must be an integer >= 1, got {n_clusters!r}")
    if n_samples < n_clusters:
        raise ValueError(f"n_samples={n_samples} should be >= n_clusters={n_clusters}")


def compose_scalers(
    outer_mean, outer_scale, inner_mean, inner_scale
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """One standardisation equal to ``inner`` applied after ``outer``:
    ((x - m1) / s1 - m2) / s2 = (x - (m1 + s1 m2)) / (s1 s2). Either may be None."""
    if outer_mean is None:
        return inner_mean, inner_scale
    if inner_mean is None:
        return outer_mean, outer_scale
    m1, s1 = np.asarray(outer_mean, np.float64), np.asarray(outer_scale, np.float64)
    m2, s2 = np.asarray(inner_mean, np.float64), np.asarray(inner_scale, np.float64)
    return m1 + s1 * m2, s1 * s2


class PrototypeEstimator(ClusterMixin, TransformerMixin, BaseEstimator):
    """Base of the estimators whose fitted state is ``cluster_centers_`` (prototypes).

    Attributes set by every ``fit``: ``cluster_centers_``, ``labels_``, ``n_iter_``,
    ``n_nonempty_`` (clusters that own at least one training row), ``n_features_in_``.
    """

    method: ClassVar[str] = ""  # the registry name written into the artifact

    def _check_x(self, X, reset: bool) -> np.ndarray:
        # validate_data rejects NaN/inf, non-numeric and empty input with clear messages,
        # and on predict checks the number of features against n_features_in_.
        return validate_data(
            self, X, reset=reset, dtype=[np.float32, np.float64], ensure_min_samples=1
        )

    @staticmethod
    def _tensor(X) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(X, dtype=np.float32))

    def _seed(self) -> int:
        """A fresh integer seed drawn from ``random_state`` (one per fit)."""
        return int(check_random_state(self.random_state).randint(0, 2**31 - 1))

    def _check_n_clusters(self, n_samples: int) -> None:
        check_n_clusters(self.n_clusters, n_samples)

    def fit_predict(self, X, y=None) -> np.ndarray:
        return self.fit(X).labels_

    def _artifact_fields(self) -> dict:
        """beta, alpha, steps, metric, and optionally tensors, meta (merged into the
        artifact's meta), scaler_mean / scaler_scale (the estimator's own standardisation,
        applied after the caller's)."""
        raise NotImplementedError

    def _params_for_meta(self) -> dict:
        params = {k: v for k, v in self.get_params().items() if k != "random_state"}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}

    def to_artifact(self, scaler_mean=None, scaler_scale=None, meta: dict | None = None):
        """The fitted model as a ``ModelArtifact`` (save it with ``save_artifact``).

        ``scaler_mean``/``scaler_scale``: the standardisation the caller applied before
        ``fit`` (the artifact then takes raw rows); composed with the estimator's own
        when it has one (DCAM's ``standardize=True``).
        """
        from clam_dist.artifacts import ModelArtifact

        check_is_fitted(self, "cluster_centers_")
        fields = dict(self._artifact_fields())
        mean, scale = compose_scalers(
            scaler_mean,
            scaler_scale,
            fields.pop("scaler_mean", None),
            fields.pop("scaler_scale", None),
        )
        extra_meta = fields.pop("meta", {})
        return ModelArtifact(
            method=self.method,
            prototypes=self.cluster_centers_,
            n_features=int(self.n_features_in_),
            scaler_mean=mean,
            scaler_scale=scale,
            meta=dict(meta or {}, params=self._params_for_meta(), **extra_meta),
            **fields,
        )


class PrototypeClusterer(PrototypeEstimator):
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
