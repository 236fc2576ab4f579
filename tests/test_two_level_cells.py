"""The distributed two-level job (clam_dist/train/cells.py) on a real local Ray instance
and real Parquet files: the same prototypes as the in-memory reference on the same coarse
centres and seeds, a cell task lost with its worker retrains only its cell, a resumed job
reads its checkpoints (shuffle parts and cells), and any skew of cell sizes works."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from clam_dist.data.cell_shards import CellShards
from clam_dist.data.source import VectorSource
from clam_dist.data.writer import write_vectors
from clam_dist.methods.kmeans.estimator import KMeans
from clam_dist.models.two_level import allocate_fine, fit_coarse, fit_two_level
from clam_dist.train.cells import EstimatorCellFit, RowSpace, train_two_level

pytestmark = pytest.mark.timeout(300)

K, K1, D = 96, 8, 6


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """2,400 rows of a 24-component mixture in 4 Parquet files (4 shuffle parts)."""
    rng = np.random.default_rng(7)
    centres = rng.normal(0, 6, (24, D))
    labels = rng.integers(0, 24, 2_400)
    x = (centres[labels] + rng.normal(0, 1, (2_400, D))).astype(np.float32)
    root = tmp_path_factory.mktemp("cells") / "data"
    write_vectors(str(root), x, rows_per_file=600)
    return x, str(root)


def _space(x: np.ndarray) -> RowSpace:
    return RowSpace(x.mean(0), x.std(0))


# n_init=1, no swaps: a fit that depends only on its rows and its seed. (An object of the
# package's own classes: Ray workers cannot import this test module by name.)
_fit_cell = EstimatorCellFit(KMeans(n_init=1, swap_rounds=0))


def _run(x, url, shards_dir, fit_cell=_fit_cell, on_progress=None):
    space = _space(x)
    coarse = fit_coarse(space(x), K1, seed=3)
    shards = CellShards(str(shards_dir))
    return coarse, train_two_level(
        VectorSource(url), space, coarse, shards, K, 3, fit_cell, on_progress
    )


def test_the_job_fits_what_the_in_memory_two_level_fit_fits(ray_local, data, tmp_path):
    x, url = data
    heard: list[tuple[int, int, str]] = []
    coarse, result = _run(x, url, tmp_path / "shards", on_progress=lambda *a: heard.append(a))
    # Progress: every shuffled part (4 files), then the rows of every fitted cell.
    parts = [h for h in heard if h[2] == "parts"]
    cells = [h for h in heard if h[2] == "rows"]
    assert parts == [(i, 4, "parts", "") for i in range(5)] and heard[: len(parts)] == parts
    assert [h[3] for h in cells] == [f"{i}/{K1}" for i in range(K1 + 1)]
    assert cells[0][0] == 0  # each phase starts with a report of nothing done
    assert cells[-1][:2] == (len(x), len(x)) and all(h[1] == len(x) for h in cells)
    assert all(a[0] < b[0] for a, b in zip(cells, cells[1:]))
    z = _space(x)(x)
    # The reference: every row in memory, the same coarse centres, seeds and cell fits
    # (one thread, as each Ray task runs).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = fit_two_level(
            z, K, K1, fit_cell=lambda r, k, s: _fit_cell(r, k, s)[0], seed=3,
            coarse_centers=coarse,
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(result.model.cell_offsets, ref.cell_offsets)
    np.testing.assert_allclose(result.model.fine, ref.fine, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(result.model.coarse, coarse)
    assert result.model.k == K and int(result.cell_rows.sum()) == len(x)
    np.testing.assert_array_equal(allocate_fine(result.cell_rows, K), np.diff(ref.cell_offsets))
    assert result.trained == sorted(range(K1)) and result.resumed == []
    assert sum(v["cells"] for v in result.per_node.values()) == K1


def test_a_lost_cell_task_retrains_only_its_cell_and_a_resume_reads_checkpoints(
    ray_local, data, tmp_path
):
    x, url = data
    attempts = tmp_path / "attempts"
    attempts.mkdir()

    fit = _fit_cell

    def dying_fit(rows, k, seed):
        """Counts its attempts per cell (by seed); the worker running cell 2's first
        attempt dies, as when a node or process is lost mid-task."""
        cell = seed - 3 * 1_000_003
        mark = Path(attempts) / f"cell-{cell}-{len(list(Path(attempts).glob(f'cell-{cell}-*')))}"
        mark.touch()
        if cell == 2 and mark.name.endswith("-0"):
            os._exit(1)
        return fit(rows, k, seed)

    _, clean = _run(x, url, tmp_path / "clean")
    _, faulty = _run(x, url, tmp_path / "faulty", dying_fit)
    tries = {c: len(list(attempts.glob(f"cell-{c}-*"))) for c in range(K1)}
    assert tries[2] == 2, tries  # the lost cell ran again ...
    assert all(n == 1 for c, n in tries.items() if c != 2), tries  # ... and no other cell
    np.testing.assert_allclose(faulty.model.fine, clean.model.fine, rtol=1e-5, atol=1e-5)

    # A resumed job: no part shuffled again, no cell trained again.
    shards = CellShards(str(tmp_path / "faulty"))
    parts = sorted((tmp_path / "faulty" / "parts").iterdir())
    stamps = [p.stat().st_mtime_ns for p in parts]
    heard: list[tuple[int, int, str, str]] = []
    _, again = _run(x, url, tmp_path / "faulty", dying_fit, lambda *a: heard.append(a))
    assert again.trained == [] and again.resumed == list(range(K1))
    assert shards.fitted_cells() == set(range(K1))
    # The resumed cells are done from the fine level's first report on (so no rate, and
    # no "ETA 0s", comes from checkpoints read back), and nothing counts twice.
    rows = [h for h in heard if h[2] == "rows"]
    assert rows[0] == (len(x), len(x), "rows", f"{K1}/{K1}")
    assert all(h[:2] == (len(x), len(x)) and h[3] == f"{K1}/{K1}" for h in rows)
    assert [p.stat().st_mtime_ns for p in parts] == stamps
    np.testing.assert_array_equal(again.model.fine, faulty.model.fine)
    # One cell's checkpoint gone: that cell alone is trained.
    (tmp_path / "faulty" / "fine" / "cell=00005.npz").unlink()
    _, one = _run(x, url, tmp_path / "faulty", dying_fit)
    assert one.trained == [5] and len(one.resumed) == K1 - 1
    np.testing.assert_allclose(one.model.fine, faulty.model.fine, rtol=1e-5, atol=1e-5)
    assert shards.read_fine(5) is not None


def test_skewed_cells_each_get_a_prototype_and_k_is_conserved(ray_local, tmp_path):
    """One huge cell and many tiny ones (the skew that trips faiss's rebalancing): every
    non-empty cell gets at least one prototype and the total is exactly k."""
    rng = np.random.default_rng(1)
    big = rng.normal(0, 1, (3_000, D))
    tiny = np.repeat(rng.normal(0, 40, (15, D)), 2, axis=0) + rng.normal(0, 0.01, (30, D))
    x = np.concatenate([big, tiny]).astype(np.float32)
    write_vectors(str(tmp_path / "skew"), x, rows_per_file=1_000)
    space = RowSpace(np.zeros(D), np.ones(D))
    coarse = np.concatenate([big[:1], tiny[::2]]).astype(np.float32)  # 16 cells
    result = train_two_level(
        VectorSource(str(tmp_path / "skew")), space, coarse, CellShards(str(tmp_path / "s")),
        64, 0, _fit_cell,
    )  # fmt: skip
    sizes = np.diff(result.model.cell_offsets)
    assert sizes.sum() == 64 and (sizes[result.cell_rows > 0] >= 1).all()
    assert result.cell_rows.max() == 3_000 and sizes[np.argmax(result.cell_rows)] == 64 - 15


def test_the_shuffle_holds_a_unit_once_not_seven_times(tmp_path):
    """The 10M-row run's assignment workers peaked at 3.5 GB of private memory: Ray had
    reused the shuffle's processes, whose task mapped a whole 2^20-row unit at once (the
    raw batches, their concatenation, two float64 temporaries of the standardisation and
    the float32 result: ~7x the unit). Now batch by batch into one float32 array: numpy's
    peak (tracemalloc sees it) stays under 2.5x the unit, with the same rows written."""
    import tracemalloc

    from clam_dist.data.units import Unit
    from clam_dist.train.cells import _shuffle_unit

    rng = np.random.default_rng(3)
    n, d = 600_000, 16  # a unit many read batches (65,536 rows) long, as at scale
    x = rng.normal(0, 1, (n, d)).astype(np.float32)
    url = str(tmp_path / "one")
    write_vectors(url, x, rows_per_file=n)
    source = VectorSource(url)
    unit = Unit(source.files()[0], 0, n)
    space = RowSpace(x.mean(0).astype(np.float64), x.std(0).astype(np.float64))
    coarse = x[:16].copy()
    shards = CellShards(str(tmp_path / "shards"))
    tracemalloc.start()
    try:
        counts = _shuffle_unit(source, 0, unit, space, coarse, shards)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sum(counts.values()) == n
    assert peak < 2.5 * x.nbytes, (
        f"peak {peak / 2**20:.0f} MiB for a {x.nbytes / 2**20:.0f} MiB unit"
    )
    z = space(x)
    c = max(counts, key=counts.get)
    zz, cc = z.astype(np.float64), coarse.astype(np.float64)
    nearest = np.argmin((cc**2).sum(1)[None, :] - 2 * zz @ cc.T, axis=1)
    expect = z[nearest == c][:1000]
    np.testing.assert_array_equal(shards.read_cell(c, [0], d)[:1000], expect)
