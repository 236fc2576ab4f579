"""Streaming reads: bounded-memory iterators of (ids, float32 matrix) batches of row
ranges of files (see units.py), so that shard i of N reads a disjoint, covering subset.

Vectors come out of Arrow without copies where the layout allows it: a float32
fixed-size-list column in one chunk becomes a read-only numpy VIEW of the Arrow buffer;
a cast (float64, integers) costs one copy and is announced once in the log."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clam_dist.data.errors import DataError
from clam_dist.data.row_keys import generated_keys, row_keys
from clam_dist.data.source import VectorSource
from clam_dist.data.units import Unit, plan_parts, segments

log = logging.getLogger(__name__)
_cast_lock = threading.Lock()
_casts_announced: set[str] = set()


@dataclass
class VectorBatch:
    ids: np.ndarray
    x: np.ndarray  # float32 (n, d), C-contiguous
    labels: np.ndarray | None
    file: str
    extra: dict[str, np.ndarray] | None = None
    dropped: int = 0  # rows dropped for NaN/inf under nan_policy="drop"

    def __len__(self) -> int:
        return int(self.x.shape[0])


def _announce_cast(dtype: np.dtype, what: str) -> None:
    """Log ONCE per process and source dtype that vectors are cast (a copy per batch)."""
    key = str(dtype)
    with _cast_lock:
        if key in _casts_announced:
            return
        _casts_announced.add(key)
    log.warning(
        "%s: vectors stored as %s are cast to float32 (one copy per batch); store them as "
        "float32 to read them without copying",
        what,
        key,
    )


def _first_rows(mask: pa.ChunkedArray | pa.Array, row0: int, most: int = 5) -> list[int]:
    """Row numbers within the file (``row0`` is the batch's first) where ``mask`` is true."""
    hits = np.flatnonzero(np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool))
    return (hits[:most] + row0).tolist()


def _check_list_widths(col: pa.ChunkedArray, file: str, vec: str, row0: int) -> int:
    """The one width of a variable-length list column's vectors in this batch. Rows of
    another width are named by their row number in the FILE (a batch is a slice of a
    row group: its own row numbers mean nothing to a person), measured against the width
    most of the batch's rows have, so that a short first row is not taken for the norm."""
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    if not len(lengths):
        return 0
    widths, counts = np.unique(lengths, return_counts=True)
    if len(widths) == 1:
        return int(widths[0])
    usual = int(widths[np.argmax(counts)])
    odd = np.flatnonzero(lengths != usual)
    first = int(odd[0])
    raise DataError(
        f"{file}: column {vec!r} mixes vector widths: row {first + row0} has "
        f"{int(lengths[first])} values where rows {row0}-{row0 + len(lengths) - 1} mostly "
        f"have {usual} ({odd.size} row(s) differ, first rows: {(odd[:5] + row0).tolist()})"
    )


def _list_chunk_matrix(chunk: pa.Array, width: int) -> np.ndarray:
    """(rows, width) numpy view of one chunk of a list column (no copy for float32)."""
    # flatten() honours the chunk's slice offset and is a view of the child buffer;
    # to_numpy copies only when it must (nulls inside vectors, which become NaN).
    values = chunk.flatten().to_numpy(zero_copy_only=False)
    return values.reshape(len(chunk), width)


