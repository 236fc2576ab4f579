"""How rows are scaled before a method sees them: one rule for every entry point (the
DCAM estimator, the training job, the pipeline's in-driver fits, run-partition).

``standardize`` is True (per-feature standardisation), False (the rows as they are) or
"auto" (decided from the data):

- every value in [0, 1] (intensities): the rows as they are;
- every value an integer in [0, 255] (raw pixel levels: 0..16 for scikit-learn's digits,
  0..255 for 8-bit images): ONE scale for every feature, the largest value, so the rows
  land in [0, 1] and an image keeps its geometry (per-pixel standardisation makes the
  always-blank border pixels dominate: issue 29);
- anything else: per-feature standardisation.

A constant feature is centred and never divided by 0 (scale 1), so no NaN or inf comes
out of it. Pure numpy.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Standardize = bool | Literal["auto"]

# Integer levels up to this read as pixels under "auto".
PIXEL_MAX = 255.0


def _checked(standardize) -> Standardize:
    if standardize == "auto" and isinstance(standardize, str):
        return "auto"
    if isinstance(standardize, (bool, np.bool_)):
        return bool(standardize)
    raise ValueError(f"standardize must be 'auto', True or False, got {standardize!r}")


def feature_scale(std: np.ndarray, magnitude: np.ndarray | None = None) -> np.ndarray:
    """Per-feature divisor: the std, or 1 where a feature is constant (std 0, not finite,
    or only float noise against the feature's ``magnitude``)."""
    std = np.asarray(std, dtype=np.float64)
    floor = 0.0 if magnitude is None else 1e-12 * np.maximum(1.0, np.abs(magnitude))
    return np.where(np.isfinite(std) & (std > floor), std, 1.0)


def scaling_from_stats(
    mean: np.ndarray,
    std: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    integral: bool,
    standardize: Standardize,
) -> tuple[np.ndarray, np.ndarray]:
    """(mean, scale) of ``(x - mean) / scale`` from per-feature statistics (the identity is
    zeros and ones). ``integral``: every value is a whole number (decides "auto"'s pixel
    case; a caller that cannot tell passes False)."""
    standardize = _checked(standardize)
    mean = np.asarray(mean, dtype=np.float64)
    d = mean.shape[0]
    if standardize == "auto":
        low, high = float(np.min(lo)), float(np.max(hi))
        if low >= 0.0 and high <= 1.0:
            return np.zeros(d), np.ones(d)
        if low >= 0.0 and high <= PIXEL_MAX and integral:
            return np.zeros(d), np.full(d, high)
        standardize = True
    if not standardize:
        return np.zeros(d), np.ones(d)
    return mean, feature_scale(std, np.maximum(np.abs(lo), np.abs(hi)))


def scaling_of_rows(x: np.ndarray, standardize: Standardize) -> tuple[np.ndarray, np.ndarray]:
    """(mean, scale) decided from the rows ``x`` themselves (n, d)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"rows must be a non-empty 2-D array, got shape {x.shape}")
    return scaling_from_stats(
        x.mean(axis=0),
        x.std(axis=0),
        x.min(axis=0),
        x.max(axis=0),
        bool(np.all(x == np.round(x))),
        standardize,
    )


def is_identity(mean: np.ndarray, scale: np.ndarray) -> bool:
    return bool(np.all(np.asarray(mean) == 0.0) and np.all(np.asarray(scale) == 1.0))
