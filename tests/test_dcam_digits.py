"""DCAM on images: the data-driven input scaling, the conv encoder's image shape, and
one quick check that the defaults cluster scikit-learn's digits about as well as
k-means on the pixels (the 5-seed comparison is jobs/bench_dcam.py's)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clam_dist import DCAM
from clam_dist.methods.dcam.config import DCAMSection, default_hidden
from clam_dist.methods.dcam.model import EncoderSpec, infer_image_shape, input_scaling

# -- standardize="auto" -----------------------------------------------------------------------


def test_auto_keeps_unit_interval_pixels():
    rng = np.random.default_rng(0)
    x = rng.random((20, 16))
    x[:, 0] = 0.0  # an always-blank pixel
    assert input_scaling(x, "auto") is None


@pytest.mark.parametrize("top", [16, 255])
def test_auto_scales_integer_pixel_levels_by_one_factor(top):
    rng = np.random.default_rng(1)
    x = rng.integers(0, top + 1, size=(30, 16)).astype(float)
    x[:, 3] = 0.0  # constant column
    x[0, 0] = top
    mean, scale = input_scaling(x, "auto")
    np.testing.assert_array_equal(mean, 0.0)
    np.testing.assert_array_equal(scale, float(top))
    z = (x - mean) / scale
    assert z.min() >= 0.0 and z.max() == 1.0


def test_auto_standardises_general_data_and_constant_columns_stay_finite():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(40, 5)) * [1.0, 10.0, 0.1, 1.0, 1.0] + 3.0
    x[:, 3] = 7.5  # constant
    x[:, 4] = 1e-30  # constant, tiny
    mean, scale = input_scaling(x, "auto")
    z = (x - mean) / scale
    assert np.isfinite(z).all()
    np.testing.assert_allclose(z[:, :3].mean(0), 0.0, atol=1e-9)
    np.testing.assert_allclose(z[:, :3].std(0), 1.0, rtol=1e-9)
    np.testing.assert_allclose(z[:, 3:], 0.0, atol=1e-12)
    # non-integer values above 1 are not pixel levels; negative values neither
    assert input_scaling(np.array([[0.5, 1.5], [0.0, 2.0]]), "auto") is not None
    assert input_scaling(np.array([[-1.0, 1.0], [0.0, 0.5]]), "auto") is not None


def test_explicit_standardize_values():
    x = np.array([[0.0, 0.2], [1.0, 0.2], [0.5, 0.2]])
    assert input_scaling(x, False) is None
    mean, scale = input_scaling(x, True)
    assert np.isfinite((x - mean) / scale).all() and scale[1] == 1.0
    with pytest.raises(ValueError, match="standardize"):
        input_scaling(x, "yes")


def test_estimator_applies_the_rule_and_never_makes_nan():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 17, size=(60, 16)).astype(float)
    x[:, :4] = 0.0  # blank border
    fast = {"pretrain_epochs": 1, "epochs": 1, "hidden": (8,), "latent_dim": 2}
    model = DCAM(n_clusters=3, random_state=0, **fast).fit(x)
    np.testing.assert_array_equal(model.scaler_scale_, 16.0)
    assert np.isfinite(model.transform(x)).all()
    unit = DCAM(n_clusters=3, random_state=0, **fast).fit(x / 16.0)
    assert unit.scaler_mean_ is None and unit.scaler_scale_ is None
    # the same data as levels or as intensities: the same model
    np.testing.assert_allclose(model.transform(x), unit.transform(x / 16.0), atol=1e-5)


# -- the conv encoder's image shape ---------------------------------------------------------------


@pytest.mark.parametrize(
    "d, shape", [(64, (1, 8, 8)), (784, (1, 28, 28)), (3072, (3, 32, 32)), (16, (1, 4, 4))]
)
def test_image_shape_is_inferred(d, shape):
    assert infer_image_shape(d) == shape
    assert EncoderSpec("conv", d, hidden=default_hidden("conv")).image_shape == shape


@pytest.mark.parametrize("d", [36, 63, 100])
def test_image_shape_that_cannot_be_inferred_asks_for_it(d):
    with pytest.raises(ValueError, match=r"pass image_shape=\(C, H, W\)"):
        infer_image_shape(d)
    with pytest.raises(ValueError, match="image_shape"):
        DCAM(n_clusters=2, encoder="conv", pretrain_epochs=1, epochs=1).fit(
            np.random.default_rng(0).random((8, d))
        )


def test_conv_estimator_infers_the_shape_of_digits_sized_rows():
    x = np.random.default_rng(4).random((24, 64))
    model = DCAM(n_clusters=2, encoder="conv", hidden=(2, 4), latent_dim=2, pretrain_epochs=1,
                 epochs=1, random_state=0).fit(x)  # fmt: skip
    assert model.encoder_spec_.image_shape == (1, 8, 8)


# -- one place for the defaults ---------------------------------------------------------------


def test_the_estimator_fit_and_trial_read_the_sections_defaults():
    import inspect
    from dataclasses import fields

    from clam_dist.methods.dcam.model import DCAMConfig
    from clam_dist.methods.dcam.trial import DCAMParams

    section = DCAMSection()
    params = inspect.signature(DCAM.__init__).parameters
    config = {f.name: f.default for f in fields(DCAMConfig)}
    trial = {f.name: f.default for f in fields(DCAMParams)}
    for knob in ("encoder", "latent_dim", "pretrain_epochs", "recon_weight"):
        assert params[knob].default == getattr(section, knob), knob
        assert trial[knob] == getattr(section, knob), knob
    for knob in ("pretrain_epochs", "recon_weight", "recon_tolerance", "recon_bound"):
        assert config[knob] == getattr(section, knob), knob
    assert params["hidden"].default is None and section.hidden is None
    assert params["standardize"].default == "auto"


# -- quality on digits (quick, one seed) ------------------------------------------------------


@pytest.mark.slow
def test_defaults_cluster_digits_about_as_well_as_kmeans_on_pixels():
    """One seed, mlp defaults: NMI at least k-means' on the pixels minus 0.03 (measured
    0.786 against 0.746 on seed 0; ~25 s on one thread; the 5-seed table is
    jobs/bench_dcam.py's)."""
    from sklearn.datasets import load_digits

    from clam_dist import KMeans
    from clam_dist.metrics import nmi

    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        labels = DCAM(n_clusters=10, random_state=0).fit_predict(x)
    finally:
        torch.set_num_threads(threads)
    km = KMeans(10, n_init=10, random_state=0).fit(x)
    assert nmi(y, labels) >= nmi(y, km.labels_) - 0.03