def table_to_matrix(table: pa.Table, source: VectorSource, file: str, row0: int = 0) -> np.ndarray:
    """The vectors of a table as float32 (n, d), C-contiguous; errors name the file, the
    column and rows counted within the file (``row0``: the table's first row in it). A
    float32 list column in one chunk is returned as a read-only view."""
    vec, cols = source.resolve_columns(table.schema, file)
    n = table.num_rows
    if vec is not None:
        col = table.column(vec)
        if col.null_count:
            raise DataError(
                f"{file}: column {vec!r} has {col.null_count} null vector(s) in rows "
                f"{row0}-{row0 + n - 1} (first rows: {_first_rows(col.is_null(), row0)})"
            )
        t = col.type
        width = t.list_size if pa.types.is_fixed_size_list(t) else None
        if width is None:
            width = _check_list_widths(col, file, vec, row0)
        mats = [_list_chunk_matrix(c, width) for c in col.chunks if len(c)]
        if not mats:
            return np.zeros((0, width), np.float32)
        x = mats[0] if len(mats) == 1 else np.concatenate(mats)  # several chunks: one copy
        if x.dtype != np.float32:
            _announce_cast(x.dtype, f"{file}: column {vec!r}")
            x = x.astype(np.float32)
        return np.ascontiguousarray(x)
    # Feature columns are stored column by column: a (n, d) row-major matrix is always one
    # copy, into which any cast is folded.
    out = np.empty((n, len(cols)), np.float32)
    for j, c in enumerate(cols):
        arr = table.column(c)
        if arr.null_count:
            raise DataError(
                f"{file}: feature column {c!r} has {arr.null_count} null(s) in rows "
                f"{row0}-{row0 + n - 1} (first rows: {_first_rows(arr.is_null(), row0)})"
            )
        values = arr.to_numpy()
        if values.dtype != np.float32:
            _announce_cast(values.dtype, f"{file}: feature column {c!r}")
        out[:, j] = values
    return out


def generated_ids(key: str, row0: int, n: int) -> np.ndarray:
    """``"<key>:<row>"`` for rows row0 .. row0+n-1, built as one fixed-width unicode array
    from digit arithmetic (no Python string per row)."""
    if n == 0:
        return np.zeros(0, dtype=f"<U{len(key) + 2}")
    width = len(str(row0 + n - 1))
    prefix = np.frombuffer(f"{key}:".encode("utf-32-le"), dtype=np.uint32)
    codes = np.zeros((n, prefix.size + width), dtype=np.uint32)  # NULs: numpy trims them
    codes[:, : prefix.size] = prefix
    # Rows are consecutive, so each digit count is one contiguous run: fill every run's
    # digits right to left, one column per decimal place.
    lo = row0
    while lo < row0 + n:
        digits = len(str(lo))
        hi = min(row0 + n, 10**digits)
        rest = np.arange(lo, hi, dtype=np.int64)
        block = codes[lo - row0 : hi - row0, prefix.size :]
        for k in range(digits - 1, -1, -1):
            block[:, k] = rest % 10 + ord("0")
            rest //= 10
        lo = hi
    return codes.view(f"<U{prefix.size + width}").reshape(n)


def null_ids_error(source: VectorSource, file: str, column: str) -> DataError:
    """THE message for null ids, whichever check meets them first (the duplicate-id check
    before any work, or a reader of one batch): the file, the id column, how many of the
    FILE's rows are null and the first of them. The file's id column is read again for it
    (one column, only on this error path) so that every path counts the same rows."""
    count, first, row = 0, [], 0
    with source.parquet_file(file) as pf:
        for i in range(pf.metadata.num_row_groups):
            ids = pf.read_row_group(i, columns=[column]).column(0)
            if ids.null_count:
                count += ids.null_count
                first += _first_rows(ids.is_null(), row, 5 - len(first))
            row += len(ids)
    return DataError(
        f"{file}: id column {column!r} has {count} null value(s) (first rows: {first}); "
        "every row needs an id (fill them in, or leave id_column unset for generated ids)"
    )


def generated_or_column_ids(
    table: pa.Table, source: VectorSource, file: str, row0: int, as_keys: bool = False
) -> np.ndarray:
    """The rows' ids: the id column's, else generated; with ``as_keys`` their 64-bit row
    keys instead (data/row_keys.py: what training masks need, no text per row)."""
    if source.id_column is not None:
        if source.id_column not in table.column_names:
            raise DataError(
                f"{file}: id column {source.id_column!r} not found; columns: {table.column_names}"
            )
        ids = table.column(source.id_column)
        if ids.null_count:
            raise null_ids_error(source, file, source.id_column)
        # Integer ids stay a numpy integer array (a view for one chunk), never objects.
        return row_keys(ids.to_numpy()) if as_keys else ids.to_numpy()
    # Generated ids: "<path relative to the dataset root>:<row in file>", counted before
    # any NaN drop, so they are stable across runs, machines and shardings.
    if as_keys:
        return generated_keys(source.file_key(file), row0, table.num_rows)
    return generated_ids(source.file_key(file), row0, table.num_rows)


