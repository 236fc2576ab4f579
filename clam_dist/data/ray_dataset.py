"""A Ray Data dataset over a VectorSource: batches with 'id', 'x' (float32 (n, d)),
'label' when the source has a label column, and any requested pass-through columns.

One read task per Parquet file, each streaming its file in bounded batches through the
same reader as training (so schema checks, the NaN policy and the generated
'<file>:<row>' ids are identical on every path). Files are the unit of parallelism: a
dataset at scale has hundreds to thousands of them.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from clam_dist.data.source import VectorSource
from clam_dist.data.stream import read_table_batches


def _read_files(
    batch: dict[str, np.ndarray],
    source: VectorSource,
    batch_rows: int,
    columns_extra: list[str] | None,
) -> Iterator[dict[str, np.ndarray]]:
    """Stateless read task: stream each listed file in bounded batches."""
    for file in batch["file"]:
        for b in read_table_batches(source, str(file), batch_rows, columns_extra):
            out = {"id": b.ids, "x": b.x}
            if b.labels is not None:
                out["label"] = b.labels
            out.update(b.extra or {})
            yield out


def to_ray_dataset(
    source: VectorSource, columns_extra: list[str] | None = None, batch_rows: int = 65_536
):
    """ray.data.Dataset of the source's rows, one read task per file."""
    import ray.data

    files = source.files()
    source.resolve_columns()  # fail on the driver, before any task, for a bad schema
    ds = ray.data.from_items([{"file": f} for f in files], override_num_blocks=len(files))
    return ds.map_batches(
        _read_files,
        fn_kwargs={"source": source, "batch_rows": batch_rows, "columns_extra": columns_extra},
        batch_size=1,
        batch_format="numpy",
    )
