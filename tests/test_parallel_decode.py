"""The training reader's parallel row-group decoding and its row keys: the same batches
in the same order for any number of decode threads, errors raised in order, an early
close that stops the pool, and generated keys equal to the keys of the generated ids."""

from __future__ import annotations

import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clam_dist.config import load_config
from clam_dist.data.errors import DataError
from clam_dist.data.prefetch import ordered_map
from clam_dist.data.row_keys import generated_keys, row_keys
from clam_dist.data.source import VectorSource
from clam_dist.data.stream import generated_ids
from clam_dist.train.config import TrainConfig
from clam_dist.train.step import LaneStream, take_step


def _write(path, x: np.ndarray, row_group_rows: int) -> None:
    flat = pa.array(x.reshape(-1), type=pa.float32())
    vectors = pa.FixedSizeListArray.from_arrays(flat, x.shape[1])
    pq.write_table(pa.table({"x": vectors}), path, row_group_size=row_group_rows)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("decode")
    rng = np.random.default_rng(11)
    for name, rows, rg in [("a.parquet", 310, 40), ("b.parquet", 95, 95), ("c.parquet", 203, 17)]:
        _write(root / name, rng.standard_normal((rows, 6)).astype(np.float32), rg)
    return VectorSource(str(root))


def _epoch(source, read_threads: int, lanes: int = 2) -> list[tuple[np.ndarray, np.ndarray]]:
    streams = [
        LaneStream(source, lane, lanes, epoch=3, seed=2, read_rows=25, read_threads=read_threads)
        for lane in range(lanes)
    ]
    out = []
    while len((got := take_step(streams, 29))[1]):
        out.append(got)
    return out


@pytest.mark.parametrize("threads", [2, 4])
def test_decode_threads_change_nothing_in_the_batches(folder, threads):
    one, many = _epoch(folder, 1), _epoch(folder, threads)
    assert len(one) == len(many) > 5
    for (x1, k1), (xn, kn) in zip(one, many):
        np.testing.assert_array_equal(x1, xn)
        np.testing.assert_array_equal(k1, kn)
    keys = np.concatenate([k for _, k in one])
    assert keys.dtype == np.uint64 and len(set(keys.tolist())) == folder.num_rows()


def test_generated_keys_are_the_keys_of_the_generated_ids():
    # runs that cross digit counts (9 -> 10, 99 -> 100, 9,999 -> 10,000) and none at all
    for row0, n in [(0, 0), (0, 12), (95, 10), (9_990, 25), (123_456, 3_000)]:
        text = generated_ids("sub/part-1.parquet", row0, n)
        np.testing.assert_array_equal(generated_keys("sub/part-1.parquet", row0, n), row_keys(text))


def test_ordered_map_keeps_order_and_raises_in_turn():
    def slow_first(i: int) -> int:
        time.sleep(0.05 if i == 0 else 0.0)  # the first finishes last: order must hold
        if i == 5:
            raise DataError("f.parquet: rows 50-60 are corrupt")
        return i * i

    got = []
    with pytest.raises(DataError, match="rows 50-60"):
        for v in ordered_map(slow_first, range(10), threads=3):
            got.append(v)
    assert got == [0, 1, 4, 9, 16]
    with pytest.raises(ValueError, match="threads must be >= 1"):
        list(ordered_map(abs, [1], threads=0))


def test_closing_early_stops_the_pool_and_bounds_the_work_in_flight():
    started = []

    def work(i: int) -> int:
        started.append(i)
        return i

    it = ordered_map(work, range(1_000), threads=2, name="early-close-test")
    assert next(it) == 0
    it.close()
    # what ran is the item taken plus at most the pool's window ahead of it
    assert len(started) <= 1 + 2 + 1
    assert not [t for t in threading.enumerate() if t.name.startswith("early-close-test")]


def test_read_threads_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="data.read_threads must be >= 1, got 0"):
        load_config(TrainConfig, None, [f"data.url={tmp_path}", "data.read_threads=0"])


def test_a_bad_row_group_names_its_file_with_several_decode_threads(tmp_path):
    _write(tmp_path / "a.parquet", np.ones((60, 3), np.float32), 20)
    bad = np.ones((40, 3), np.float32)
    bad[33, 1] = np.nan
    _write(tmp_path / "b.parquet", bad, 20)
    stream = LaneStream(VectorSource(str(tmp_path)), 0, 1, 0, 0, read_rows=10, read_threads=3)
    with pytest.raises(DataError, match=r"b\.parquet.*NaN"):
        stream.take(1_000)


