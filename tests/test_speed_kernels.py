"""Fast k-means and AM kernels (issue 12): same answers as the plain references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans as SkKMeans

from clam_dist.models.kmeans import (
    assign_nearest,
    kmeans_fit,
    kmeans_plus_plus,
    lloyd,
    split_empty,
)


def mixture(n=20_000, d=8, k=12, seed=0, dtype=np.float64):
    """Gaussian components of uneven size and spread (like the benchmark's data)."""
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.full(k, 2.0))
    comp = rng.choice(k, n, p=weights)
    means = rng.normal(scale=4.0, size=(k, d))
    spread = rng.uniform(0.5, 2.0, k)
    return (means[comp] + rng.normal(size=(n, d)) * spread[comp, None]).astype(dtype)


def test_assign_nearest_matches_float64_reference():
    x = torch.from_numpy(mixture(n=3000, dtype=np.float32))
    c = x[:37].clone() + 0.1
    d2, idx = assign_nearest(x, c, block_elems=37 * 500)  # several row blocks
    ref = torch.cdist(x.double(), c.double()).pow(2)
    ref_d, ref_i = ref.min(1)
    assert torch.equal(idx, ref_i)
    torch.testing.assert_close(d2.double(), ref_d, rtol=1e-4, atol=1e-3)


def test_subsampled_fit_within_2_percent_of_full_kmeans_plus_plus():
    x = torch.from_numpy(mixture())
    k = 12
    full = lloyd(x, kmeans_plus_plus(x, k, torch.Generator().manual_seed(0)))
    # 64 rows per centroid: the seeding and the first Lloyd passes see 768 of 20,000 rows.
    sub = kmeans_fit(x, k, sample_per_centroid=64, generator=torch.Generator().manual_seed(0))
    assert sub.labels.shape == (x.shape[0],)
    assert sub.inertia <= 1.02 * full.inertia
    # The reported inertia is that of the returned centres and labels.
    assert sub.inertia == pytest.approx(float(((x - sub.centers[sub.labels]) ** 2).sum()), 1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", [0, 1])
def test_lloyd_matches_sklearn_from_same_init(dtype, seed):
    x = mixture(n=5000, seed=seed, dtype=dtype)
    xt = torch.from_numpy(x)
    init = kmeans_plus_plus(xt, 12, torch.Generator().manual_seed(seed))
    ours = lloyd(xt, init)
    theirs = SkKMeans(12, init=init.numpy(), n_init=1).fit(x)
    assert abs(ours.inertia - theirs.inertia_) <= 0.01 * theirs.inertia_


def test_split_empty_splits_the_largest_cluster_symmetrically():
    centers = torch.tensor([[9.0, 9.0], [1.0, 2.0], [4.0, -3.0], [0.5, 0.5]], dtype=torch.float64)
    counts = torch.tensor([0.0, 5.0, 10.0, 3.0], dtype=torch.float64)
    new, repaired = split_empty(centers, counts)
    assert repaired == 1
    # The empty centre now sits beside the largest cluster's (index 2), the two copies
    # symmetric about where that centre was; the other centres are untouched.
    torch.testing.assert_close((new[0] + new[2]) / 2, centers[2])
    assert 0 < (new[0] - new[2]).abs().max() < 0.05
    torch.testing.assert_close(new[[1, 3]], centers[[1, 3]])


def test_lloyd_repairs_a_centroid_that_gets_no_rows():
    x = torch.from_numpy(mixture(n=4000, k=4, seed=3))
    # Centre 4 is far from every row: the first assignment leaves it empty.
    init = torch.cat([x[:4], torch.full((1, x.shape[1]), 1e3, dtype=x.dtype)])
    res = lloyd(x, init, max_iter=1)
    counts = torch.bincount(assign_nearest(x, init)[1], minlength=5)
    largest = int(counts.argmax())
    assert counts[4] == 0
    # After one update the empty centre is a split of the largest cluster's mean.
    mean_largest = x[assign_nearest(x, init)[1] == largest].mean(0)
    torch.testing.assert_close((res.centers[4] + res.centers[largest]) / 2, mean_largest)
    full = lloyd(x, init)
    assert full.labels.unique().numel() == 5


def test_warns_when_fewer_than_39_rows_per_centroid():
    x = torch.from_numpy(mixture(n=300, k=4))
    with pytest.warns(UserWarning, match=r"300 rows for 10 centroids"):
        kmeans_fit(x, 10, generator=torch.Generator().manual_seed(0))


def test_bad_init_and_k_are_named():
    x = torch.zeros(5, 2)
    with pytest.raises(ValueError, match="k=6"):
        kmeans_fit(x, 6)
    with pytest.raises(ValueError, match="init must be"):
        kmeans_fit(x, 2, init="random")


@pytest.mark.parametrize("metric", ["euclidean", "spherical"])
def test_bias_folded_chunked_step_equals_direct_step(metric):
    from clam_dist.models.am import am_step

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 16, generator=g)
    r = torch.randn(40, 16, generator=g)
    mask = (torch.rand(64, 16, generator=g) < 0.3).float()
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    rs = [r.clone().requires_grad_(True) for _ in range(2)]
    # block_elems=64*40 takes the direct path; 300 forces 64-row x 4-prototype blocks.
    outs = [
        am_step(xs[i], rs[i], 0.7, 0.3, metric, mask, block_elems=b)
        for i, b in enumerate((64 * 40, 300))
    ]
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    w = torch.randn(64, 16, generator=g)
    for out in outs:
        (out * w).sum().backward()
    torch.testing.assert_close(xs[1].grad, xs[0].grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rs[1].grad, rs[0].grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("metric", ["euclidean", "spherical"])
def test_bias_folded_chunked_step_gradcheck(metric):
    from clam_dist.models.am import am_step

    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    r = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b: am_step(a, b, 1.3, 0.4, metric, block_elems=8), (x, r)
    )


def test_seeding_rows_bound_the_seeding_cost_only_for_large_k():
    from clam_dist.models.kmeans import SEEDING_EVALUATIONS, seeding_rows

    assert seeding_rows(256) > 256 * 256  # the 256-per-centroid sample is seeded whole
    rows = seeding_rows(4096)
    assert 8 * 4096 <= rows < 256 * 4096
    assert rows * 4096 * (2 + 8) <= SEEDING_EVALUATIONS


def test_large_k_seeds_from_a_bounded_sample_and_full_iter_0_skips_the_data(monkeypatch):
    import clam_dist.models.kmeans as km

    seen = []
    real = km.kmeans_plus_plus
    monkeypatch.setattr(km, "seeding_rows", lambda k: 20 * k)
    monkeypatch.setattr(
        km, "kmeans_plus_plus", lambda xs, k, g: seen.append(len(xs)) or real(xs, k, g)
    )
    x = torch.from_numpy(mixture(n=20_000))
    res = km.kmeans_fit(
        x, 12, sample_per_centroid=256, full_iter=0, generator=torch.Generator().manual_seed(0)
    )
    assert seen == [240]  # 20 per centroid seeded, out of a 3,072-row Lloyd sample
    assert res.labels is None and res.centers.shape == (12, 8)
