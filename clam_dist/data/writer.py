"""Write vectors as sharded Parquet to any fsspec URL."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clam_dist.data.buckets import fs_has_buckets, require_bucket
from clam_dist.data.source import open_filesystem


def vectors_table(
    x: np.ndarray,
    ids: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    vector_layout: str = "list",
    id_start: int = 0,
) -> pa.Table:
    """Arrow table: 'id', the vectors (fixed-size list 'x' or columns f0..f{d-1}), 'label'."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    cols: dict[str, pa.Array] = {
        "id": pa.array(
            ids if ids is not None else np.arange(id_start, id_start + n, dtype=np.int64)
        )
    }
    if vector_layout == "list":
        cols["x"] = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), d)
    elif vector_layout == "columns":
        cols.update({f"f{j}": pa.array(x[:, j]) for j in range(d)})
    else:
        raise ValueError(f"vector_layout must be 'list' or 'columns', got {vector_layout!r}")
    if labels is not None:
        cols["label"] = pa.array(np.asarray(labels))
    return pa.table(cols)


def write_table(table: pa.Table, url: str, storage_options: dict | None = None) -> str:
    """Write one Parquet file. Readers never see a half-written file: object stores publish
    an object only when its upload completes, and on local disks we write a hidden
    temporary file (skipped by readers) and rename it into place. A missing bucket is
    refused (BucketNotFoundError), never created."""
    require_bucket(url, storage_options)
    fs, path = open_filesystem(url, storage_options)
    parent = path.rsplit("/", 1)[0]
    # Object stores have no folders to make, and s3fs's makedirs would create a missing
    # bucket; folders matter only to file systems that have them (local disks, SFTP, ...).
    if parent and not fs_has_buckets(fs):
        fs.makedirs(parent, exist_ok=True)
    local = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
    target = f"{parent}/.{path.rsplit('/', 1)[-1]}.tmp" if local and parent else path
    with fs.open(target, "wb") as f:
        pq.write_table(table, f, row_group_size=min(max(1, table.num_rows), 65_536))
    if target != path:
        fs.mv(target, path)
    return url


def write_vectors(
    url: str,
    x: np.ndarray,
    *,
    ids: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    rows_per_file: int = 100_000,
    storage_options: dict | None = None,
    vector_layout: str = "list",
    prefix: str = "part",
) -> list[str]:
    """Write ``x`` (and ids/labels) as ``<url>/<prefix>-00000.parquet`` ...; returns the URLs."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"x must be a 2-D (n, d) array, got shape {x.shape}")
    n = x.shape[0]
    for name, arr in (("ids", ids), ("labels", labels)):
        if arr is not None and len(arr) != n:
            raise ValueError(f"{name} has {len(arr)} entries but x has {n} rows")
    if rows_per_file < 1:
        raise ValueError(f"rows_per_file must be >= 1, got {rows_per_file}")
    out = []
    for i, r0 in enumerate(range(0, max(n, 1), rows_per_file)):
        r1 = min(n, r0 + rows_per_file)
        table = vectors_table(
            x[r0:r1],
            ids[r0:r1] if ids is not None else None,
            labels[r0:r1] if labels is not None else None,
            vector_layout,
            id_start=r0,
        )
        out.append(
            write_table(table, f"{url.rstrip('/')}/{prefix}-{i:05d}.parquet", storage_options)
        )
    return out
