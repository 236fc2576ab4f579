"""ClAM and KMeans behaviour and bad input (the estimator-check contract and what all four
estimators share: tests/test_estimator_shared.py)."""

from __future__ import annotations

import numpy as np
import pytest

from clam_dist import ClAM, KMeans


def blobs(n=300, d=4, k=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=8.0, size=(k, d))
    labels = rng.integers(0, k, n)
    return (centers[labels] + rng.normal(size=(n, d))).astype(np.float32), labels


def test_clam_recovers_separated_blobs_and_is_deterministic():
    from clam_dist.metrics import ari

    x, y = blobs()
    a = ClAM(n_clusters=3, random_state=1).fit(x)
    b = ClAM(n_clusters=3, random_state=1).fit(x)
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    assert ari(y, a.labels_) > 0.99
    assert a.n_nonempty_ == 3 and a.beta_ > 0
    assert a.transform(x).shape == (300, 3)
    assert np.array_equal(a.predict(x), a.labels_)
    assert np.isfinite(a.score(x))


def test_clam_training_loss_decreases():
    x, _ = blobs(seed=3)
    m = ClAM(n_clusters=3, init="kmeans++", epochs=10, random_state=0).fit(x)
    assert m.loss_history_[-1] < m.loss_history_[0]


def test_unmasked_ablation_and_spherical_variant_fit():
    x, y = blobs(seed=4)
    from clam_dist.metrics import ari

    assert ari(y, ClAM(n_clusters=3, masked=False, random_state=0).fit_predict(x)) > 0.9
    sph = ClAM(n_clusters=3, metric="spherical", random_state=0).fit(x)
    assert sph.n_nonempty_ >= 2


def test_dead_prototypes_are_reseeded():
    x, _ = blobs(n=200, k=2, seed=5)
    # Gaussian init far from the data leaves prototypes that own nothing; the fit must
    # still return every cluster asked for.
    m = ClAM(n_clusters=6, init="gaussian", epochs=3, random_state=0).fit(x)
    assert m.n_nonempty_ == 6


def test_kmeans_minibatch():
    x, y = blobs()
    from clam_dist.metrics import ari

    assert (
        ari(
            y,
            KMeans(n_clusters=3, algorithm="minibatch", batch_size=64, random_state=0).fit_predict(
                x
            ),
        )
        > 0.99
    )


@pytest.mark.parametrize(
    "make_x, params, match",
    [
        (lambda x: np.where(np.arange(x.size).reshape(x.shape) == 5, np.nan, x), {}, "NaN"),
        (lambda x: np.where(np.arange(x.size).reshape(x.shape) == 5, np.inf, x), {}, "infinity"),
        (lambda x: x[:2], {}, "n_samples=2 should be >= n_clusters=3"),
        (lambda x: x, {"n_clusters": 0}, "n_clusters must be an integer >= 1"),
        (lambda x: np.array([["a", "b"]] * 5), {}, "[Ss]tring|convert"),
        (lambda x: x[:0], {}, "0 sample"),
        (lambda x: x, {"beta": 0.0}, "beta must be a finite number > 0"),
        (lambda x: x, {"alpha": 1.5}, r"alpha must be in \(0, 1\]"),
    ],
)
def test_bad_input_is_named(make_x, params, match):
    x, _ = blobs()
    with pytest.raises(ValueError, match=match):
        ClAM(**{"n_clusters": 3, **params}).fit(make_x(x))


def test_wrong_feature_count_at_predict():
    x, _ = blobs()
    m = KMeans(n_clusters=3, random_state=0).fit(x)
    with pytest.raises(ValueError, match="4 features"):
        m.predict(x[:, :3])
