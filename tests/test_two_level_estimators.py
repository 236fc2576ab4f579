"""Two levels through every estimator (issue 28): ``coarse_clusters`` fits a coarse k-means
and the method's prototypes inside its cells, ``nprobe`` ("auto", "exact" or an int)
decides how many cells ``predict``, the artifact's predictor and the Ray Data assignment
search. Also: the parameters' checks, the < 39 rows per cluster warning and DCAM's
refusal."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from sklearn.base import clone

from clam_dist import ClAM, KMeans
from clam_dist.artifacts import load_artifact, save_artifact
from clam_dist.datasets.synthetic import make_gaussian_mixture
from clam_dist.in_memory_estimator import TrainerEstimator
from clam_dist.methods.attention.estimator import AttentionClustering
from clam_dist.methods.dcam.estimator import DCAM
from clam_dist.models.predictor import ClusterPredictor
from clam_dist.models.two_level import choose_nprobe

K, K1 = 32, 4
ESTIMATORS = {
    "kmeans": KMeans(n_clusters=K, coarse_clusters=K1, random_state=0),
    "kmeans-spherical": KMeans(
        n_clusters=K, coarse_clusters=K1, metric="spherical", random_state=0
    ),
    "clam": ClAM(n_clusters=K, coarse_clusters=K1, epochs=2, random_state=0),
    "attention": AttentionClustering(n_clusters=K, coarse_clusters=K1, epochs=3, random_state=0),
}
ids = list(ESTIMATORS)
SMALL = {
    "kmeans": KMeans(n_clusters=8, random_state=0),
    "clam": ClAM(n_clusters=8, epochs=1, init_restarts=1, random_state=0),
    "attention": AttentionClustering(n_clusters=8, epochs=1, random_state=0),
    "dcam": DCAM(
        n_clusters=8, latent_dim=2, hidden=(8,), pretrain_epochs=1, epochs=1, random_state=0
    ),
}


@pytest.fixture(scope="module")
def data():
    x, _, _ = make_gaussian_mixture(3_200, 8, K, separation=6.0, seed=0)
    return x


@pytest.fixture(scope="module")
def fitted(data):
    """Each estimator fitted twice with the same seed: nprobe="auto" and "exact"."""
    return {
        name: (
            clone(est).fit(data),
            clone(est).set_params(nprobe="exact").fit(data),
        )
        for name, est in ESTIMATORS.items()
    }


def flat_nearest(x, centers, metric="euclidean"):
    x, c = x.astype(np.float64), centers.astype(np.float64)
    if metric == "spherical":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        c = c / np.linalg.norm(c, axis=1, keepdims=True)
    d2 = (x**2).sum(1)[:, None] - 2 * x @ c.T + (c**2).sum(1)[None, :]
    return d2.argmin(1)


@pytest.mark.parametrize("name", ids)
def test_two_level_fit_predict_and_agreement_curve(fitted, data, name):
    auto, exact = fitted[name]
    metric = getattr(auto, "metric", "euclidean")
    # nprobe does not change the fit: the same seed gives the same two levels.
    np.testing.assert_array_equal(auto.cluster_centers_, exact.cluster_centers_)
    assert auto.cluster_centers_.shape == (K, 8) and auto.coarse_centers_.shape == (K1, 8)
    offsets = auto.cell_offsets_
    assert offsets.dtype == np.int64 and offsets.shape == (K1 + 1,)
    assert offsets[0] == 0 and offsets[-1] == K and np.all(np.diff(offsets) >= 1)
    np.testing.assert_array_equal(auto.cell_of_fine_, np.repeat(np.arange(K1), np.diff(offsets)))
    # nprobe="exact": the flat nearest prototype over cluster_centers_.
    assert exact.nprobe_ == "exact"
    nearest = flat_nearest(data, exact.cluster_centers_, metric)
    np.testing.assert_array_equal(exact.predict(data), nearest)
    np.testing.assert_array_equal(exact.labels_, nearest)
    # The agreement curve (held-out rows) is stored; "auto" reaches 99% on it.
    curve = auto.agreement_curve_
    assert [e["nprobe"] for e in curve] == [1, 2, 4] and curve[-1]["agreement"] == 1.0
    assert auto.nprobe_ == choose_nprobe(curve, 0.99)
    assert next(e for e in curve if e["nprobe"] == auto.nprobe_)["agreement"] >= 0.99
    labels = auto.predict(data)
    np.testing.assert_array_equal(labels, auto.labels_)
    assert (labels == nearest).mean() >= 0.98
    assert auto.n_nonempty_ == np.unique(labels).size
    # An integer nprobe is kept; probing every cell is the exact search.
    every = clone(ESTIMATORS[name]).set_params(nprobe=K1).fit(data)
    assert every.nprobe_ == K1
    np.testing.assert_array_equal(every.predict(data), nearest)


def test_flat_refit_drops_the_two_levels(fitted, data):
    est = clone(fitted["kmeans"][0]).fit(data)
    assert hasattr(est, "coarse_centers_")
    est.set_params(coarse_clusters=None).fit(data)
    for name in ("coarse_centers_", "cell_of_fine_", "cell_offsets_", "agreement_curve_"):
        assert not hasattr(est, name)
    assert not hasattr(est, "nprobe_")
    np.testing.assert_array_equal(est.predict(data), flat_nearest(data, est.cluster_centers_))
    assert est.to_artifact().tensors == {}


def test_dcam_refuses_two_levels(data):
    with pytest.raises(ValueError, match="coarse_clusters=2: DCAM does not fit two levels"):
        clone(SMALL["dcam"]).set_params(coarse_clusters=2).fit(data[:400])


@pytest.mark.parametrize("name", list(SMALL))
@pytest.mark.parametrize(
    "params, match",
    [
        ({"coarse_clusters": 0}, r"coarse_clusters must be None or an integer in \[1, "),
        ({"coarse_clusters": 9}, r"n_clusters=8\], got 9"),
        ({"coarse_clusters": "4"}, r"coarse_clusters .* got '4'"),
        ({"coarse_clusters": True}, r"coarse_clusters .* got True"),
        ({"nprobe": 0}, r"nprobe must be 'auto' or 'exact' or an integer >= 1, got 0"),
        ({"nprobe": "fast"}, r"nprobe .* got 'fast'"),
        ({"nprobe": 1.5}, r"nprobe .* got 1.5"),
        ({"nprobe": True}, r"nprobe .* got True"),
    ],
)
def test_bad_two_level_parameters_are_refused(data, name, params, match):
    with pytest.raises(ValueError, match=match):
        clone(SMALL[name]).set_params(**params).fit(data[:400])


def _our_warnings(record):
    return [w for w in record if "training rows for n_clusters" in str(w.message)]


@pytest.mark.parametrize("name", list(SMALL))
def test_fewer_than_39_rows_per_cluster_warns_once(data, name):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        clone(SMALL[name]).fit(data[: 38 * 8])
    ours = _our_warnings(record)
    assert len(ours) == 1 and ours[0].category is UserWarning
    assert "304 training rows for n_clusters=8 (38.0 rows per cluster)" in str(ours[0].message)
    assert "fewer than 39" in str(ours[0].message)
    # kmeans_fit's own warning about the same rows is not repeated.
    assert not [w for w in record if "k-means:" in str(w.message)]
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        clone(SMALL[name]).fit(data[: 39 * 8])
    assert not _our_warnings(record)


def test_cell_fits_do_not_warn_again(data):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        KMeans(n_clusters=K, coarse_clusters=K1, random_state=0).fit(data[: 38 * K])
    assert len(_our_warnings(record)) == 1


@pytest.mark.parametrize("name", ids)
def test_artifact_round_trip_through_the_predictor(fitted, data, name, tmp_path):
    est = fitted[name][0]
    art = est.to_artifact(meta={"note": "kept"})
    save_artifact(art, str(tmp_path / "model"))
    loaded = load_artifact(str(tmp_path / "model"))
    assert loaded.k == K and loaded.meta["note"] == "kept"
    assert loaded.tensors["coarse"].shape == (K1, 8)
    assert loaded.tensors["cell_offsets"].dtype == np.int64
    np.testing.assert_array_equal(loaded.tensors["cell_offsets"], est.cell_offsets_)
    two = loaded.meta["two_level"]
    assert two["coarse_clusters"] == K1 and two["nprobe"] == est.nprobe_
    assert [e["nprobe"] for e in two["agreement_curve"]] == [1, 2, 4]
    assert loaded.meta["params"]["coarse_clusters"] == K1
    pred = ClusterPredictor.from_artifact(loaded)
    assert pred.two_level and pred.nprobe == est.nprobe_
    out = pred.predict(data, ("energy", "margin", "probs"))
    np.testing.assert_array_equal(out["cluster"], est.predict(data))
    np.testing.assert_array_equal(pred.predict(data)["cluster"], est.predict(data))
    # distance: to the chosen prototype, in model space (unit rows for spherical).
    z, c = data.astype(np.float64), est.cluster_centers_.astype(np.float64)
    if getattr(est, "metric", "euclidean") == "spherical":
        z = z / np.linalg.norm(z, axis=1, keepdims=True)
        c = c / np.linalg.norm(c, axis=1, keepdims=True)
    d2 = ((z - c[out["cluster"]]) ** 2).sum(1)
    np.testing.assert_allclose(out["distance"], d2, rtol=1e-4, atol=1e-4)
    # Optional outputs over the probed cells only: probs zero outside them, sum to 1.
    probs = out["probs"]
    assert probs.shape == (len(data), K)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    assert np.all(probs.argmax(1) == out["cluster"])
    cells_with_mass = np.array([np.unique(est.cell_of_fine_[p > 0]).size for p in probs[:200]])
    assert cells_with_mass.max() <= est.nprobe_
    assert np.all(out["margin"] >= 0) and np.isfinite(out["energy"]).all()
    # Probing every cell equals the exact (flat) path, extras included.
    exact = pred.predict(data, ("energy", "margin", "probs"), nprobe="exact")
    every = pred.predict(data, ("energy", "margin", "probs"), nprobe=K1)
    np.testing.assert_array_equal(exact["cluster"], every["cluster"])
    np.testing.assert_array_equal(
        exact["cluster"],
        flat_nearest(data, est.cluster_centers_, getattr(est, "metric", "euclidean")),
    )
    for key in ("distance", "margin", "energy", "probs"):
        np.testing.assert_allclose(every[key], exact[key], rtol=1e-4, atol=1e-4)
    # Fewer cells: energy over fewer prototypes is never below the exact one.
    one = pred.predict(data, ("energy",), nprobe=1)
    assert np.all(one["energy"] >= exact["energy"] - 1e-4)
    # The override on from_artifact.
    assert ClusterPredictor.from_artifact(loaded, nprobe="exact").nprobe == "exact"
    with pytest.raises(ValueError, match="nprobe must be 'exact' or an integer >= 1, got 'auto'"):
        pred.predict(data, nprobe="auto")


def test_predictor_refuses_inconsistent_two_level_tensors(fitted):
    art = fitted["kmeans"][0].to_artifact()
    bad = dict(art.tensors, cell_offsets=art.tensors["cell_offsets"][:-1])
    with pytest.raises(ValueError, match="cell_offsets must be 5 non-decreasing integers"):
        ClusterPredictor.from_artifact(type(art)(**{**vars(art), "tensors": bad}))
    lone = {"coarse": art.tensors["coarse"]}
    with pytest.raises(ValueError, match="needs both coarse and cell_offsets"):
        ClusterPredictor.from_artifact(type(art)(**{**vars(art), "tensors": lone}))


@pytest.mark.slow
def test_trainer_estimator_fits_two_levels(data):
    """The in-process trainer's estimator (a method without an estimator of its own)."""

    class Trainer(TrainerEstimator):
        method = "clam"

    x = data[:400]
    est = Trainer(n_clusters=4, coarse_clusters=2, epochs=1, random_state=0).fit(x)
    assert est.cluster_centers_.shape == (4, 8) and est.cell_offsets_.shape == (3,)
    np.testing.assert_array_equal(est.predict(x), est.labels_)
    art = est.to_artifact()
    assert art.beta == est.beta_ and art.meta["two_level"]["nprobe"] == est.nprobe_
    np.testing.assert_array_equal(
        ClusterPredictor.from_artifact(art).predict(x)["cluster"], est.predict(x)
    )


