"""External clustering metrics (NMI, ARI, ACC) from a streamed contingency table.

A (classes x clusters) count table is all these metrics need, and it is built batch by
batch in O(classes x clusters) memory, so they are exact over every assigned row however
many rows there are. Formulas match scikit-learn's (NMI with the arithmetic mean).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


class Contingency:
    """Counts of (true label, cluster) pairs; labels of any hashable type."""

    def __init__(self, k: int):
        self.k = int(k)
        self.codes: dict = {}
        self.table = np.zeros((0, self.k), dtype=np.int64)

    def update(self, labels: np.ndarray, clusters: np.ndarray) -> None:
        labels = np.asarray(labels)
        clusters = np.asarray(clusters, dtype=np.int64)
        if labels.size == 0:
            return
        uniq, inv = np.unique(labels, return_inverse=True)
        mapped = np.array([self.codes.setdefault(_key(u), len(self.codes)) for u in uniq])
        rows = mapped[inv.reshape(-1)]
        n_rows = len(self.codes)
        if n_rows > self.table.shape[0]:
            grown = np.zeros((n_rows, self.k), dtype=np.int64)
            grown[: self.table.shape[0]] = self.table
            self.table = grown
        self.table += np.bincount(rows * self.k + clusters, minlength=n_rows * self.k).reshape(
            n_rows, self.k
        )

    @property
    def n(self) -> int:
        return int(self.table.sum())


def _key(value):
    """numpy scalars -> python values, so 3 and np.int64(3) are one class."""
    return value.item() if hasattr(value, "item") else value


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0].astype(np.float64)
    p /= p.sum()
    return float(-(p * np.log(p)).sum())


def nmi_from_table(table: np.ndarray) -> float:
    t = table[table.sum(1) > 0][:, table.sum(0) > 0].astype(np.float64)
    n = t.sum()
    if n == 0:
        return float("nan")
    h_true, h_pred = _entropy(t.sum(1)), _entropy(t.sum(0))
    if t.shape[0] == 1 and t.shape[1] == 1:
        return 1.0  # one class, one cluster: identical partitions (as scikit-learn)
    if h_true == 0 or h_pred == 0:
        return 0.0
    nz = t > 0
    outer = np.outer(t.sum(1), t.sum(0))
    mi = float((t[nz] / n * np.log(t[nz] * n / outer[nz])).sum())
    return float(mi / ((h_true + h_pred) / 2))


def ari_from_table(table: np.ndarray) -> float:
    t = table.astype(np.float64)
    n = t.sum()

    def comb2(v):
        return (v * (v - 1) / 2).sum()

    sum_cells, sum_rows, sum_cols = comb2(t), comb2(t.sum(1)), comb2(t.sum(0))
    total = n * (n - 1) / 2
    if total == 0:
        return 1.0
    expected = sum_rows * sum_cols / total
    max_index = (sum_rows + sum_cols) / 2
    if max_index == expected:  # both partitions trivial: identical (as scikit-learn)
        return 1.0
    return float((sum_cells - expected) / (max_index - expected))


def acc_from_table(table: np.ndarray) -> float:
    """Best one-to-one matching of clusters to classes (Hungarian), as a share of rows."""
    n = table.sum()
    if n == 0:
        return float("nan")
    rows, cols = linear_sum_assignment(-table)
    return float(table[rows, cols].sum() / n)
