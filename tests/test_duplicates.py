"""Exact duplicate ids in bounded memory: the id column read in hash-partitioned passes
finds exactly what holding every id at once finds, for integer and text ids."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clam_dist.data.duplicates import find_duplicates
from clam_dist.data.source import VectorSource


def _write(root, ids_per_file: list[np.ndarray]) -> VectorSource:
    for i, ids in enumerate(ids_per_file):
        x = np.zeros((len(ids), 2), np.float32)
        col = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 2)
        pq.write_table(pa.table({"id": ids, "x": col}), root / f"p{i}.parquet", row_group_size=37)
    return VectorSource(str(root), id_column="id")


def _reference(ids: np.ndarray) -> dict:
    values, counts = np.unique(ids, return_counts=True)
    return {v: int(c) for v, c in zip(values.tolist(), counts.tolist()) if c > 1}


@pytest.mark.parametrize("text", [False, True])
@pytest.mark.parametrize("pass_rows", [10**9, 50, 7])
def test_passes_find_exactly_the_duplicates(tmp_path, text, pass_rows):
    rng = np.random.default_rng(4)
    ids = rng.permutation(600).astype(np.int64)
    ids[[10, 200, 590]] = ids[5]  # one id four times
    ids[[300, 301]] = ids[[111, 499]]  # two more, across files
    parts = np.array_split(ids, 3)
    if text:
        parts = [np.array([f"row-{v}" for v in p], dtype=object) for p in parts]
    source = _write(tmp_path, parts)
    found = find_duplicates(source, "id", pass_rows=pass_rows, examples=10)
    expected = _reference(np.concatenate(parts))
    assert found.passes == (1 if pass_rows > 600 else -(-600 // pass_rows))
    assert found.values == len(expected) == 3 and found.rows == 600
    assert dict(found.examples) == expected


def test_no_duplicates_in_many_passes(tmp_path):
    source = _write(tmp_path, [np.arange(0, 300), np.arange(300, 650)])
    found = find_duplicates(source, "id", pass_rows=20)
    assert found.values == 0 and found.examples == [] and found.passes == 33
