"""External clustering metrics (NMI, ARI, ACC) from a streamed contingency table.

The (classes x clusters) counts are all these metrics need. They are kept SPARSE, as the
(class, cluster) pairs that occur and their counts, built batch by batch: memory grows
with the pairs seen (at most the rows), not with classes x clusters. A dense table is
1,024 classes x 65,536 clusters x 8 bytes = 512 MiB, held several times over by the
update and the metrics (and 1M classes, as in deduplication ground truth, would not fit
at all). The metrics
are exact over every assigned row; formulas match scikit-learn's (NMI with the
arithmetic mean). ACC's one-to-one matching runs on a dense table only while it is
small, else as a sparse bipartite matching with the same optimum.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

# Most entries of the dense (classes x clusters seen) table ACC's Hungarian runs on
# (32 MiB of float64); larger tables take the sparse matching.
DENSE_ACC_ENTRIES = 1 << 22


class Contingency:
    """Counts of (true label, cluster) pairs; labels of any hashable type."""

    def __init__(self, k: int):
        self.k = int(k)
        self.codes: dict = {}
        self._keys = np.zeros(0, np.int64)  # class code * k + cluster, sorted, unique
        self._counts = np.zeros(0, np.int64)

    def update(self, labels: np.ndarray, clusters: np.ndarray) -> None:
        labels = np.asarray(labels)
        clusters = np.asarray(clusters, dtype=np.int64)
        if labels.size == 0:
            return
        uniq, inv = np.unique(labels, return_inverse=True)
        mapped = np.array([self.codes.setdefault(_key(u), len(self.codes)) for u in uniq])
        keys, counts = np.unique(mapped[inv.reshape(-1)] * self.k + clusters, return_counts=True)
        if self._keys.size:
            keys, where = np.unique(np.concatenate([self._keys, keys]), return_inverse=True)
            both = np.concatenate([self._counts, counts])
            counts = np.zeros(keys.size, np.int64)
            np.add.at(counts, where, both)
        self._keys, self._counts = keys, counts.astype(np.int64)

    def pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(class code, cluster, count) of every pair that occurred."""
        return self._keys // self.k, self._keys % self.k, self._counts

    @property
    def n_classes(self) -> int:
        return len(self.codes)

    @property
    def n(self) -> int:
        return int(self._counts.sum())

    @property
    def table(self) -> np.ndarray:
        """The dense (classes x k) table (small cases only: it is classes x k)."""
        out = np.zeros((self.n_classes, self.k), np.int64)
        rows, cols, counts = self.pairs()
        out[rows, cols] = counts
        return out


def _key(value):
    """numpy scalars -> python values, so 3 and np.int64(3) are one class."""
    return value.item() if hasattr(value, "item") else value


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0].astype(np.float64)
    p /= p.sum()
    return float(-(p * np.log(p)).sum())


def _pairs_of(table: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows, cols = np.nonzero(table)
    return rows, cols, np.asarray(table)[rows, cols]


def _marginals(rows: np.ndarray, cols: np.ndarray, counts: np.ndarray):
    """Per-class and per-cluster totals of the pairs (classes and clusters with none are
    simply absent), as float64."""
    w = counts.astype(np.float64)
    a = np.bincount(rows, weights=w) if rows.size else np.zeros(0)
    b = np.bincount(cols, weights=w) if cols.size else np.zeros(0)
    return w, a[a > 0], b[b > 0], a, b


def nmi_from_pairs(rows: np.ndarray, cols: np.ndarray, counts: np.ndarray) -> float:
    keep = counts > 0
    rows, cols, counts = rows[keep], cols[keep], counts[keep]
    w, a, b, a_full, b_full = _marginals(rows, cols, counts)
    n = w.sum()
    if n == 0:
        return float("nan")
    if a.size == 1 and b.size == 1:
        return 1.0  # one class, one cluster: identical partitions (as scikit-learn)
    h_true, h_pred = _entropy(a), _entropy(b)
    if h_true == 0 or h_pred == 0:
        return 0.0
    mi = float((w / n * np.log(w * n / (a_full[rows] * b_full[cols]))).sum())
    return float(mi / ((h_true + h_pred) / 2))


def ari_from_pairs(rows: np.ndarray, cols: np.ndarray, counts: np.ndarray) -> float:
    w, a, b, _, _ = _marginals(rows, cols, counts)
    n = w.sum()

    def comb2(v):
        return (v * (v - 1) / 2).sum()

    sum_cells, sum_rows, sum_cols = comb2(w), comb2(a), comb2(b)
    total = n * (n - 1) / 2
    if total == 0:
        return 1.0
    expected = sum_rows * sum_cols / total
    max_index = (sum_rows + sum_cols) / 2
    if max_index == expected:  # both partitions trivial: identical (as scikit-learn)
        return 1.0
    return float((sum_cells - expected) / (max_index - expected))


def acc_from_pairs(
    rows: np.ndarray, cols: np.ndarray, counts: np.ndarray, dense_entries: int = DENSE_ACC_ENTRIES
) -> float:
    """Best one-to-one matching of clusters to classes, as a share of rows.

    Only classes and clusters that occur take part (the others add nothing to any
    matching). A small table goes to the Hungarian method dense; a large one to scipy's
    sparse full bipartite matching, with a private dummy cluster per class (weight
    0.25 / classes, so all dummies together weigh less than one row) so that a full
    matching always exists: a class matched to its dummy is a class left unmatched, and
    the optimum over integer counts is the dense method's."""
    keep = counts > 0
    rows, cols, counts = rows[keep], cols[keep], counts[keep]
    n = int(counts.sum())
    if n == 0:
        return float("nan")
    class_ids, r = np.unique(rows, return_inverse=True)
    cluster_ids, c = np.unique(cols, return_inverse=True)
    n_cls, n_clu = class_ids.size, cluster_ids.size
    if n_cls * n_clu <= dense_entries:
        dense = np.zeros((n_cls, n_clu))
        dense[r, c] = counts
        i, j = linear_sum_assignment(-dense)
        return float(dense[i, j].sum() / n)
    dummy = 0.25 / n_cls
    graph = csr_matrix(
        (
            np.concatenate([counts.astype(np.float64), np.full(n_cls, dummy)]),
            (np.concatenate([r, np.arange(n_cls)]), np.concatenate([c, n_clu + np.arange(n_cls)])),
        ),
        shape=(n_cls, n_clu + n_cls),
    )
    matched_cols = min_weight_full_bipartite_matching(graph, maximize=True)[1]
    weights = np.asarray(graph[np.arange(n_cls), matched_cols]).ravel()
    return float(weights[matched_cols < n_clu].sum() / n)


# The dense-table forms (a (classes x clusters) count array), for callers that have one.
def nmi_from_table(table: np.ndarray) -> float:
    return nmi_from_pairs(*_pairs_of(table))


def ari_from_table(table: np.ndarray) -> float:
    return ari_from_pairs(*_pairs_of(table))


def acc_from_table(table: np.ndarray) -> float:
    """Best one-to-one matching of clusters to classes (Hungarian), as a share of rows."""
    return acc_from_pairs(*_pairs_of(table))
