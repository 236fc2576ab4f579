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


def _run(x, url, shards_dir, fit_cell=_fit_cell):
    space = _space(x)
    coarse = fit_coarse(space(x), K1, seed=3)
    shards = CellShards(str(shards_dir))
    return coarse, train_two_level(VectorSource(url), space, coarse, shards, K, 3, fit_cell)


def test_the_job_fits_what_the_in_memory_two_level_fit_fits(ray_local, data, tmp_path):
    x, url = data
    coarse, result = _run(x, url, tmp_path / "shards")
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
    _, again = _run(x, url, tmp_path / "faulty", dying_fit)
    assert again.trained == [] and again.resumed == list(range(K1))
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
