"""Centroid swaps (models/kmeans_swaps.py): out of Lloyd's local minima, never worse."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clam_dist.models.kmeans import kmeans_fit, lloyd, row_sq_norms
from clam_dist.models.kmeans_swaps import nearest_two, plan_swaps, refine_by_swaps, split_in_two


def blobs(centres, per_blob, spread=0.3, seed=0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    centres = np.asarray(centres, dtype=np.float64)
    rows = [c + spread * rng.standard_normal((per_blob, centres.shape[1])) for c in centres]
    return torch.from_numpy(np.concatenate(rows))


def test_nearest_two_matches_float64_reference():
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(700, 6, generator=g), torch.randn(9, 6, generator=g)
    first, second, idx = nearest_two(x, c, row_sq_norms(x), block_elems=9 * 100)  # 7 blocks
    ref = torch.cdist(x.double(), c.double()).pow(2).sort(dim=1)
    torch.testing.assert_close(first.double(), ref.values[:, 0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(second.double(), ref.values[:, 1], rtol=1e-4, atol=1e-4)
    assert torch.equal(idx, ref.indices[:, 0])


def test_split_in_two_separates_two_groups():
    x = blobs([[0.0, 0.0], [10.0, 0.0]], 50)
    after, a, b = split_in_two(x, torch.zeros(100, dtype=torch.long), x.mean(0, keepdim=True))
    found = sorted([float(a[0, 0]), float(b[0, 0])])
    assert found == pytest.approx([0.0, 10.0], abs=0.2)
    halves = (x[:50] - x[:50].mean(0)).pow(2).sum() + (x[50:] - x[50:].mean(0)).pow(2).sum()
    assert float(after[0]) == pytest.approx(float(halves), rel=1e-9)


def test_split_in_two_treats_each_cluster_alone():
    # Three clusters split at once, rows interleaved, equal each split on its own.
    groups = [
        blobs(c, 40, seed=i)
        for i, c in enumerate([[[0, 0], [6, 1]], [[3, 9], [3, 15]], [[-8, 2], [-8, 2.5]]])
    ]
    rows = torch.cat(groups)
    segment = torch.arange(3).repeat_interleave(80)
    perm = torch.randperm(240, generator=torch.Generator().manual_seed(0))
    centres = torch.stack([g.mean(0) for g in groups])
    after, a, b = split_in_two(rows[perm], segment[perm], centres)
    for i, g in enumerate(groups):
        alone = split_in_two(g, torch.zeros(80, dtype=torch.long), centres[i : i + 1])
        assert float(after[i]) == pytest.approx(float(alone[0][0]), rel=1e-6)
        torch.testing.assert_close(a[i], alone[1][0])
        torch.testing.assert_close(b[i], alone[2][0])


# Four tight groups in a row; the start puts two centroids in group 0 and one between
# groups 2 and 3: every centroid is the mean of its rows, so Lloyd cannot leave it.
GROUPS = [[0.0, 0.0], [10.0, 0.0], [20.0, 0.0], [30.0, 0.0]]
STUCK = torch.tensor([[-0.2, 0.0], [0.2, 0.0], [10.0, 0.0], [25.0, 0.0]], dtype=torch.float64)


def test_a_stuck_lloyd_is_freed_by_one_swap():
    x = blobs(GROUPS, 100)
    x_sq = row_sq_norms(x)
    stuck = lloyd(x, STUCK)
    assert stuck.inertia > 4000  # the pair of groups sharing one centroid
    proposal, made, gain = plan_swaps(x, stuck, x_sq, max_swaps=2)
    kept = lloyd(x, STUCK, keep_second=True)  # the same plan from Lloyd's own distances
    assert torch.equal(plan_swaps(x, kept, x_sq, max_swaps=2)[0], proposal)
    assert made == 1 and gain > 0
    freed = refine_by_swaps(
        x, stuck, lambda c: lloyd(x, c), x_sq, rounds=3, swap_fraction=0.5, tol=1e-4
    )
    optimum = sum(
        float((x[i : i + 100] - x[i : i + 100].mean(0)).pow(2).sum()) for i in (0, 100, 200, 300)
    )
    assert freed.inertia == pytest.approx(optimum, rel=1e-9)
    assert sorted(freed.centers[:, 0].round().tolist()) == [0.0, 10.0, 20.0, 30.0]
    # The reported labels and inertia are those of the returned centres.
    assert freed.inertia == pytest.approx(float((x - freed.centers[freed.labels]).pow(2).sum()))


def test_refinement_never_returns_a_worse_result():
    # At the optimum no swap is profitable: the start comes back unchanged.
    x = blobs(GROUPS, 60, seed=1)
    x_sq = row_sq_norms(x)
    best = lloyd(x, torch.tensor(GROUPS, dtype=torch.float64))
    calls = []
    out = refine_by_swaps(
        x,
        best,
        lambda c: calls.append(1) or lloyd(x, c),
        x_sq,
        rounds=3,
        swap_fraction=0.5,
        tol=1e-4,
    )
    assert out is best and calls == []


def test_kmeans_fit_with_swaps_beats_plain_lloyd_on_an_uneven_mixture():
    rng = np.random.default_rng(3)
    comp = rng.choice(40, 20_000, p=rng.dirichlet(np.full(40, 2.0)))
    means, spread = rng.normal(scale=4.0, size=(40, 8)), rng.uniform(0.5, 2.0, 40)
    x = torch.from_numpy(means[comp] + rng.normal(size=(20_000, 8)) * spread[comp, None])
    plain = kmeans_fit(x, 40, swap_rounds=0, generator=torch.Generator().manual_seed(0))
    swapped = kmeans_fit(x, 40, generator=torch.Generator().manual_seed(0))
    assert swapped.inertia < plain.inertia
    again = kmeans_fit(x, 40, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.labels, swapped.labels)  # deterministic from the seed


def test_estimator_passes_swap_rounds_and_names_a_bad_value():
    from clam_dist import KMeans

    x = blobs(GROUPS, 50, seed=2).numpy()
    with pytest.raises(ValueError, match="swap_rounds must be an integer >= 0, got -1"):
        KMeans(4, swap_rounds=-1).fit(x)
    plain = KMeans(4, swap_rounds=0, random_state=0).fit(x)
    swapped = KMeans(4, random_state=0).fit(x)
    assert swapped.inertia_ <= plain.inertia_ * (1 + 1e-9)
