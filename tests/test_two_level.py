"""Two-level clustering for large k: allocation, fit against a numpy reference, search."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clam_dist.models.kmeans import kmeans_plus_plus, lloyd
from clam_dist.models.two_level import (
    CELL_SEED_STRIDE,
    TwoLevelModel,
    agreement_curve,
    allocate_fine,
    choose_nprobe,
    default_nprobes,
    fit_two_level,
    kmeans_cell,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: the per-cell fits are thousands of tiny GEMMs, and on a shared
    2-core box a second OpenMP thread makes each of them wait ~10 ms for its partner."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def mixture(n, d, comps, seed, skew=0.0, spread=8.0):
    """Gaussian mixture; skew > 0 gives Zipf-like component weights."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=spread, size=(comps, d))
    w = 1.0 / np.arange(1, comps + 1) ** skew
    labels = rng.choice(comps, size=n, p=w / w.sum())
    return (centers[labels] + rng.normal(size=(n, d))).astype(np.float32)


def nearest64(x, protos):
    """Squared distances (float64) of every row to every prototype: small data only."""
    x, p = x.astype(np.float64), protos.astype(np.float64)
    return ((x[:, None, :] - p[None, :, :]) ** 2).sum(-1)


def nearest_cells(x, coarse):
    """Nearest coarse centre of each row in float64, row block by row block."""
    return np.concatenate(
        [nearest64(x[i : i + 1024], coarse).argmin(1) for i in range(0, len(x), 1024)]
    )


def assert_nearest(labels, d2, x, protos, tol=1e-4):
    """labels are the float64 nearest prototype wherever the nearest two are more than a
    float32 rounding apart, and always within that rounding of the minimum."""
    ref = nearest64(x, protos)
    order = np.sort(ref, axis=1)
    best = order[:, 0]
    scale = 1.0 + (x.astype(np.float64) ** 2).sum(1)
    chosen = ref[np.arange(len(x)), labels]
    assert np.all(chosen - best <= tol * scale)
    clear = order[:, 1] - best > tol * scale if ref.shape[1] > 1 else np.ones(len(x), bool)
    np.testing.assert_array_equal(labels[clear], ref.argmin(1)[clear])
    np.testing.assert_allclose(d2, best, rtol=1e-4, atol=tol * scale.max())


# ---------------------------------------------------------------------------------------
# allocate_fine
# ---------------------------------------------------------------------------------------


def check_allocation(rows, k):
    alloc = allocate_fine(np.asarray(rows), k)
    rows = np.asarray(rows)
    assert alloc.dtype == np.int64 and alloc.shape == rows.shape
    assert alloc.sum() == k
    assert np.all(alloc[rows > 0] >= 1)
    assert np.all(alloc[rows == 0] == 0)
    assert np.all(alloc <= rows)
    return alloc


def test_allocate_proportional_on_even_shares():
    np.testing.assert_array_equal(check_allocation([100, 300, 0, 600], 10), [1, 3, 0, 6])
    # Largest remainder: shares 3.33, 3.33, 3.33 -> one extra to the lowest index.
    np.testing.assert_array_equal(check_allocation([10, 10, 10], 10), [4, 3, 3])
    np.testing.assert_array_equal(check_allocation([1, 2, 7], 7), [1, 1, 5])


def test_allocate_skewed_small_cells_get_one():
    rows = np.array([10_000] + [1] * 500)
    alloc = check_allocation(rows, 1_000)
    assert alloc[0] == 500 and np.all(alloc[1:] == 1)
    # faiss-style rounding would give these 1-row cells zero: ours never does.
    alloc = check_allocation(rows, 501)
    assert alloc[0] == 1


def test_allocate_k_equal_to_nonempty_cells_and_to_all_rows():
    rows = np.array([5, 0, 3, 9, 0, 1])
    np.testing.assert_array_equal(check_allocation(rows, 4), [1, 0, 1, 1, 0, 1])
    np.testing.assert_array_equal(check_allocation(rows, rows.sum()), rows)


def test_allocate_refuses_bad_k():
    with pytest.raises(ValueError, match=r"k=2 .*3 non-empty cells"):
        allocate_fine(np.array([4, 0, 4, 4]), 2)
    with pytest.raises(ValueError, match=r"k=13 .*12 rows"):
        allocate_fine(np.array([4, 0, 4, 4]), 13)
    with pytest.raises(ValueError, match=">= 0"):
        allocate_fine(np.array([4, -1]), 2)


