"""Gaussian-mixture data with known centres and labels, in memory or chunk by chunk."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def mixture_centers(d: int, k: int, separation: float, seed: int) -> np.ndarray:
    """k centres in R^d whose typical pairwise distance is ``separation`` noise std's."""
    rng = np.random.default_rng([seed, 0])
    # Random directions scaled so that E||c_i - c_j|| ~ separation (unit-variance noise).
    return (rng.normal(size=(k, d)) * separation / np.sqrt(2 * d)).astype(np.float32)


def iter_gaussian_mixture(
    n: int, d: int, k: int, separation: float = 8.0, seed: int = 0, chunk_rows: int = 100_000
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(x float32, labels int64) chunks of at most chunk_rows, for data larger than RAM.
    The same (seed, chunk_rows) always gives the same rows."""
    if min(n, d, k) < 1:
        raise ValueError(f"n, d, k must be >= 1, got n={n}, d={d}, k={k}")
    centers = mixture_centers(d, k, separation, seed)
    for i, r0 in enumerate(range(0, n, chunk_rows)):
        rows = min(chunk_rows, n - r0)
        rng = np.random.default_rng([seed, 1, i])
        labels = rng.integers(0, k, rows)
        x = centers[labels] + rng.standard_normal((rows, d), dtype=np.float32)
        yield x.astype(np.float32, copy=False), labels.astype(np.int64)


def make_gaussian_mixture(
    n: int, d: int, k: int, separation: float = 8.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x float32 (n, d), labels int64 (n,), centres float32 (k, d))."""
    parts = list(iter_gaussian_mixture(n, d, k, separation, seed))
    x = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return x, labels, mixture_centers(d, k, separation, seed)
