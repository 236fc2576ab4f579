"""Exact duplicate-id detection in bounded memory.

Holding every id at once grows the driver with the data (10M int64 ids took 1.4 GB of
peak RSS to count, 100M would take over 10 GB). Instead the id column is read in
``passes = ceil(rows / pass_rows)`` passes; pass p keeps only the ids whose 64-bit row key
(data/row_keys.py) is p modulo ``passes``. Equal ids have equal keys, so every duplicate
is found within one pass, and no pass holds much more than ``pass_rows`` ids. The id
column is a small fraction of a vector data set, so re-reading it costs little.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clam_dist.data.row_keys import row_keys
from clam_dist.data.source import VectorSource
from clam_dist.data.stream import null_ids_error

PASS_ROWS = 4_000_000  # ids held at once (~100-200 MB with the counting hash table)


@dataclass
class Duplicates:
    values: int = 0  # distinct ids that occur more than once
    rows: int = 0  # rows read per pass
    passes: int = 1
    examples: list[tuple[object, int]] = field(default_factory=list)  # (id, count)


def _id_chunks(source: VectorSource, column: str, files: list[str]) -> Iterator[pa.ChunkedArray]:
    """The id column of ``files``, one row group at a time. A null id is refused with the
    same message the readers give (stream.null_ids_error): counted as one more duplicated
    value here, it read "None x2" (or passed, for a single null) instead."""
    for f in files:
        with source.parquet_file(f) as pf:
            nulls = False
            for i in range(pf.metadata.num_row_groups):
                ids = pf.read_row_group(i, columns=[column]).column(0)
                if ids.null_count:
                    nulls = True
                    break
                yield ids
        if nulls:
            raise null_ids_error(source, f, column)


def find_duplicates(
    source: VectorSource,
    column: str,
    files: list[str] | None = None,
    rows: int | None = None,
    pass_rows: int = PASS_ROWS,
    examples: int = 5,
) -> Duplicates:
    """Every id of ``column`` that occurs more than once in ``files`` (default: all; then
    ``rows`` defaults to the source's row count, else give the files' rows), with up to
    ``examples`` of them and their counts."""
    files = source.files() if files is None else files
    total = source.num_rows() if rows is None else rows
    passes = max(1, math.ceil(total / max(1, pass_rows)))
    found = Duplicates(rows=total, passes=passes)
    for p in range(passes):
        kept: list[pa.Array] = []
        for ids in _id_chunks(source, column, files):
            if passes > 1:
                keys = row_keys(ids.to_numpy(zero_copy_only=False))
                ids = ids.filter(pa.array(keys % np.uint64(passes) == np.uint64(p)))
            kept.extend(ids.chunks)
        if not kept:
            continue
        ids = pa.chunked_array(kept)
        if pc.count_distinct(ids).as_py() == len(ids):
            continue
        counts = pc.value_counts(ids)
        dup = counts.filter(pc.greater(counts.field("counts"), 1))
        found.values += len(dup)
        room = examples - len(found.examples)
        if room > 0:
            found.examples += [(v["values"], v["counts"]) for v in dup.slice(0, room).to_pylist()]
    return found
