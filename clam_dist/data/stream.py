"""Streaming reads: bounded-memory iterators of (ids, float32 matrix) batches, sharded by
file so that worker i of N reads a disjoint, covering subset."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clam_dist.data.errors import DataError
from clam_dist.data.source import VectorSource, record_batches


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


def shard_files(
    files: list[str],
    shard_index: int = 0,
    num_shards: int = 1,
    epoch: int = 0,
    seed: int = 0,
    shuffle: bool = True,
) -> list[str]:
    """Files for worker ``shard_index`` of ``num_shards``: a per-epoch seeded permutation,
    dealt round-robin, so shards are disjoint and together cover every file."""
    if not (0 <= shard_index < num_shards):
        raise ValueError(f"shard_index must be in [0, {num_shards}), got {shard_index}")
    order = list(files)
    if shuffle:
        rng = np.random.default_rng([seed, epoch])
        order = [order[i] for i in rng.permutation(len(order))]
    return order[shard_index::num_shards]


def table_to_matrix(table: pa.Table, source: VectorSource, file: str) -> np.ndarray:
    """The vectors of a table as float32 (n, d); errors name the file and column."""
    vec, cols = source.resolve_columns(table.schema, file)
    n = table.num_rows
    if vec is not None:
        col = table.column(vec).combine_chunks()
        if col.null_count:
            raise DataError(f"{file}: column {vec!r} has {col.null_count} null vectors")
        if pa.types.is_fixed_size_list(col.type):
            width = col.type.list_size
        else:
            lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
            width = int(lengths[0]) if n else 0
            if n and (lengths != width).any():
                bad = int(np.flatnonzero(lengths != width)[0])
                raise DataError(
                    f"{file}: column {vec!r} mixes vector widths ({width} in row 0, {int(lengths[bad])} in row {bad})"
                )
        values = col.flatten().to_numpy(zero_copy_only=False)
        return np.ascontiguousarray(values.astype(np.float32, copy=False).reshape(n, width))
    parts = []
    for c in cols:
        arr = table.column(c)
        if arr.null_count:
            raise DataError(f"{file}: feature column {c!r} has {arr.null_count} nulls")
        parts.append(arr.to_numpy().astype(np.float32, copy=False))
    return np.ascontiguousarray(np.stack(parts, axis=1)) if parts else np.zeros((n, 0), np.float32)


def generated_or_column_ids(
    table: pa.Table, source: VectorSource, file: str, row0: int
) -> np.ndarray:
    if source.id_column is not None:
        if source.id_column not in table.column_names:
            raise DataError(
                f"{file}: id column {source.id_column!r} not found; columns: {table.column_names}"
            )
        ids = table.column(source.id_column)
        if ids.null_count:
            raise DataError(f"{file}: id column {source.id_column!r} has {ids.null_count} nulls")
        return ids.to_numpy(zero_copy_only=False)
    # Generated ids: "<path relative to the dataset root>:<row in file>", counted before
    # any NaN drop, so they are stable across runs, machines and shardings.
    key = source.file_key(file)
    return np.array([f"{key}:{row0 + i}" for i in range(table.num_rows)], dtype=object)


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


def read_table_batches(
    source: VectorSource, file: str, batch_rows: int, columns_extra: list[str] | None = None
) -> Iterator[VectorBatch]:
    """Batches of one file, read row group by row group (bounded memory)."""
    with source.parquet_file(file) as pf:
        yield from _batches_of(pf, source, file, batch_rows, columns_extra)


def _batches_of(
    pf, source: VectorSource, file: str, batch_rows: int, columns_extra: list[str] | None
):
    vec, cols = source.resolve_columns(pf.schema_arrow, file)
    wanted = [vec] if vec else list(cols)
    for extra in [source.id_column, source.label_column, *(columns_extra or [])]:
        if extra and extra not in wanted:
            if extra not in pf.schema_arrow.names:
                raise DataError(
                    f"{file}: column {extra!r} not found; columns: {pf.schema_arrow.names}"
                )
            wanted.append(extra)
    row0 = 0
    try:
        for record_batch in record_batches(pf, batch_rows, wanted):
            table = pa.Table.from_batches([record_batch])
            x = table_to_matrix(table, source, file)
            ids = generated_or_column_ids(table, source, file, row0)
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
        raise DataError(f"{file}: access denied after row {row0} ({exc})") from exc
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(
            f"{file}: failed reading after row {row0} (corrupt or truncated?): {exc}"
        ) from exc


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

    Memory is one Parquet record batch at a time. Widths are checked against the first
    file's so a dataset with mixed widths fails naming the offending file.
    """
    expected_dim = source.dim()
    for file in shard_files(source.files(), shard_index, num_shards, epoch, seed, shuffle):
        # Hand freed buffers back to the OS between files: allocators otherwise keep
        # fragments of every file's row groups and RSS creeps up with the dataset size.
        pa.default_memory_pool().release_unused()
        for batch in read_table_batches(source, file, batch_rows, columns_extra):
            if batch.x.shape[1] != expected_dim and len(batch):
                raise DataError(
                    f"{file}: vectors have width {batch.x.shape[1]}, but {source.files()[0]} has {expected_dim}"
                )
            yield batch