def _check_finite(x: np.ndarray, file: str, row0: int, policy: str) -> np.ndarray | None:
    """Rows to keep (None = all). Under policy 'error' a non-finite row raises."""
    finite = np.isfinite(x).all(axis=1)
    if finite.all():
        return None
    bad_rows = np.flatnonzero(~finite)
    if policy == "error":
        raise DataError(
            f"{file}: {bad_rows.size} row(s) contain NaN/inf (first rows: {(bad_rows[:5] + row0).tolist()}); "
            "clean the data or pass nan_policy='drop'"
        )
    return finite


def read_rows(
    source: VectorSource,
    file: str,
    start: int = 0,
    stop: int | None = None,
    batch_rows: int = 65_536,
    columns_extra: list[str] | None = None,
    ids_as_keys: bool = False,
) -> Iterator[VectorBatch]:
    """Batches of rows [start, stop) of one file (row numbers within the file), reading
    only the row groups that overlap the range, one at a time; ``ids_as_keys``: the
    batches carry row keys (data/row_keys.py) instead of ids."""
    with source.parquet_file(file) as pf:
        yield from _batches_of(
            pf, source, file, batch_rows, columns_extra, start, stop, ids_as_keys
        )


class FilePerThread:
    """Read row ranges with ONE open file per thread, kept open while the thread's next
    range is in the same file: a decoding pool reading a file row group by row group
    then opens it once per thread instead of once per row group (through an object store
    every open is a HEAD and a footer GET; measured against the local S3 server, per-row-
    group opens cost the pool a third of its throughput). ``close`` closes every file
    still open; call it once no thread reads any more."""

    def __init__(self, source: VectorSource):
        self._source = source
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: list[contextlib.ExitStack] = []

    def read(self, unit: Unit, batch_rows: int, ids_as_keys: bool = False) -> list[VectorBatch]:
        """Every batch of ``unit``, decoded now."""
        current = getattr(self._local, "current", None)
        if current is None or current[0] != unit.file:
            if current is not None:
                self._close(current[1])
            stack = contextlib.ExitStack()
            with self._lock:
                self._open.append(stack)
            pf = stack.enter_context(self._source.parquet_file(unit.file))
            current = self._local.current = (unit.file, stack, pf)
        return list(
            _batches_of(
                current[2], self._source, unit.file, batch_rows, None, unit.start, unit.stop,
                ids_as_keys,
            )
        )  # fmt: skip

    def _close(self, stack: contextlib.ExitStack) -> None:
        with self._lock:
            if stack in self._open:
                self._open.remove(stack)
        stack.close()

    def close(self) -> None:
        with self._lock:
            stacks, self._open = self._open, []
        for stack in stacks:
            stack.close()


def read_unit(
    source: VectorSource,
    unit: Unit,
    batch_rows: int = 65_536,
    columns_extra: list[str] | None = None,
    ids_as_keys: bool = False,
) -> Iterator[VectorBatch]:
    yield from read_rows(
        source, unit.file, unit.start, unit.stop, batch_rows, columns_extra, ids_as_keys
    )


def _wanted_columns(pf, source: VectorSource, file: str, columns_extra: list[str] | None):
    vec, cols = source.resolve_columns(pf.schema_arrow, file)
    wanted = [vec] if vec else list(cols)
    for extra in [source.id_column, source.label_column, *(columns_extra or [])]:
        if extra and extra not in wanted:
            if extra not in pf.schema_arrow.names:
                raise DataError(
                    f"{file}: column {extra!r} not found; columns: {pf.schema_arrow.names}"
                )
            wanted.append(extra)
    return wanted


