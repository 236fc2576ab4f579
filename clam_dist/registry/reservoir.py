"""The reservoir: a bounded sample of every partition a name has seen, kept in the
registry (``reservoir/<key>.parquet``), so a refresh trains on the new partition plus
recent history without reading old partitions again."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clam_dist.pipeline.run_store import RunStore

SUFFIX = ".parquet"


def write_sample(store: RunStore, key: str, x: np.ndarray) -> None:
    """``x`` (rows, d) float32 as one Parquet object, written whole."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    table = pa.table({"x": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    if store.is_local:
        path = store.local / "reservoir" / f"{key}{SUFFIX}"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(buffer.getvalue())
        tmp.replace(path)
    else:
        store.fs.pipe_file(f"{store.root}/reservoir/{key}{SUFFIX}", buffer.getvalue())


def earlier_keys(store: RunStore, key: str, limit: int) -> list[str]:
    """The latest ``limit`` partition keys before ``key`` (in key order) with a sample."""
    if limit <= 0:
        return []
    keys = sorted(
        name[: -len(SUFFIX)] for name in store.entries("reservoir") if name.endswith(SUFFIX)
    )
    return [k for k in keys if k < key][-limit:]


def read_samples(store: RunStore, keys: list[str], d: int) -> np.ndarray:
    """The samples of ``keys``, stacked ((0, d) when there are none)."""
    parts = []
    for k in keys:
        with store.fs.open(f"{store.root}/reservoir/{k}{SUFFIX}", "rb") as handle:
            column = pq.read_table(handle, columns=["x"]).column("x").combine_chunks()
        values = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
        parts.append(values.reshape(len(column), -1))
    parts = [p for p in parts if p.shape[1] == d]  # a width change starts a new history
    return np.vstack(parts) if parts else np.zeros((0, d), np.float32)
