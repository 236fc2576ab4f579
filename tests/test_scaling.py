"""The one scaling rule (clam_dist/models/scaling.py) against a float64 reference, and
the training job's scaler (Dask statistics + the run's sample) agreeing with it."""

from __future__ import annotations

import numpy as np
import pytest

from clam_dist.data.stats import FeatureStats
from clam_dist.models.scaling import scaling_from_stats, scaling_of_rows
from clam_dist.train.sources import scaler


def _stats(x: np.ndarray) -> FeatureStats:
    return FeatureStats(len(x), x.mean(0), x.std(0), x.min(0), x.max(0))


def test_auto_keeps_intensities_scales_pixel_levels_and_standardises_the_rest():
    rng = np.random.default_rng(0)
    unit = rng.uniform(0, 1, (50, 6))
    mean, scale = scaling_of_rows(unit, "auto")
    assert np.all(mean == 0) and np.all(scale == 1)

    levels = rng.integers(0, 17, (50, 6)).astype(np.float64)
    levels[:, 0] = 0.0  # an always-blank border pixel
    mean, scale = scaling_of_rows(levels, "auto")
    assert np.all(mean == 0) and np.all(scale == levels.max())  # one scale for all pixels

    general = rng.normal(3.0, 2.0, (50, 6))
    general[:, 2] = 7.0  # constant: centred, never divided by 0
    mean, scale = scaling_of_rows(general, "auto")
    np.testing.assert_allclose(mean, general.mean(0))
    expected = general.std(0)
    expected[2] = 1.0
    np.testing.assert_allclose(scale, expected)
    z = (general - mean) / scale
    assert np.all(np.isfinite(z)) and np.all(z[:, 2] == 0)

    fractional = levels + 0.5  # not whole numbers: not pixel levels
    assert not np.all(scaling_of_rows(fractional, "auto")[1] == fractional.max())


def test_true_false_and_bad_values():
    x = np.array([[0.0, 2.0], [1.0, 4.0], [1.0, 6.0]])
    mean, scale = scaling_of_rows(x, True)
    np.testing.assert_allclose(mean, x.mean(0))
    np.testing.assert_allclose(scale, x.std(0))
    mean, scale = scaling_of_rows(x, False)
    assert np.all(mean == 0) and np.all(scale == 1)
    for bad in ("yes", 1, None):
        with pytest.raises(ValueError, match="standardize must be"):
            scaling_of_rows(x, bad)


@pytest.mark.parametrize("standardize", ["auto", True, False])
def test_the_jobs_scaler_equals_the_rule_on_the_rows(standardize):
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (200, 8)).astype(np.float64)
    for x in (pixels, pixels / 255.0, rng.normal(size=(200, 8))):
        got = scaler(_stats(x), standardize, x[:50])
        want = scaling_of_rows(x, standardize)
        np.testing.assert_allclose(got[0], want[0])
        np.testing.assert_allclose(got[1], want[1])
    assert np.all(scaling_from_stats(*[np.zeros(3)] * 4, True, "auto")[1] == 1)
