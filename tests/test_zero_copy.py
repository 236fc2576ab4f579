"""Reads without copies: a float32 fixed-size-list column becomes a numpy view of the
Arrow buffer; a cast is one copy announced once; ids stay numpy; the prefetching reader
is bounded, re-raises its errors and stops when the consumer stops."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clam_dist.data import stream as stream_module
from clam_dist.data.prefetch import Prefetcher
from clam_dist.data.source import VectorSource
from clam_dist.data.stream import generated_ids, iter_batches, read_rows, table_to_matrix


def _fsl(x: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])


def _data_address(x: np.ndarray) -> int:
    return x.__array_interface__["data"][0]


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def cast_log(monkeypatch):
    """The stream module's warnings, with the once-per-dtype memory reset."""
    monkeypatch.setattr(stream_module, "_casts_announced", set())
    handler = _Records()
    stream_module.log.addHandler(handler)
    try:
        yield handler.messages
    finally:
        stream_module.log.removeHandler(handler)


def test_float32_list_column_is_a_view_of_the_arrow_buffer():
    x = np.random.default_rng(0).standard_normal((100, 8)).astype(np.float32)
    table = pa.table({"x": _fsl(x)}).slice(10, 50)  # a row range: offset 10
    got = table_to_matrix(table, VectorSource("unused"), "t.parquet")
    values = table.column("x").chunk(0).values  # the child array, unsliced
    assert _data_address(got) == values.buffers()[1].address + 10 * 8 * 4
    assert not got.flags.owndata and got.flags.c_contiguous and got.dtype == np.float32
    np.testing.assert_array_equal(got, x[10:60])


def test_parquet_batches_are_views_and_row_ranges_stay_views(tmp_path):
    x = np.random.default_rng(1).standard_normal((1_000, 4)).astype(np.float32)
    pq.write_table(pa.table({"x": _fsl(x)}), tmp_path / "f.parquet", row_group_size=300)
    source = VectorSource(str(tmp_path / "f.parquet"))
    for b in read_rows(source, source.files()[0], 250, 777, batch_rows=128):
        assert not b.x.flags.owndata and not b.x.flags.writeable  # Arrow's memory, no copy
    got = np.concatenate([b.x for b in read_rows(source, source.files()[0], 250, 777, 128)])
    np.testing.assert_array_equal(got, x[250:777])


def test_cast_is_announced_once_naming_the_dtype(tmp_path, cast_log):
    x = np.arange(60, dtype=np.float64).reshape(20, 3)
    for i in range(2):
        pq.write_table(pa.table({"v": _fsl(x + i)}), tmp_path / f"p{i}.parquet", row_group_size=7)
    batches = list(iter_batches(VectorSource(str(tmp_path)), batch_rows=5, shuffle=False))
    assert len(batches) > 4 and all(b.x.dtype == np.float32 for b in batches)
    first = [b.x for b in batches if b.file.endswith("p0.parquet")]
    np.testing.assert_array_equal(np.concatenate(first), x.astype(np.float32))
    assert len(cast_log) == 1 and "float64" in cast_log[0] and "cast to float32" in cast_log[0]
    table = pa.table({"i": _fsl(np.arange(6, dtype=np.int32).reshape(2, 3))})
    np.testing.assert_array_equal(
        table_to_matrix(table, VectorSource("u"), "i.parquet"), [[0, 1, 2], [3, 4, 5]]
    )
    assert len(cast_log) == 2 and "int32" in cast_log[1]  # a new dtype: announced once too


def test_float32_reads_announce_nothing(tmp_path, cast_log):
    pq.write_table(pa.table({"x": _fsl(np.ones((9, 2), np.float32))}), tmp_path / "f.parquet")
    assert len(list(iter_batches(VectorSource(str(tmp_path)), batch_rows=4))) == 3
    assert cast_log == []


def test_integer_ids_stay_numpy_and_generated_ids_are_exact(tmp_path):
    x = np.zeros((30, 2), np.float32)
    ids = np.arange(1_000, 1_030, dtype=np.int64)
    pq.write_table(pa.table({"id": ids, "x": _fsl(x)}), tmp_path / "f.parquet", row_group_size=8)
    batches = list(iter_batches(VectorSource(str(tmp_path), id_column="id"), batch_rows=5))
    assert all(b.ids.dtype == np.int64 for b in batches)
    np.testing.assert_array_equal(np.concatenate([b.ids for b in batches]), ids)
    for row0, n in ((0, 1), (7, 5), (95, 10), (998, 4), (123_456, 3)):
        assert generated_ids("dir/part-1.parquet", row0, n).tolist() == [
            f"dir/part-1.parquet:{r}" for r in range(row0, row0 + n)
        ]
    assert generated_ids("k", 0, 0).size == 0


def _counting(n: int, produced: list, fail_at: int | None = None, closed: list | None = None):
    try:
        for i in range(n):
            if fail_at is not None and i == fail_at:
                raise ValueError(f"row group {i} of part-7.parquet is corrupt")
            produced.append(i)
            yield i
    finally:
        if closed is not None:
            closed.append(True)


def _wait_until(cond, what: str) -> None:
    deadline = time.monotonic() + 20  # a hang guard, not a speed assertion
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def test_prefetch_is_bounded_by_its_depth():
    produced: list[int] = []
    reader = Prefetcher(_counting(100, produced), depth=2)
    # Two items wait in the queue and the thread holds a third, blocked on the full queue.
    _wait_until(lambda: len(produced) == 3 and reader._queue.full(), "the queue to fill")
    time.sleep(0.2)  # give an unbounded reader the chance to run ahead
    assert len(produced) == 3
    assert next(reader) == 0
    _wait_until(lambda: len(produced) == 4, "one more item")
    time.sleep(0.2)
    assert len(produced) == 4
    assert list(reader) == list(range(1, 100))
    assert not reader.alive


def test_prefetch_reraises_the_readers_error_in_the_consumer():
    produced: list[int] = []
    reader = Prefetcher(_counting(10, produced, fail_at=3), depth=2)
    assert [next(reader), next(reader), next(reader)] == [0, 1, 2]
    with pytest.raises(ValueError, match=r"^row group 3 of part-7.parquet is corrupt$"):
        next(reader)
    with pytest.raises(StopIteration):
        next(reader)
    assert not reader.alive


def test_prefetch_stops_cleanly_when_the_consumer_stops_early():
    produced: list[int] = []
    closed: list[bool] = []
    before = threading.active_count()
    with Prefetcher(_counting(1_000_000, produced, closed=closed), depth=2) as reader:
        assert next(reader) == 0
    assert not reader.alive and closed == [True]  # the generator's finally ran
    assert len(produced) <= 1 + 2 + 1  # consumed, queued, held
    assert threading.active_count() == before
    dropped = Prefetcher(_counting(1_000_000, [], closed=(closed2 := [])), depth=1)
    thread = dropped._thread
    next(dropped)
    del dropped  # no close(): the finaliser stops the thread
    thread.join(timeout=20)
    assert not thread.is_alive() and closed2 == [True]
    with pytest.raises(ValueError, match="depth must be >= 1"):
        Prefetcher(iter(()), depth=0)
