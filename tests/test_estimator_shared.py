"""What every estimator promises (clam_dist.estimator_base), checked once per estimator:
seeding, input and n_clusters checks, fit_predict, the artifact round trip through the
predictor (with and without the caller's standardisation), and numpydoc sections that
name every parameter and fitted attribute."""

from __future__ import annotations

import inspect
import re
import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.utils.estimator_checks import check_estimator

from clam_dist import ClAM, KMeans
from clam_dist.methods.attention.estimator import AttentionClustering
from clam_dist.methods.dcam.estimator import DCAM
from clam_dist.models.predictor import ClusterPredictor

ESTIMATORS = {
    "kmeans": KMeans(n_clusters=3, random_state=0),
    "clam": ClAM(n_clusters=3, epochs=3, random_state=0),
    "attention": AttentionClustering(n_clusters=3, epochs=5, random_state=0),
    "dcam": DCAM(
        n_clusters=3, latent_dim=2, hidden=(8,), pretrain_epochs=3, epochs=2, random_state=0
    ),
}
ids = list(ESTIMATORS)
params = [ESTIMATORS[i] for i in ids]


def blobs(n=240, d=4, k=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=8.0, size=(k, d))
    labels = rng.integers(0, k, n)
    return (centers[labels] + rng.normal(size=(n, d))).astype(np.float32), labels


@pytest.mark.parametrize("estimator", params, ids=ids)
def test_same_seed_same_model_and_fit_predict_is_labels(estimator):
    x, _ = blobs()
    a, b = clone(estimator).fit(x), clone(estimator).fit(x)
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    np.testing.assert_array_equal(clone(estimator).fit_predict(x), a.labels_)
    np.testing.assert_array_equal(a.predict(x), a.labels_)
    assert a.n_nonempty_ == np.unique(a.labels_).size and a.n_iter_ >= 1
    assert a.n_features_in_ == 4


@pytest.mark.parametrize("estimator", params, ids=ids)
@pytest.mark.parametrize(
    "n_clusters, n_rows, match",
    [
        (0, 240, "n_clusters must be an integer >= 1, got 0"),
        ("3", 240, "n_clusters must be an integer >= 1, got '3'"),
        (True, 240, "n_clusters must be an integer >= 1, got True"),
        (3, 2, "n_samples=2 should be >= n_clusters=3"),
    ],
)
def test_n_clusters_is_checked_alike(estimator, n_clusters, n_rows, match):
    x, _ = blobs()
    with pytest.raises(ValueError, match=match):
        clone(estimator).set_params(n_clusters=n_clusters).fit(x[:n_rows])


@pytest.mark.parametrize("estimator", params, ids=ids)
def test_bad_rows_and_widths_are_named(estimator):
    x, _ = blobs()
    bad = x.copy()
    bad[5, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        clone(estimator).fit(bad)
    fitted = clone(estimator).fit(x)
    with pytest.raises(ValueError, match="4 features"):
        fitted.predict(x[:, :3])


@pytest.mark.parametrize("estimator", params, ids=ids)
def test_artifact_round_trip_through_the_predictor(estimator):
    x, _ = blobs(seed=2)
    fitted = clone(estimator).fit(x)
    art = fitted.to_artifact(meta={"note": "kept"})
    assert art.method == fitted.method and art.k == 3 and art.meta["note"] == "kept"
    assert art.meta["params"]["n_clusters"] == 3 and "random_state" not in art.meta["params"]
    pred = ClusterPredictor.from_artifact(art).predict(x)["cluster"]
    np.testing.assert_array_equal(pred, fitted.predict(x))
    # Fitted on standardised rows, the artifact with the caller's scaler takes raw rows.
    mean, scale = x.mean(0).astype(np.float64), x.std(0).astype(np.float64) * 2
    z = ((x - mean) / scale).astype(np.float32)
    on_z = clone(estimator).fit(z)
    art = on_z.to_artifact(scaler_mean=mean, scaler_scale=scale)
    pred = ClusterPredictor.from_artifact(art).predict(x)["cluster"]
    assert (pred == on_z.predict(z)).mean() > 0.99  # float32 rounding at cluster borders


def test_composed_standardisation_equals_applying_both():
    from clam_dist.estimator_base import compose_scalers

    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3))
    m1, s1, m2, s2 = (
        rng.normal(size=3),
        rng.uniform(1, 2, 3),
        rng.normal(size=3),
        rng.uniform(1, 2, 3),
    )
    m, s = compose_scalers(m1, s1, m2, s2)
    np.testing.assert_allclose((x - m) / s, ((x - m1) / s1 - m2) / s2, rtol=1e-12)
    assert compose_scalers(None, None, m2, s2)[0] is m2
    assert compose_scalers(m1, s1, None, None)[1] is s1


@pytest.mark.parametrize("estimator", params, ids=ids)
def test_docstrings_name_every_parameter_and_fitted_attribute(estimator):
    doc = inspect.getdoc(type(estimator))
    assert "Parameters\n----------" in doc and "Attributes\n----------" in doc
    params_doc, attrs_doc = doc.split("Attributes\n----------")
    documented = set(re.findall(r"^(\w+)(?:, (\w+))?\s*:", params_doc, re.M))
    names = {n for pair in documented for n in pair if n}
    assert set(estimator.get_params()) <= names, set(estimator.get_params()) - names
    fitted = clone(estimator).fit(blobs()[0])
    learned = {a for a in vars(fitted) if a.endswith("_") and not a.startswith("_")}
    found = set(re.findall(r"^(\w+_)\b", attrs_doc, re.M))
    found |= {n for pair in re.findall(r"^(\w+_), (\w+_)", attrs_doc, re.M) for n in pair}
    assert learned <= found, learned - found


@pytest.mark.parametrize("estimator", params, ids=ids)
def test_check_estimator(estimator):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(estimator, on_fail=None)
    failed = [
        (r["check_name"], str(r["exception"])[:200]) for r in results if r["status"] == "failed"
    ]
    assert not failed, failed
    assert len(results) > 30
