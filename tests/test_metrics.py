"""Metrics against scikit-learn and hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import silhouette_score

from clam_dist.metrics import (
    cluster_sizes,
    clustering_accuracy,
    clustering_report,
    inertia,
    mean_energy,
    silhouette,
)


def test_silhouette_exact_matches_sklearn_including_singletons():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4))
    labels = rng.integers(0, 5, 200)
    labels[0] = 7  # a singleton cluster scores 0, as in scikit-learn
    assert silhouette(x, labels) == pytest.approx(silhouette_score(x, labels), abs=1e-9)


def test_silhouette_sampled_is_close_and_deterministic():
    rng = np.random.default_rng(1)
    centers = rng.normal(scale=5, size=(4, 3))
    lab = rng.integers(0, 4, 5000)
    x = centers[lab] + rng.normal(size=(5000, 3))
    exact = silhouette_score(x, lab)
    s1 = silhouette(x, lab, sample_size=1000, seed=3)
    assert s1 == silhouette(x, lab, sample_size=1000, seed=3)
    assert abs(s1 - exact) < 0.03


def test_silhouette_undefined_for_one_cluster():
    assert np.isnan(silhouette(np.zeros((5, 2)), np.zeros(5)))


def test_accuracy_uses_best_matching():
    assert clustering_accuracy([0, 0, 1, 1, 2], [2, 2, 0, 0, 1]) == 1.0
    assert clustering_accuracy([0, 0, 0, 1], [1, 1, 0, 0]) == 0.75


def test_inertia_energy_sizes_and_report():
    x = np.array([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0]])
    centers = np.array([[0.5, 0.0], [10.0, 0.0]])
    labels = np.array([0, 0, 1])
    assert inertia(x, centers, labels) == pytest.approx(0.5)
    assert cluster_sizes(labels, 3).tolist() == [2, 1, 0]
    beta = 2.0
    d2 = ((x[:, None] - centers[None]) ** 2).sum(-1)
    ref = np.mean(-np.log(np.exp(-beta / 2 * d2).sum(1)) / beta)
    assert mean_energy(x, centers, beta) == pytest.approx(ref, rel=1e-5)
    rep = clustering_report(x, labels, centers, beta=beta, y_true=np.array([1, 1, 0]))
    assert rep["n_nonempty"] == 2 and rep["acc"] == 1.0 and rep["inertia"] == pytest.approx(0.5)
    assert rep["silhouette_sample_size"] == 3


def test_spherical_silhouette_is_euclidean_on_unit_rows():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(150, 5))
    labels = rng.integers(0, 3, 150)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert silhouette(x, labels, metric="spherical") == pytest.approx(
        silhouette_score(unit, labels), abs=1e-9
    )


def test_report_matches_sklearn_scores_and_bad_input_is_named():
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    rng = np.random.default_rng(5)
    x = rng.normal(size=(300, 3)).astype(np.float32)
    centers = rng.normal(size=(4, 3)).astype(np.float32)
    labels = ((x[:, None] - centers[None]) ** 2).sum(-1).argmin(1)
    y = (labels + (rng.random(300) < 0.2)) % 4
    rep = clustering_report(x, labels, centers, beta=1.0, y_true=y, sample_size=100, seed=1)
    assert rep["nmi"] == pytest.approx(normalized_mutual_info_score(y, labels))
    assert rep["ari"] == pytest.approx(adjusted_rand_score(y, labels))
    assert rep["silhouette_sample_size"] == 100
    assert rep["silhouette"] == silhouette(x, labels, sample_size=100, seed=1)
    assert rep["inertia"] == pytest.approx(inertia(x, centers, labels), rel=1e-6)
    assert rep["inertia_nearest"] == pytest.approx(rep["inertia"], rel=1e-5)
    assert rep["size_min"] + rep["size_max"] <= 300 and rep["n_nonempty"] <= 4
    with pytest.raises(ValueError, match="labels must lie in"):
        cluster_sizes(np.array([0, 5]), 3)
    with pytest.raises(ValueError, match="rows"):
        silhouette(x, labels[:10])
    with pytest.raises(ValueError, match="NaN"):
        silhouette(np.full((4, 2), np.nan), np.array([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="y_pred"):
        clustering_accuracy([0, 1], [0])