def test_allocate_property_over_random_sizes():
    rng = np.random.default_rng(0)
    for trial in range(300):
        cells = int(rng.integers(1, 60))
        kind = trial % 3
        if kind == 0:
            rows = rng.integers(0, 50, cells)
        elif kind == 1:  # heavy tail: a few huge cells, many tiny ones
            rows = np.floor(rng.pareto(0.7, cells) * 5).astype(np.int64)
        else:
            rows = rng.integers(0, 3, cells) * rng.integers(0, 1000, cells)
        if rows.sum() == 0:
            rows[0] = 1
        lo, hi = int(np.count_nonzero(rows)), int(rows.sum())
        for k in {lo, hi, int(rng.integers(lo, hi + 1))}:
            alloc = check_allocation(rows, k)
            # Proportional: a cell above its share by more than one would have to take a
            # prototype that a below-share cell (not pinned at one) is owed.
            share = k * rows / rows.sum()
            over = alloc - share
            movable = (alloc > 1) & (rows > 0)
            if movable.any():
                assert over[movable].max() < 1.0 + 1e-9


# ---------------------------------------------------------------------------------------
# fit_two_level against a plain numpy reference
# ---------------------------------------------------------------------------------------


def numpy_kmeans(rows, k, seed, n_iter=5):
    """A small plain-numpy k-means (random distinct rows, then Lloyd) for the hook."""
    rng = np.random.default_rng(seed)
    centers = rows[rng.choice(len(rows), size=k, replace=False)].astype(np.float64)
    for _ in range(n_iter):
        lab = nearest64(rows, centers).argmin(1)
        for j in range(k):
            if np.any(lab == j):
                centers[j] = rows[lab == j].mean(0)
    return centers.astype(np.float32)


def reference_two_level(x, k, coarse, fit_cell, seed):
    """Brute force: cells by float64 nearest coarse centre, allocation, fit per cell."""
    cell = nearest64(x, coarse).argmin(1)
    k1 = coarse.shape[0]
    alloc = allocate_fine(np.bincount(cell, minlength=k1), k)
    fine, owner = [], []
    for c in range(k1):
        rows = x[cell == c]  # original row order
        if alloc[c] == 0:
            continue
        protos = (
            rows
            if alloc[c] == len(rows)
            else fit_cell(rows, int(alloc[c]), seed * CELL_SEED_STRIDE + c)
        )
        fine.append(protos)
        owner += [c] * int(alloc[c])
    return np.concatenate(fine), np.array(owner), alloc


def test_fit_matches_numpy_reference_with_given_coarse_and_hook():
    x = mixture(1_500, 5, 12, seed=1, skew=1.2)
    rng = np.random.default_rng(3)
    coarse = x[rng.choice(len(x), 7, replace=False)] + 0.01
    calls = []

    def hook(rows, k_c, seed_c):
        calls.append((len(rows), k_c, seed_c))
        return numpy_kmeans(rows, k_c, seed_c)

    model = fit_two_level(x, 60, 7, fit_cell=hook, seed=5, coarse_centers=coarse)
    fine, owner, alloc = reference_two_level(x, 60, coarse, numpy_kmeans, seed=5)
    np.testing.assert_array_equal(model.coarse, coarse.astype(np.float32))
    np.testing.assert_array_equal(model.fine, fine)
    np.testing.assert_array_equal(model.cell_of_fine, owner)
    np.testing.assert_array_equal(model.cell_offsets, np.concatenate([[0], np.cumsum(alloc)]))
    assert model.fine.dtype == np.float32 and model.cell_of_fine.dtype == np.int64
    assert {s for _, _, s in calls} <= {5 * CELL_SEED_STRIDE + c for c in range(7)}