@pytest.mark.ray
def test_ray_data_assignment_honours_two_levels(ray_local, data, tmp_path):
    from clam_dist.assign.pipeline import AssignConfig, read_assignments, run_assignment
    from clam_dist.data.writer import write_vectors

    x = data[:1_200]
    est = KMeans(n_clusters=K, coarse_clusters=K1, nprobe=1, random_state=0).fit(data)
    write_vectors(str(tmp_path / "in"), x, ids=np.arange(len(x)), rows_per_file=500)
    save_artifact(est.to_artifact(), str(tmp_path / "model"))
    cfg = AssignConfig(
        input=str(tmp_path / "in"),
        output=str(tmp_path / "out"),
        model=str(tmp_path / "model"),
        id_column="id",
        outputs=["margin"],
        batch_size=300,
        concurrency=1,
    )
    res = run_assignment(cfg)
    table = read_assignments(str(tmp_path / "out"))
    assert res.rows == table.num_rows == len(x)
    order = np.argsort(table.column("id").to_numpy())
    clusters = table.column("cluster").to_numpy()[order]
    np.testing.assert_array_equal(clusters, est.predict(x))
    # nprobe=1 differs from the exact search on some rows: the probed path really ran.
    exact = ClusterPredictor.from_artifact(est.to_artifact(), nprobe="exact").predict(x)
    assert (clusters != exact["cluster"]).any()