def test_recycled_batch_buffers_hold_each_batch_until_the_ring_comes_round(folder):
    """With reuse_buffers a consumer that copies each batch when it takes it sees the
    same rows as with new arrays, while the reader writes into at most depth + 3 buffers
    (and none of them while the consumer still holds it)."""
    from clam_dist.train.step import prefetch_steps

    def epoch(reuse: bool):
        streams = [LaneStream(folder, lane, 2, 1, 5, read_rows=16) for lane in range(2)]
        batches, buffers = [], set()
        with prefetch_steps(streams, 8, 200, depth=2, reuse_buffers=reuse) as reader:
            for x, keys in reader:
                time.sleep(0.001)  # let the reader run ahead and fill the queue
                batches.append((x.copy(), keys))
                buffers.add(x.__array_interface__["data"][0])
        return batches, buffers

    fresh, _ = epoch(False)
    recycled, buffers = epoch(True)
    assert len(fresh) == len(recycled) > 20
    for (a, ka), (b, kb) in zip(fresh, recycled):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(ka, kb)
    assert len(buffers) <= 2 + 3


def test_row_group_pieces_cover_units_without_spanning_row_groups():
    from clam_dist.data.units import Unit, row_group_pieces

    groups = {"a": (10, 10, 5), "b": (7,)}
    units = [Unit("a", 3, 22), Unit("b", 0, 7), Unit("a", 22, 25)]
    assert row_group_pieces(units, groups) == [
        Unit("a", 3, 10), Unit("a", 10, 20), Unit("a", 20, 22), Unit("b", 0, 7), Unit("a", 22, 25)
    ]  # fmt: skip


def test_stage_seconds_of_separate_and_fused_operators():
    from clam_dist.assign.stats import stage_seconds

    separate = (
        "Operator 1 MapBatches(_read_units): 10 tasks executed, 10 blocks produced in 4.31s\n"
        "* Remote wall time: 86.61ms min, 399.89ms max, 164.92ms mean, 1.65s total\n"
        "Operator 2 MapBatches(assign_batch): 10 tasks executed, 10 blocks produced in 6.51s\n"
        "* Remote wall time: 413.49ms min, 581.55ms max, 505.02ms mean, 5.05s total\n"
        "Operator 3 Write: 10 tasks executed, 10 blocks produced in 2.8s\n"
        "* Remote wall time: 55.65ms min, 79.11ms max, 67.29ms mean, 672.92ms total\n"
    )
    assert stage_seconds(separate) == {
        "read_s": 4.31, "read_task_s": 1.65, "compute_s": 6.51, "compute_task_s": 5.05,
        "write_s": 2.8, "write_task_s": 0.673,
    }  # fmt: skip
    fused = (
        "Operator 0 FromItems: 1 tasks executed, 4 blocks produced in 0.01s\n"
        "* Remote wall time: 850.09us min, 2.42ms max, 1.38ms mean, 5.53ms total\n"
        "Operator 1 MapBatches(_read_units)->MapBatches(assign_batch)->Write: 4 tasks "
        "executed, 4 blocks produced in 5.01s\n"
        "* Remote wall time: 1.37s min, 2.28s max, 1.73s mean, 6.93s total\n"
    )
    assert stage_seconds(fused) == {"read_compute_write_s": 5.01, "read_compute_write_task_s": 6.93}


def test_the_decode_pool_opens_each_file_once_per_thread_and_closes_all(folder, monkeypatch):
    """Row groups are decoded in parallel, but a thread keeps its file open for the next
    row group of the same file (an object store pays a HEAD and a footer GET per open)."""
    import contextlib

    opened, closed = [], []
    real = VectorSource.parquet_file

    @contextlib.contextmanager
    def counting(self, path):
        opened.append(path)
        with real(self, path) as pf:
            yield pf
        closed.append(path)

    monkeypatch.setattr(VectorSource, "parquet_file", counting)
    stream = LaneStream(folder, 0, 1, epoch=0, seed=0, read_rows=25, read_threads=2)
    x, _ = stream.take(10_000)
    assert len(x) == folder.num_rows()
    row_groups = sum(len(g) for g in folder.row_group_rows().values())  # 8 + 1 + 12
    assert len(opened) <= 2 * len(folder.files()) < row_groups
    del stream
    import gc

    gc.collect()
    assert sorted(closed) == sorted(opened)