def record_batches_in(
    pf, batch_rows: int, columns: list[str], start: int = 0, stop: int | None = None
) -> Iterator[tuple[int, pa.RecordBatch]]:
    """(first row within the file, record batch) for rows [start, stop), ONE ROW GROUP AT
    A TIME: asking Arrow for all row groups at once pre-buffers every selected column
    chunk of the whole file, so memory would grow with the file size."""
    meta = pf.metadata
    stop = meta.num_rows if stop is None else stop
    rg_start = 0
    for i in range(meta.num_row_groups):
        rg_rows = meta.row_group(i).num_rows
        rg_stop = rg_start + rg_rows
        if rg_stop <= start or rg_rows == 0:
            rg_start = rg_stop
            continue
        if rg_start >= stop:
            break
        row = rg_start
        for rb in pf.iter_batches(batch_size=batch_rows, row_groups=[i], columns=columns):
            end = row + rb.num_rows
            if end > start and row < stop:
                a, b = max(start, row), min(stop, end)
                # slice() is zero-copy: the range's rows stay views of the row group.
                yield a, (rb if (a, b) == (row, end) else rb.slice(a - row, b - a))
            if end >= stop:
                break
            row = end
        rg_start = rg_stop


def _batches_of(
    pf,
    source: VectorSource,
    file: str,
    batch_rows: int,
    columns_extra: list[str] | None,
    start: int = 0,
    stop: int | None = None,
    ids_as_keys: bool = False,
):
    wanted = _wanted_columns(pf, source, file, columns_extra)
    row0 = start
    last = pf.metadata.num_rows if stop is None else stop
    try:
        for row0, record_batch in record_batches_in(pf, batch_rows, wanted, start, stop):
            table = pa.Table.from_batches([record_batch])
            x = table_to_matrix(table, source, file, row0)
            ids = generated_or_column_ids(table, source, file, row0, ids_as_keys)
            labels = (
                table.column(source.label_column).to_numpy(zero_copy_only=False)
                if source.label_column
                else None
            )
            extras = {
                c: table.column(c).to_numpy(zero_copy_only=False) for c in columns_extra or []
            }
            keep = _check_finite(x, file, row0, source.nan_policy)
            dropped = 0
            if keep is not None:
                dropped = int((~keep).sum())
                x, ids = x[keep], ids[keep]
                labels = labels[keep] if labels is not None else None
                extras = {c: v[keep] for c, v in extras.items()}
            row0 += table.num_rows
            yield VectorBatch(ids, x, labels, file, extras or None, dropped)
    except PermissionError as exc:
        raise DataError(f"{file}: access denied reading rows {row0}-{last} ({exc})") from exc
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(
            f"{file}: failed reading rows {row0}-{last} (corrupt or truncated?): {exc}"
        ) from exc


def shard_units(
    source: VectorSource,
    shard_index: int = 0,
    num_shards: int = 1,
    epoch: int = 0,
    seed: int = 0,
    shuffle: bool = True,
) -> list[Unit]:
    """The row ranges of shard ``shard_index`` of ``num_shards`` for an epoch (units.py):
    disjoint and covering for any shard count, whatever the number of files."""
    if not (0 <= shard_index < num_shards):
        raise ValueError(f"shard_index must be in [0, {num_shards}), got {shard_index}")
    parts = plan_parts(source.files(), source.row_group_rows(), num_shards, epoch, seed, shuffle)
    return parts[shard_index]


def iter_batches(
    source: VectorSource,
    batch_rows: int = 65_536,
    shard_index: int = 0,
    num_shards: int = 1,
    epoch: int = 0,
    seed: int = 0,
    shuffle: bool = True,
    columns_extra: list[str] | None = None,
) -> Iterator[VectorBatch]:
    """Stream this shard's rows in batches of at most ``batch_rows``.

    Memory is one Parquet record batch at a time. Widths are checked on every footer
    first (source.dim), so a dataset with mixed widths fails naming both files.
    """
    expected_dim = source.dim()
    for seg in segments(shard_units(source, shard_index, num_shards, epoch, seed, shuffle)):
        # Hand freed buffers back to the OS between files: allocators otherwise keep
        # fragments of every file's row groups and RSS creeps up with the dataset size.
        pa.default_memory_pool().release_unused()
        for batch in read_unit(source, seg, batch_rows, columns_extra):
            if batch.x.shape[1] != expected_dim and len(batch):
                raise DataError(
                    f"{seg.file}: vectors have width {batch.x.shape[1]}, but "
                    f"{source.files()[0]} has {expected_dim}"
                )
            yield batch