def test_the_pipeline_trains_and_assigns_two_levels_through_the_cli(tmp_path):
    """`clam-dist pipeline --set model.n_clusters=4096 --set model.coarse_clusters=64` on
    small data (a real subprocess), with the default trainer: the distributed two-level
    job (one Ray task per cell) makes a two-level model (coarse cells and the cell -> fine
    map in the artifact) and every row is assigned through it."""
    from tests.cli_harness import run_cli

    r = run_cli(
        "pipeline", "--run-dir", tmp_path / "run", "--set", "data.n=20000",
        "--set", "data.d=8", "--set", "data.k=64", "--set", "model.method=kmeans",
        "--set", "model.n_clusters=4096", "--set", "model.coarse_clusters=64",
        "--set", "eval_sample=2000", "--set", "num_cpus=2", timeout=600,
    )  # fmt: skip
    assert r.code == 0, r.describe()
    assert "Traceback" not in r.err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    cells = summary["stages"]["train"]["cells"]
    assert cells["trained"] == cells["nonempty"] == 64 and cells["resumed"] == 0
    model = load_artifact(str(tmp_path / "run" / "model"))
    assert model.k == 4096 and model.tensors["coarse"].shape == (64, 8)
    assert model.meta["two_level"]["coarse_clusters"] == 64
    from clam_dist.assign.commit import read_assignments

    table = read_assignments(str(tmp_path / "run" / "assignments"), columns=["cluster"])
    clusters = table.column("cluster").to_numpy()
    assert table.num_rows == 20000 and clusters.min() >= 0 and clusters.max() < 4096
    assert len(np.unique(clusters)) > 2500  # the fine level, not the 64 cells