def test_fit_default_cells_and_coarse_reproduce_the_kernels():
    x = mixture(1_200, 4, 10, seed=2)
    k, k1, seed = 40, 5, 3
    model = fit_two_level(x, k, k1, seed=seed, coarse_iter=7, fine_iter=6)
    # Coarse: k-means++ then Lloyd on all rows (1,200 <= 256 * k1: no sample drawn).
    xt = torch.from_numpy(x)
    gen = torch.Generator().manual_seed(seed)
    coarse = lloyd(xt, kmeans_plus_plus(xt, k1, gen), max_iter=7).centers.numpy()
    np.testing.assert_array_equal(model.coarse, coarse)

    def cell_fit(rows, k_c, seed_c):
        return kmeans_cell(rows, k_c, seed_c, n_iter=6)

    fine, owner, _ = reference_two_level(x, k, coarse, cell_fit, seed)
    np.testing.assert_array_equal(model.fine, fine)
    np.testing.assert_array_equal(model.cell_of_fine, owner)
    # Same seed, same model; another seed, another model.
    again = fit_two_level(x, k, k1, seed=seed, coarse_iter=7, fine_iter=6)
    np.testing.assert_array_equal(again.fine, model.fine)
    other = fit_two_level(x, k, k1, seed=seed + 1, coarse_iter=7, fine_iter=6)
    assert not np.array_equal(other.fine, model.fine)


def test_cells_with_as_many_prototypes_as_rows_keep_their_rows():
    x = mixture(300, 3, 4, seed=4)
    model = fit_two_level(x, 300, 4, seed=0)
    # k == n: every cell keeps its rows, so the fine prototypes are the data.
    got = model.fine[np.lexsort(model.fine.T[::-1])]
    want = x[np.lexsort(x.T[::-1])]
    np.testing.assert_array_equal(got, want)


def test_fit_refuses_bad_arguments():
    x = mixture(100, 3, 4, seed=0)
    with pytest.raises(ValueError, match="coarse_clusters"):
        fit_two_level(x, 10, 0)
    with pytest.raises(ValueError, match="k must be"):
        fit_two_level(x, 3, 5)
    with pytest.raises(ValueError, match="k must be"):
        fit_two_level(x, 101, 5)
    with pytest.raises(ValueError, match="fit_cell returned"):
        fit_two_level(x, 10, 2, fit_cell=lambda rows, k, s: rows[:1])


# ---------------------------------------------------------------------------------------
# predict
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted():
    x = mixture(6_000, 6, 64, seed=7, skew=0.8)
    model = fit_two_level(x, 256, 16, seed=1)
    q = mixture(1_500, 6, 64, seed=8, skew=0.8)
    return model, q


def test_predict_exact_is_flat_nearest(fitted):
    model, q = fitted
    labels, d2 = model.predict(q, "exact", batch_rows=333)
    assert labels.dtype == np.int64 and d2.dtype == np.float32
    assert_nearest(labels, d2, q, model.fine)


def test_predict_all_cells_equals_exact(fitted):
    model, q = fitted
    exact, exact_d2 = model.predict(q, "exact")
    for nprobe in (model.k1, model.k1 + 5):
        labels, d2 = model.predict(q, nprobe, batch_rows=500)
        np.testing.assert_array_equal(labels, exact)
        np.testing.assert_allclose(d2, exact_d2, rtol=1e-5, atol=1e-4)


def test_predict_probed_is_nearest_within_probed_cells(fitted):
    model, q = fitted
    nprobe = 3
    labels, d2 = model.predict(q, nprobe, batch_rows=700)
    probed = np.argsort(nearest64(q, model.coarse), axis=1)[:, :nprobe]
    dist = nearest64(q, model.fine)
    allowed = (model.cell_of_fine[None, None, :] == probed[:, :, None]).any(1)
    dist[~allowed] = np.inf
    assert np.all(allowed[np.arange(len(q)), labels])
    np.testing.assert_allclose(d2, dist.min(1), rtol=1e-4, atol=1e-3)


def test_agreement_rises_with_nprobe_and_choose(fitted):
    model, q = fitted
    curve = agreement_curve(model, q)
    assert [e["nprobe"] for e in curve] == default_nprobes(model.k1) == [1, 2, 4, 8, 16]
    agree = [e["agreement"] for e in curve]
    assert all(a <= b for a, b in zip(agree, agree[1:]))
    assert agree[-1] == 1.0 and agree[0] < 1.0
    assert all(e["rows_per_s"] > 0 and e["exact_rows_per_s"] > 0 for e in curve)
    p = choose_nprobe(curve, 0.99)
    i = [e["nprobe"] for e in curve].index(p)
    assert agree[i] >= 0.99 and (i == 0 or agree[i - 1] < 0.99)
    assert choose_nprobe(curve, 0.0) == 1
    with pytest.raises(ValueError, match="no nprobe"):
        choose_nprobe(curve[:1], 1.0 + 1e-9)


