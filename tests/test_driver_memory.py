"""The driver's memory must not grow with the data: a whole-table pass in the driver
process (here the uniform sample, which evaluate and the training initialisation draw
there) may hold a bounded number of per-unit partial results at once, never one per unit
of the data, and its result must be exactly what the all-at-once computation gives."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clam_dist.data import stats as stats_module
from clam_dist.data.source import VectorSource

D = 4
ROWS, ROW_GROUP = 3_000, 100


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> VectorSource:
    """Three files of float32 vectors with labels, in row groups of 100 rows."""
    root = tmp_path_factory.mktemp("driver_memory")
    rng = np.random.default_rng(7)
    for f in range(3):
        x = rng.standard_normal((ROWS // 3, D)).astype(np.float32)
        table = pa.table(
            {
                "x": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), D),
                "label": rng.integers(0, 5, ROWS // 3).astype(np.int32),
            }
        )
        pq.write_table(table, root / f"part-{f}.parquet", row_group_size=ROW_GROUP)
    return VectorSource(str(root), label_column="label")


def _all_at_once(source: VectorSource, m: int, seed: int):
    """The reference: every unit's sample computed first, then one stable sort."""
    index = {f: i for i, f in enumerate(source.files())}
    parts = [
        stats_module._unit_sample(source, index[u.file], u, m, seed)
        for u in stats_module._units(source)
    ]
    keys = np.concatenate([p[0] for p in parts])
    order = np.argsort(keys, kind="stable")[:m]
    ids = np.concatenate([p[1].ids for p in parts])[order]
    x = np.concatenate([p[1].x for p in parts])[order]
    labels = np.concatenate([p[1].labels for p in parts])[order]
    return ids, x, labels


@pytest.mark.parametrize("m", [1, 250, 5_000])  # 5,000 > rows: every row, in key order
def test_sample_rows_in_waves_equals_all_at_once(labelled, monkeypatch, m):
    monkeypatch.setattr(stats_module, "TASK_ROWS", 200)  # 15 units
    monkeypatch.setattr(stats_module, "SAMPLE_WAVE_TASKS_PER_CPU", 0)  # waves of 1 task
    got = stats_module.sample_rows(labelled, m, seed=3, scheduler="sync")
    ids, x, labels = _all_at_once(labelled, m, seed=3)
    np.testing.assert_array_equal(got.ids, ids)
    np.testing.assert_array_equal(got.x, x)
    np.testing.assert_array_equal(got.labels, labels)
    assert got.x.flags["C_CONTIGUOUS"]
    # Waves of any size (and Dask's threads) give the same sample.
    monkeypatch.setattr(stats_module, "SAMPLE_WAVE_TASKS_PER_CPU", 4)
    again = stats_module.sample_rows(labelled, m, seed=3, scheduler="threads")
    np.testing.assert_array_equal(again.ids, ids)


def test_sample_rows_holds_a_bounded_number_of_unit_samples(labelled, monkeypatch):
    """At most one wave of per-unit samples is alive before it is merged: with 15 units
    and waves of 2 tasks, never 15 (the O(n) structure this guards against)."""
    monkeypatch.setattr(stats_module, "TASK_ROWS", 200)
    monkeypatch.setattr(stats_module.dask.system, "CPU_COUNT", 2)
    monkeypatch.setattr(stats_module, "SAMPLE_WAVE_TASKS_PER_CPU", 1)
    pending, most = [0], [0]
    unit_sample, merge = stats_module._unit_sample, stats_module._merge_samples

    def counted_unit_sample(*args):
        pending[0] += 1
        most[0] = max(most[0], pending[0])
        return unit_sample(*args)

    def counted_merge(best, part, m):
        pending[0] -= 1
        return merge(best, part, m)

    monkeypatch.setattr(stats_module, "_unit_sample", counted_unit_sample)
    monkeypatch.setattr(stats_module, "_merge_samples", counted_merge)
    assert len(stats_module._units(labelled)) == 15
    sample = stats_module.sample_rows(labelled, 100, seed=0, scheduler="sync")
    assert len(sample) == 100 and pending[0] == 0
    assert most[0] == 2


def test_release_unused_memory_frees_only_what_is_unused():
    """Between stages the pipeline hands back the allocators' free memory; live Arrow
    data must survive it."""
    from clam_dist.memory import release_unused_memory

    live = pa.array(np.arange(1_000_000, dtype=np.int64))
    before = pa.total_allocated_bytes()
    release_unused_memory()
    assert pa.total_allocated_bytes() == before
    assert live[999_999].as_py() == 999_999
