"""Model artifacts: round trips on local disk and the local S3 server; refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clam_dist import ClAM
from clam_dist.artifacts import ArtifactError, ModelArtifact, load_artifact, save_artifact
from clam_dist.models.predictor import ClusterPredictor


@pytest.fixture(scope="module")
def fitted():
    x = np.random.default_rng(0).normal(size=(120, 5)).astype(np.float32)
    return x, ClAM(n_clusters=4, epochs=3, random_state=0).fit(x)


def test_round_trip_local_keeps_everything_and_predicts_the_same(tmp_path, fitted):
    x, model = fitted
    mean, scale = np.zeros(5, np.float32), np.ones(5, np.float32)
    art = model.to_artifact(scaler_mean=mean, scaler_scale=scale, meta={"energy_p99": 1.5})
    art.tensors["encoder.w"] = np.arange(6, dtype=np.float32).reshape(2, 3)
    save_artifact(art, str(tmp_path / "m"))
    back = load_artifact(str(tmp_path / "m"))
    assert (back.method, back.k, back.d, back.n_features) == ("clam", 4, 5, 5)
    assert (back.beta, back.alpha, back.steps, back.metric) == (model.beta_, 0.1, 10, "euclidean")
    np.testing.assert_array_equal(back.prototypes, model.cluster_centers_)
    np.testing.assert_array_equal(back.tensors["encoder.w"], art.tensors["encoder.w"])
    assert back.meta["energy_p99"] == 1.5 and back.library_version
    np.testing.assert_array_equal(
        ClusterPredictor.from_artifact(back).predict(x)["cluster"], model.predict(x)
    )


def test_round_trip_on_local_s3(s3_server, fitted):
    x, model = fitted
    url = s3_server.url("models/clam1")
    save_artifact(model.to_artifact(), url, s3_server.storage_options)
    back = load_artifact(url, s3_server.storage_options)
    np.testing.assert_array_equal(back.prototypes, model.cluster_centers_)


def test_refuses_missing_foreign_corrupt_and_inconsistent(tmp_path, fitted):
    _, model = fitted
    with pytest.raises(ArtifactError, match="no model.json"):
        load_artifact(str(tmp_path / "nothing"))
    d = tmp_path / "m"
    save_artifact(model.to_artifact(), str(d))
    meta = json.loads((d / "model.json").read_text())

    (d / "model.json").write_text(json.dumps({"hello": "world"}))
    with pytest.raises(ArtifactError, match="not a clam-dist model"):
        load_artifact(str(d))

    (d / "model.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_artifact(str(d))

    (d / "model.json").write_text(json.dumps(meta))
    good = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(good[: len(good) // 2])
    with pytest.raises(ArtifactError, match="corrupt"):
        load_artifact(str(d))

    (d / "model.safetensors").write_bytes(good)
    meta["tensor_shapes"]["prototypes"] = [9, 9]
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="do not match"):
        load_artifact(str(d))


def test_refuses_a_zero_filled_file_and_a_lying_model_json_on_local_s3(s3_server, fitted):
    """The checks before any tensor is read use ranged reads, on S3 as on a local disk."""
    import s3fs

    from clam_dist.artifacts import check_artifact

    _, model = fitted
    opts = s3_server.storage_options
    fs = s3fs.S3FileSystem(**opts)
    url = s3_server.url("models/zeros")
    save_artifact(model.to_artifact(), url, opts)
    good = fs.cat(f"{url}/model.safetensors")
    fs.pipe(f"{url}/model.safetensors", b"\0" * 2**20)
    for check in (load_artifact, check_artifact):
        with pytest.raises(ArtifactError, match="corrupt safetensors file: its header length"):
            check(url, opts)
    fs.pipe(f"{url}/model.safetensors", good)
    meta = json.loads(fs.cat(f"{url}/model.json"))
    fs.pipe(f"{url}/model.json", json.dumps(dict(meta, k=10**12)).encode())
    for check in (load_artifact, check_artifact):
        with pytest.raises(ArtifactError, match="k = 1000000000000, but the prototypes' rows"):
            check(url, opts)


def test_pickle_file_is_not_loaded(tmp_path):
    import pickle

    d = tmp_path / "evil"
    d.mkdir()
    (d / "model.json").write_bytes(pickle.dumps({"format": "clam-dist-model"}))
    with pytest.raises(ArtifactError):
        load_artifact(str(d))


def test_artifact_validates_shapes():
    with pytest.raises(ArtifactError, match="scaler_mean has 3 entries"):
        ModelArtifact(
            "clam", np.zeros((2, 4)), 4, 1.0, 0.1, 10, "euclidean", scaler_mean=np.zeros(3)
        )
    with pytest.raises(ArtifactError, match="method"):
        ModelArtifact("gmm", np.zeros((2, 4)), 4, 1.0, 0.1, 10, "euclidean")


def test_predictor_outputs_and_errors(fitted):
    x, model = fitted
    pred = ClusterPredictor.from_artifact(model.to_artifact())
    out = pred.predict(x, ("energy", "margin", "probs"))
    assert out["cluster"].dtype == np.int64 and out["distance"].dtype == np.float32
    np.testing.assert_allclose(out["probs"].sum(1), 1.0, rtol=1e-5)
    assert (out["margin"] >= 0).all()
    np.testing.assert_allclose(out["energy"], model.energy(x), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"expects \(n_rows, 5\)"):
        pred.predict(x[:, :3])
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN/inf.*3"):
        pred.predict(bad)


def test_meta_must_be_json_and_a_failed_save_keeps_the_old_model(tmp_path, fitted):
    _, model = fitted
    url = str(tmp_path / "m")
    save_artifact(model.to_artifact(meta={"p99": np.float32(2.5), "hist": np.arange(3)}), url)
    meta = load_artifact(url).meta
    assert (meta["p99"], meta["hist"]) == (2.5, [0, 1, 2])
    with pytest.raises(ArtifactError, match="not JSON-serialisable"):
        save_artifact(model.to_artifact(meta={"bad": object()}), url)
    np.testing.assert_array_equal(load_artifact(url).prototypes, model.cluster_centers_)


def test_non_finite_prototypes_are_refused():
    protos = np.zeros((2, 3), np.float32)
    protos[1, 2] = np.nan
    with pytest.raises(ArtifactError, match="NaN"):
        ModelArtifact("kmeans", protos, 3, 1.0, 1.0, 0, "euclidean")


def test_missing_model_on_s3_is_an_artifact_error(s3_server):
    with pytest.raises(ArtifactError, match="no model.json"):
        load_artifact(s3_server.url("models/absent"), s3_server.storage_options)


def test_predictor_methods_scaler_and_chunking(monkeypatch):
    import torch

    from clam_dist.models import am, predictor

    rng = np.random.default_rng(3)
    protos = rng.normal(size=(6, 4)).astype(np.float32)
    mean, scale = rng.normal(size=4).astype(np.float32), rng.uniform(0.5, 2, 4).astype(np.float32)
    x = rng.normal(size=(50, 4)).astype(np.float32) * scale + mean
    z = torch.from_numpy((x - mean) / scale)
    p = torch.from_numpy(protos)

    km = ModelArtifact("kmeans", protos, 4, 1.0, 1.0, 0, "euclidean", mean, scale)
    out = ClusterPredictor.from_artifact(km).predict(x, ("margin", "probs"))
    d2 = ((z[:, None] - p[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(out["cluster"], d2.argmin(1).numpy())
    np.testing.assert_allclose(out["distance"], d2.min(1).values.numpy(), rtol=1e-5, atol=1e-5)
    top2 = d2.topk(2, largest=False).values
    np.testing.assert_allclose(out["margin"], (top2[:, 1] - top2[:, 0]).numpy(), rtol=1e-4)
    np.testing.assert_allclose(out["probs"], torch.softmax(-0.5 * d2, 1).numpy(), atol=1e-5)

    dot = ModelArtifact("attention", protos, 4, 2.0, 1.0, 0, "euclidean", mean, scale)
    dot.meta["score"] = "dot"
    np.testing.assert_array_equal(
        ClusterPredictor.from_artifact(dot).predict(x)["cluster"], (z @ p.T).argmax(1).numpy()
    )

    clam = ModelArtifact("clam", protos, 4, 1.5, 0.2, 5, "spherical", mean, scale)
    labels = ClusterPredictor.from_artifact(clam).predict(x)["cluster"]
    np.testing.assert_array_equal(labels, am.assign(z, p, 1.5, 0.2, 5, "spherical")[0].numpy())
    # Small row chunks (bounded by k) give the same answers.
    monkeypatch.setattr(predictor, "BLOCK_ELEMS", 6 * 7)
    chunked = ClusterPredictor.from_artifact(clam).predict(x, ("energy",))
    np.testing.assert_array_equal(chunked["cluster"], labels)
    empty = ClusterPredictor.from_artifact(clam).predict(np.zeros((0, 4), np.float32), ("probs",))
    assert empty["cluster"].shape == (0,) and empty["probs"].shape == (0, 6)
