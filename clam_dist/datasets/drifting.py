"""A synthetic stream of daily partitions with known drift (the schedule's benchmark and
tests): a Gaussian mixture of k components, stable except that from ``move_day`` on
``moved`` components sit elsewhere, and from ``new_day`` on ``added`` new components
appear (each as frequent as any other). Rows of a day are a function of (seed, day)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clam_dist.datasets.synthetic import mixture_centers


@dataclass(frozen=True)
class DriftingStream:
    d: int = 32
    k: int = 64
    rows: int = 200_000
    separation: float = 8.0
    move_day: int = 4
    moved: int = 3
    new_day: int = 7
    added: int = 2
    seed: int = 0

    def centers(self, day: int) -> np.ndarray:
        """The components present on ``day`` (1-based), new ones last."""
        c = mixture_centers(self.d, self.k + self.added, self.separation, self.seed)
        base, extra = c[: self.k].copy(), c[self.k :]
        if day >= self.move_day and self.moved:
            rng = np.random.default_rng([self.seed, 7])
            shift = rng.normal(size=(self.moved, self.d))
            shift *= self.separation / np.linalg.norm(shift, axis=1, keepdims=True)
            base[: self.moved] += shift.astype(np.float32)
        return np.vstack([base, extra]) if day >= self.new_day else base

    def partition(self, day: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(x float32, component labels, int64 ids unique across days) of ``day``."""
        centers = self.centers(day)
        rng = np.random.default_rng([self.seed, 1, day])
        labels = rng.integers(0, len(centers), self.rows)
        x = centers[labels] + rng.standard_normal((self.rows, self.d), dtype=np.float32)
        ids = np.arange(self.rows, dtype=np.int64) + day * 10**9
        return x.astype(np.float32), labels.astype(np.int64), ids

    def unchanged(self, labels: np.ndarray) -> np.ndarray:
        """Rows of components that never moved and were there from day 1."""
        return (labels >= self.moved) & (labels < self.k)


def day_key(day: int) -> str:
    """The partition key of ``day``: 2026-12-01 is day 1."""
    return f"2026-12-{day:02d}"
