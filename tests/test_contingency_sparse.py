"""The streamed contingency table is sparse (the 10M-row two-level run's driver held a
dense 1,024 classes x 65,536 clusters table several times over: 2.9 GB). Its metrics equal
scikit-learn's and the dense Hungarian method's on random tables, including the sparse
bipartite matching ACC takes for large tables, and its memory follows the pairs seen."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from clam_dist.evaluate.contingency import (
    Contingency,
    acc_from_pairs,
    ari_from_pairs,
    nmi_from_pairs,
)


def _dense_acc(y: np.ndarray, c: np.ndarray) -> float:
    classes, yi = np.unique(y, return_inverse=True)
    clusters, ci = np.unique(c, return_inverse=True)
    t = np.zeros((classes.size, clusters.size))
    np.add.at(t, (yi, ci), 1)
    i, j = linear_sum_assignment(-t)
    return t[i, j].sum() / len(y)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("shape", [(5, 40), (40, 5), (30, 30)])
def test_sparse_metrics_equal_the_dense_references(seed, shape):
    rng = np.random.default_rng(seed)
    n_classes, k = shape
    y = rng.integers(0, n_classes, 2_000)
    c = np.where(rng.random(2_000) < 0.6, y % k, rng.integers(0, k, 2_000))  # structure
    table = Contingency(k)
    for r0 in range(0, 2_000, 333):
        table.update(y[r0 : r0 + 333], c[r0 : r0 + 333])
    pairs = table.pairs()
    assert table.n == 2_000
    assert nmi_from_pairs(*pairs) == pytest.approx(normalized_mutual_info_score(y, c), abs=1e-12)
    assert ari_from_pairs(*pairs) == pytest.approx(adjusted_rand_score(y, c), abs=1e-12)
    dense = _dense_acc(y, c)
    assert acc_from_pairs(*pairs) == pytest.approx(dense, abs=1e-12)
    # The sparse matching (taken by large tables) finds the same optimum.
    assert acc_from_pairs(*pairs, dense_entries=0) == pytest.approx(dense, abs=1e-12)


def test_memory_follows_the_pairs_not_classes_times_clusters():
    """1,000 classes x 65,536 clusters, 200,000 rows: a dense table alone would be 500
    MiB; the sparse one and its metrics stay within a few tens of MiB."""
    rng = np.random.default_rng(0)
    k, n = 65_536, 200_000
    y = rng.integers(0, 1_000, n)
    c = (y * 64 + rng.integers(0, 64, n)) % k  # pure-ish clusters, 64 per class
    tracemalloc.start()
    try:
        table = Contingency(k)
        for r0 in range(0, n, 50_000):
            table.update(y[r0 : r0 + 50_000], c[r0 : r0 + 50_000])
        pairs = table.pairs()
        metrics = nmi_from_pairs(*pairs), ari_from_pairs(*pairs), acc_from_pairs(*pairs)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    assert metrics[0] == pytest.approx(normalized_mutual_info_score(y, c), abs=1e-9)
    assert metrics[1] == pytest.approx(adjusted_rand_score(y, c), abs=1e-9)
    assert metrics[2] == pytest.approx(_dense_acc(y, c), abs=1e-12)