def test_predict_skips_empty_cells_and_checks_arguments():
    rng = np.random.default_rng(0)
    fine = rng.normal(size=(4, 2)).astype(np.float32)
    # Cell 0 has no prototypes but its centre is nearest to every query.
    model = TwoLevelModel(
        coarse=np.array([[0, 0], [5, 5], [-5, -5]], np.float32),
        fine=fine,
        cell_of_fine=np.array([1, 1, 2, 2]),
        cell_offsets=np.array([0, 0, 2, 4]),
    )
    q = rng.normal(scale=0.1, size=(20, 2)).astype(np.float32)
    labels, _ = model.predict(q, 1)
    assert np.all(labels >= 0)
    np.testing.assert_array_equal(model.predict(q, 2)[0], model.predict(q, "exact")[0])
    for bad in (0, "all", 1.5):
        with pytest.raises(ValueError, match="nprobe"):
            model.predict(q, bad)
    with pytest.raises(ValueError, match="shape"):
        model.predict(q[:, :1])


def test_large_k_skewed_mixture_conserves_k():
    # 4,096 components with Zipf weights, k = 4,096 = 64 x 64: cell sizes are skewed
    # (tens to over a thousand rows), and a few lone far-away rows make one-row cells,
    # which get exactly one prototype: the row itself.
    x = mixture(16_384, 8, 4_096, seed=11, skew=1.1, spread=4.0)
    lone = np.eye(8, dtype=np.float32)[:4] * 1_000.0
    x = np.concatenate([x, lone])
    model = fit_two_level(x, 4_096, 64, seed=0, coarse_iter=10, fine_iter=5)
    assert model.fine.shape == (4_096, 8) and model.k == 4_096
    assert np.all(np.isfinite(model.fine))
    sizes = np.diff(model.cell_offsets)
    assert sizes.sum() == 4_096 and model.cell_offsets[-1] == 4_096
    np.testing.assert_array_equal(np.bincount(model.cell_of_fine, minlength=64), sizes)
    rows = np.bincount(nearest_cells(x, model.coarse), minlength=64)
    np.testing.assert_array_equal(sizes, allocate_fine(rows, 4_096))
    assert rows.max() > 20 * rows.min() and np.count_nonzero(rows == 1) == 4
    for c in np.flatnonzero(rows == 1):
        assert sizes[c] == 1
        assert any(np.array_equal(model.fine[model.cell_offsets[c]], p) for p in lone)
    labels, d2 = model.predict(x[-2_000:], 4)
    assert labels.min() >= 0 and labels.max() < 4_096
    np.testing.assert_array_equal(d2[-4:], 0.0)


def test_cells_fitted_side_by_side_equal_cells_fitted_in_turn():
    """Threads change only when a cell runs, never what it returns; the caller's torch
    thread count is back afterwards, also when a cell fails."""
    x = mixture(3_000, 8, 30, seed=4)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the serial reference on the threads each worker uses
    try:
        in_turn = fit_two_level(x, 120, 8, seed=2, workers=1)
    finally:
        torch.set_num_threads(before)
    side_by_side = fit_two_level(x, 120, 8, seed=2, workers=3)
    assert torch.get_num_threads() == before
    for name in ("coarse", "fine", "cell_of_fine", "cell_offsets"):
        np.testing.assert_array_equal(getattr(side_by_side, name), getattr(in_turn, name))

    def fails_on_cell_3(rows, k_c, seed_c):
        if seed_c == 3:
            raise RuntimeError("cell 3 broke")
        return rows[:k_c]

    with pytest.raises(RuntimeError, match="cell 3 broke"):
        fit_two_level(x, 120, 8, fit_cell=fails_on_cell_3, seed=0, workers=2)
    assert torch.get_num_threads() == before


def test_kmeans_cell_random_seeding_is_lloyd_from_k_distinct_rows():
    """seeding="random" (faiss's way): Lloyd started from the k rows a generator seeded
    by the cell's seed picks, nothing else; an unknown seeding is refused."""
    x = mixture(500, 4, 6, seed=7)
    got = kmeans_cell(x, 12, 42, n_iter=5, seeding="random")
    xt = torch.from_numpy(x.astype(np.float32))
    pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(42))[:12]
    want = lloyd(xt, xt[pick], max_iter=5).centers.numpy()
    np.testing.assert_array_equal(got, want)
    assert len(np.unique(xt[pick].numpy(), axis=0)) == 12
    with pytest.raises(ValueError, match="seeding must be"):
        kmeans_cell(x, 12, 42, seeding="forgy")
