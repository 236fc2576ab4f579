"""k-means baselines: scikit-learn parity, k-means++/k-means|| seeding, mini-batch math."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans as SkKMeans

from clam_dist.models.kmeans import (
    apply_lloyd,
    apply_minibatch,
    apply_sums_counts,
    batch_sums_counts,
    kmeans_parallel_init,
    kmeans_plus_plus,
    lloyd,
    minibatch_kmeans,
    minibatch_update,
)


def blobs(n=600, d=5, k=6, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=6.0, size=(k, d))
    labels = rng.integers(0, k, n)
    return (centers[labels] + rng.normal(size=(n, d))).astype(np.float64), labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lloyd_matches_sklearn_inertia_on_same_init(seed):
    x, _ = blobs(seed=seed)
    xt = torch.from_numpy(x)
    init = kmeans_plus_plus(xt, 6, torch.Generator().manual_seed(seed))
    ours = lloyd(xt, init)
    theirs = SkKMeans(6, init=init.numpy(), n_init=1).fit(x)
    assert abs(ours.inertia - theirs.inertia_) <= 0.01 * theirs.inertia_
    assert ours.labels.unique().numel() == 6


def test_lloyd_on_paper_data_matches_sklearn():
    from clam_dist.datasets.clam_paper import load_clam_paper, standardize

    x, _ = load_clam_paper("segment")
    x = standardize(x)
    init = kmeans_plus_plus(torch.from_numpy(x), 7, torch.Generator().manual_seed(0))
    ours = lloyd(torch.from_numpy(x), init)
    theirs = SkKMeans(7, init=init.numpy(), n_init=1).fit(x)
    assert abs(ours.inertia - theirs.inertia_) <= 0.01 * theirs.inertia_


def test_kmeans_plus_plus_picks_distinct_data_points_spread_out():
    x, _ = blobs()
    xt = torch.from_numpy(x)
    centers = kmeans_plus_plus(xt, 6, torch.Generator().manual_seed(0))
    # every centre is a data point, all distinct
    d = torch.cdist(centers, xt)
    assert torch.all(d.min(1).values < 1e-5)
    assert torch.unique(centers, dim=0).shape[0] == 6
    # far better than picking random points
    rand = xt[torch.randperm(len(xt), generator=torch.Generator().manual_seed(0))[:6]]
    assert (
        torch.cdist(xt, centers).min(1).values.pow(2).sum()
        < torch.cdist(xt, rand).min(1).values.pow(2).sum()
    )


def test_kmeans_parallel_gives_k_distinct_centres_close_to_lloyd_quality():
    x, _ = blobs()
    xt = torch.from_numpy(x)
    centers = kmeans_parallel_init(xt, 6, generator=torch.Generator().manual_seed(0))
    assert centers.shape == (6, 5) and torch.unique(centers, dim=0).shape[0] == 6
    a = lloyd(xt, centers).inertia
    b = lloyd(xt, kmeans_plus_plus(xt, 6, torch.Generator().manual_seed(0))).inertia
    assert a <= 1.5 * b


def test_sums_counts_are_additive_across_shards():
    """What the distributed trainer relies on: all-reduced shard sums == full-batch sums."""
    x, _ = blobs()
    xt = torch.from_numpy(x)
    centers = xt[:6].clone()
    s_full, c_full, _ = batch_sums_counts(xt, centers)
    parts = [batch_sums_counts(xt[i::3], centers) for i in range(3)]
    torch.testing.assert_close(sum(p[0] for p in parts), s_full)
    torch.testing.assert_close(sum(p[1] for p in parts), c_full)
    torch.testing.assert_close(
        apply_lloyd(centers, s_full, c_full)[c_full > 0], (s_full / c_full[:, None])[c_full > 0]
    )


def test_minibatch_update_is_running_mean():
    centers = torch.zeros(2, 1, dtype=torch.float64)
    total = torch.zeros(2, dtype=torch.float64)
    pts = [torch.tensor([[1.0]]), torch.tensor([[3.0]]), torch.tensor([[5.0]])]
    for p in pts:
        s, c, _ = batch_sums_counts(p.double(), torch.tensor([[0.0], [100.0]], dtype=torch.float64))
        centers, total = apply_minibatch(centers, total, s, c)
    assert centers[0, 0].item() == pytest.approx(3.0)
    assert total.tolist() == [3.0, 0.0]


def test_minibatch_kmeans_close_to_lloyd():
    x, _ = blobs()
    xt = torch.from_numpy(x)
    init = kmeans_plus_plus(xt, 6, torch.Generator().manual_seed(0))
    mb = minibatch_kmeans(
        xt, init, batch_size=128, max_steps=100, generator=torch.Generator().manual_seed(0)
    )
    assert mb.inertia <= 1.1 * lloyd(xt, init).inertia


def test_bad_k_is_named():
    with pytest.raises(ValueError, match="k="):
        kmeans_plus_plus(torch.zeros(3, 2), 5)


def test_lloyd_reseeds_empty_clusters_and_returns_k():
    x, _ = blobs(n=300, k=4, seed=3)
    xt = torch.from_numpy(x)
    # Two centres far away from every point: both would stay empty without re-seeding.
    init = torch.cat([xt[:3], torch.full((2, x.shape[1]), 1e3, dtype=xt.dtype)])
    res = lloyd(xt, init)
    assert res.labels.unique().numel() == 5
    assert res.inertia < lloyd(xt, xt[:3].clone()).inertia


def test_minibatch_update_equals_sums_counts_then_apply():
    x, _ = blobs(seed=4)
    xt = torch.from_numpy(x)
    centers, total = xt[:6].clone(), torch.zeros(6, dtype=xt.dtype)
    a = minibatch_update(centers, total, xt[:100])
    s, c, _ = batch_sums_counts(xt[:100], centers)
    b = apply_sums_counts(centers, total, s, c)
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])
    assert a[1].sum().item() == 100


def test_kmeans_plus_plus_is_deterministic_for_a_generator():
    x, _ = blobs(seed=5)
    xt = torch.from_numpy(x)
    a = kmeans_plus_plus(xt, 6, torch.Generator().manual_seed(3))
    b = kmeans_plus_plus(xt, 6, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
