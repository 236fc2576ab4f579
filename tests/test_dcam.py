"""DCAM: architectures, the loss against a hand-written reference, training with the
reconstruction bound, the estimator, artifacts and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.utils.estimator_checks import parametrize_with_checks

from clam_dist import DCAM
from clam_dist.methods.dcam.model import (
    Autoencoder,
    DCAMConfig,
    DCAMModel,
    EncoderSpec,
    dcam_loss,
    encoder_from_artifact,
    fit_dcam,
)
from clam_dist.models.am import am_evolve

FAST = {"pretrain_epochs": 25, "epochs": 4, "batch_size": 32, "hidden": (32, 16), "latent_dim": 4}


def blobs(k=3, d=10, n_per=40, sep=6.0, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d))
    centres *= sep / np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.concatenate([c + rng.normal(size=(n_per, d)) for c in centres])
    return x, np.repeat(np.arange(k), n_per)


# -- architectures ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        EncoderSpec("mlp", n_features=7, latent_dim=3, hidden=(16, 8)),
        EncoderSpec("conv", n_features=64, latent_dim=5, hidden=(4, 8)),  # 8x8 digits
        EncoderSpec("conv", n_features=784, latent_dim=5, hidden=(4, 8)),  # 28x28
        EncoderSpec("conv", n_features=3 * 32 * 32, latent_dim=5, hidden=(4, 8)),  # 32x32 RGB
    ],
)
def test_autoencoder_shapes(spec):
    ae = Autoencoder(spec)
    x = torch.randn(3, spec.n_features)
    z = ae.encoder(x)
    assert z.shape == (3, spec.latent_dim)
    assert ae.decoder(z).shape == (3, spec.n_features)
    assert EncoderSpec.from_json(spec.to_json()) == spec


def test_conv_infers_image_shapes():
    assert EncoderSpec("conv", 64).image_shape == (1, 8, 8)
    assert EncoderSpec("conv", 784).image_shape == (1, 28, 28)
    assert EncoderSpec("conv", 3072).image_shape == (3, 32, 32)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (
            {"n_features": 900, "image_shape": (1, 30, 30)},
            r"\(1, 30, 30\) does not fit the conv encoder",
        ),
        ({"n_features": 50}, "cannot infer an image shape from 50 features"),
        (
            {"n_features": 64, "image_shape": (1, 8, 4)},
            "has 32 values but the input has 64 features",
        ),
        ({"n_features": 64, "hidden": (4,)}, "hidden=\\(c1, c2\\)"),
    ],
)
def test_image_shapes_that_do_not_fit_the_encoder(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EncoderSpec("conv", **kwargs)


# -- loss ---------------------------------------------------------------------------------


def _model(seed=0):
    torch.manual_seed(seed)
    spec = EncoderSpec("mlp", n_features=5, latent_dim=3, hidden=(6,))
    protos = torch.randn(4, 3, generator=torch.Generator().manual_seed(seed + 1))
    return DCAMModel(spec, protos, beta=0.9, alpha=0.3, steps=4, recon_weight=0.5)


def test_joint_loss_matches_reference():
    model = _model()
    x = torch.randn(8, 5, generator=torch.Generator().manual_seed(2))
    loss, parts = dcam_loss(model, x)
    f, g, R = model.encoder, model.decoder, model.prototypes.detach()
    z = f(x).detach().double()
    zt = z
    for _ in range(4):  # float64 reference of T AM steps
        w = torch.softmax(-0.45 * torch.cdist(zt, R.double()) ** 2, 1)
        zt = zt + 0.3 * (w @ R.double() - zt)
    am = ((g(zt.float()).detach().double() - x.double()) ** 2).sum(1).mean()
    recon = ((g(f(x)).detach().double() - x.double()) ** 2).sum(1).mean()
    assert parts["am"] == pytest.approx(float(am), rel=1e-4)
    assert parts["recon"] == pytest.approx(float(recon), rel=1e-5)
    assert float(loss.detach()) == pytest.approx(float(am + 0.5 * recon), rel=1e-4)
    pre, pre_parts = dcam_loss(model, x, phase="pretrain")
    assert float(pre.detach()) == pytest.approx(float(recon), rel=1e-5) and set(pre_parts) == {
        "loss",
        "recon",
    }


def test_masked_loss_evolves_only_hidden_latent_coordinates():
    model = _model()
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(3))
    mask = torch.zeros(6, 3)
    mask[:, 1] = 1.0
    _, parts = dcam_loss(model, x, mask)
    z = model.encoder(x)
    z0 = z.clone()
    z0[:, 1] = z[:, 1].mean()  # "mean" fill from the batch's latents
    zt = am_evolve(z0, model.prototypes, 0.9, 0.3, 4, mask=mask)
    torch.testing.assert_close(zt[:, [0, 2]], z[:, [0, 2]])
    am = ((model.decoder(zt) - x) ** 2).sum(1).mean().detach()
    assert parts["am"] == pytest.approx(float(am), rel=1e-5)
    with pytest.raises(ValueError, match="phase"):
        dcam_loss(model, x, phase="warmup")


# -- training and the reconstruction bound ------------------------------------------------


def test_fit_respects_the_reconstruction_bound():
    x, _ = blobs(seed=1)
    x = torch.as_tensor((x - x.mean(0)) / x.std(0), dtype=torch.float32)
    spec = EncoderSpec("mlp", 10, latent_dim=4, hidden=(32, 16))
    res = fit_dcam(
        x, DCAMConfig(spec, n_clusters=3, pretrain_epochs=8, epochs=6, batch_size=32, seed=0)
    )
    assert res.history[0]["epoch"] == -1 and res.history[0]["recon_ratio"] == pytest.approx(1.0)
    chosen = next(h for h in res.history if h["epoch"] == res.best_epoch)
    assert chosen["recon"] <= 1.10 * res.recon_pretrained + 1e-9
    # Selected on the masked am term (fixed masks of the sample), what the joint phase trains.
    assert all(h["score"] == h["am_masked"] for h in res.history)
    assert chosen["score"] == min(h["score"] for h in res.history if h["within_bound"])
    # 'stop' with zero tolerance ends at the first epoch whose reconstruction got worse.
    stop = fit_dcam(x, DCAMConfig(spec, n_clusters=3, pretrain_epochs=8, epochs=6, batch_size=32,
                                  recon_tolerance=0.0, recon_bound="stop", lr=5e-3, seed=0))  # fmt: skip
    assert all(h["within_bound"] for h in stop.history[:-1])
    assert stop.stopped_early == (not stop.history[-1]["within_bound"])
    assert stop.stopped_early or len(stop.history) == 7


def test_estimator_fit_predict_transform_and_determinism():
    x, y = blobs(seed=2)
    a = DCAM(n_clusters=3, random_state=0, **FAST).fit(x)
    from sklearn.metrics import normalized_mutual_info_score

    assert normalized_mutual_info_score(y, a.labels_) > 0.9
    np.testing.assert_array_equal(a.predict(x), a.labels_)
    b = DCAM(n_clusters=3, random_state=0, **FAST)
    np.testing.assert_array_equal(b.fit_predict(x), a.labels_)
    np.testing.assert_allclose(b.transform(x), a.transform(x), atol=1e-6)
    assert a.transform(x).shape == (120, 4)
    assert a.cluster_centers_.shape == (3, 4)
    assert a.recon_ratio_ <= 1.1 + 1e-9


def test_conv_estimator_on_8x8_images():
    from sklearn.datasets import load_digits

    x, _ = load_digits(return_X_y=True)
    x = x[:90]
    model = DCAM(n_clusters=3, encoder="conv", hidden=(4, 8), latent_dim=4, pretrain_epochs=2,
                 epochs=1, random_state=0).fit(x)  # fmt: skip
    assert model.encoder_spec_.image_shape == (1, 8, 8)
    assert model.transform(x).shape == (90, 4)
    assert set(np.unique(model.labels_)) <= {0, 1, 2}


def test_artifact_roundtrip_encoder_and_predictor(tmp_path):
    from clam_dist.artifacts import load_artifact, save_artifact
    from clam_dist.models.predictor import ClusterPredictor

    x, _ = blobs(seed=3)
    model = DCAM(n_clusters=3, random_state=0, **FAST).fit(x)
    art = load_artifact(save_artifact(model.to_artifact(), str(tmp_path / "dcam")))
    assert art.meta["encoder"]["kind"] == "mlp" and all(
        n.startswith("encoder.") for n in art.tensors
    )
    encoder = encoder_from_artifact(art)
    xs = ((x - art.scaler_mean) / art.scaler_scale).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(
            encoder(torch.from_numpy(xs)).numpy(), model.transform(x), atol=1e-5
        )
    predicted = ClusterPredictor.from_artifact(art).predict(x)["cluster"]
    np.testing.assert_array_equal(predicted, model.predict(x))
    art.meta["encoder"]["latent_dim"] = 7
    with pytest.raises(ValueError, match="encoder maps 10 -> 7"):
        encoder_from_artifact(art)


# -- the scikit-learn estimator contract ------------------------------------------------------

# Tiny network and few epochs so every check runs in well under a second; no check is
# expected to fail (check_array_api_input skips itself unless SCIPY_ARRAY_API is set).
CHECKED = DCAM(n_clusters=3, pretrain_epochs=2, epochs=2, hidden=(8,), latent_dim=2, random_state=0)


@parametrize_with_checks([CHECKED])
def test_sklearn_check_estimator(estimator, check):
    check(estimator)


def test_defaults_fit_predict_transform():
    """DCAM(n_clusters=..., random_state=...) from the top-level package, nothing else set."""
    from sklearn.metrics import adjusted_rand_score

    import clam_dist

    x, y = blobs(seed=5)
    model = clam_dist.DCAM(n_clusters=3, random_state=0)
    labels = model.fit_predict(x)  # one default fit (determinism: the FAST test above)
    assert adjusted_rand_score(y, labels) > 0.9
    np.testing.assert_array_equal(model.predict(x), labels)
    z = model.transform(x)
    assert z.shape == (120, model.latent_dim) and np.isfinite(z).all()


# -- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "X,kwargs,match",
    [
        (np.array([[0.0, np.nan], [1.0, 1.0], [2.0, 2.0]]), {}, "NaN"),
        (np.array([[0.0, np.inf], [1.0, 1.0], [2.0, 2.0]]), {}, "infinity"),
        (np.zeros((0, 2)), {}, "0 sample"),
        (np.array([["a", "b"], ["c", "d"]]), {}, "[Ss]tring|could not convert"),
        (np.zeros((2, 2)), {"n_clusters": 3}, "n_samples=2 should be >= n_clusters=3"),
        (np.zeros((4, 2)), {"n_clusters": 0}, "n_clusters must be an integer >= 1"),
        (np.zeros((4, 2)), {"beta": 0.0}, "beta must be a finite number > 0"),
        (np.zeros((4, 2)), {"alpha": 0.0}, r"alpha must be in \(0, 1\]"),
        (np.zeros((4, 2)), {"alpha": 1.5}, r"alpha must be in \(0, 1\]"),
        (np.zeros((4, 2)), {"encoder": "resnet"}, "encoder kind must be one of"),
        (
            np.zeros((4, 900)),
            {"encoder": "conv", "image_shape": (1, 30, 30)},
            "does not fit the conv encoder",
        ),
        (np.zeros((4, 2)), {"recon_bound": "maybe"}, "recon_bound must be one of"),
        # image shapes that do not fit the conv encoder, named in the message
        (np.zeros((4, 50)), {"encoder": "conv"}, "cannot infer an image shape from 50 features"),
        (
            np.zeros((4, 64)),
            {"encoder": "conv", "image_shape": (1, 8, 4)},
            r"image_shape \(1, 8, 4\) has 32 values but the input has 64 features",
        ),
        (
            np.zeros((4, 8, 8)),
            {"encoder": "conv"},
            r"X has shape \(4, 8, 8\): DCAM takes one flat row per sample",
        ),
        (np.zeros((4, 64)), {"image_shape": (1, 8, 8)}, "only used by the conv encoder"),
    ],
)
def test_estimator_bad_input(X, kwargs, match):
    params = {"n_clusters": 2, "pretrain_epochs": 1, "epochs": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        DCAM(**params).fit(X)


def test_predict_wrong_number_of_features():
    x, _ = blobs(k=2, n_per=10, seed=4)
    model = DCAM(n_clusters=2, random_state=0, pretrain_epochs=1, epochs=1, latent_dim=2).fit(x)
    with pytest.raises(ValueError, match="10 features"):
        model.predict(np.zeros((3, 4)))


def test_conv_predict_names_the_fitted_image_shape():
    x = np.random.default_rng(6).random((12, 64))
    model = DCAM(n_clusters=2, encoder="conv", hidden=(2, 4), latent_dim=2, pretrain_epochs=1,
                 epochs=1, random_state=0).fit(x)  # fmt: skip
    with pytest.raises(ValueError, match=r"images of shape \(C, H, W\) = \(1, 8, 8\)"):
        model.predict(np.zeros((3, 784)))  # 28x28 images into an 8x8 model
    with pytest.raises(ValueError, match=r"X has shape \(3, 8, 8\)"):
        model.transform(np.zeros((3, 8, 8)))  # unflattened images
