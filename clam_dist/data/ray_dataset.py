"""A Ray Data dataset over a VectorSource: batches with 'id', 'x' (float32 (n, d)),
'label' when the source has a label column, and any requested pass-through columns.

Read tasks are row ranges (data/units.py: even_parts): ``read_tasks`` contiguous ranges of
equal row counts, cut at row-group boundaries where one is close, so even one Parquet file
is read in parallel and no task outlasts the others by its size. Each
task streams its ranges in bounded batches through the same reader as training (so
schema checks, the NaN policy and the generated '<file>:<row>' ids are identical on every
path).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from clam_dist.data.source import VectorSource
from clam_dist.data.stream import read_unit
from clam_dist.data.units import UNIT_ROWS, Unit, even_parts, segments


def _read_units(
    batch: dict[str, np.ndarray],
    source: VectorSource,
    plan: list[list[Unit]],
    batch_rows: int,
    columns_extra: list[str] | None,
) -> Iterator[dict[str, np.ndarray]]:
    """Stateless read task: stream the row ranges of the listed tasks in bounded batches."""
    for task in batch["task"]:
        for seg in segments(plan[int(task)]):
            for b in read_unit(source, seg, batch_rows, columns_extra):
                out = {"id": b.ids, "x": b.x}
                if b.labels is not None:
                    out["label"] = b.labels
                out.update(b.extra or {})
                yield out


def read_plan(source: VectorSource, read_tasks: int | None = None) -> list[list[Unit]]:
    """The row ranges of each read task, equal in rows (tasks run side by side, so the
    largest one sets the job's end: with whole row groups dealt instead, 8 tasks over 10
    files of 100,000 rows got 100,000 or 200,000 rows and the two large ones ran last).
    Default count: one task per ~UNIT_ROWS rows, but at least one per file."""
    files, row_groups = source.files(), source.row_group_rows()
    if read_tasks is None:
        read_tasks = max(len(files), -(-source.num_rows() // UNIT_ROWS))
    if read_tasks < 1:
        raise ValueError(f"read_tasks must be >= 1, got {read_tasks}")
    parts = even_parts(files, row_groups, read_tasks)
    return [p for p in parts if p]


def to_ray_dataset(
    source: VectorSource,
    columns_extra: list[str] | None = None,
    batch_rows: int = 65_536,
    read_tasks: int | None = None,
):
    """ray.data.Dataset of the source's rows, in ``read_tasks`` read tasks."""
    import ray.data

    source.dim()  # fail on the driver, before any task, for a bad schema or mixed widths
    plan = read_plan(source, read_tasks)
    ds = ray.data.from_items([{"task": i} for i in range(len(plan))], override_num_blocks=len(plan))
    return ds.map_batches(
        _read_units,
        fn_kwargs={
            "source": source,
            "plan": plan,
            "batch_rows": batch_rows,
            "columns_extra": columns_extra,
        },
        batch_size=1,
        batch_format="numpy",
    )
