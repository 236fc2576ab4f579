"""Rows held in memory, read in exactly the order the Parquet lanes read them (no Ray,
no files).

The lanes' plan (``data/units.py: plan_parts``) needs only file names and their row-group
sizes, and it shuffles whole FILES per epoch (``epoch_file_order``), never the row groups
inside a file. So in-memory rows are cut into virtual files of ``row_chunk`` rows, each
with the row groups ``data/writer.py`` would give it, named as ``write_vectors`` names
them: the plan then deals the same units to the same lanes as it does for the dataset
``write_vectors(url, x, ids=ids, rows_per_file=row_chunk)`` read with
``data.id_column = "id"``, and every step takes the same rows in the same order.

Row ids: ``ids`` as given (default: the row's index in ``x``, which is also what
``write_vectors`` puts in its ``id`` column when given no ids). The reader hands out
their row KEYS (``data/row_keys.py: row_keys``), as ``LaneStream`` does, so masks match.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from clam_dist.data.row_keys import row_keys
from clam_dist.data.units import plan_parts
from clam_dist.train.config import TrainConfig
from clam_dist.train.objectives import total_epochs
from clam_dist.train.step import resolve_lanes, steps_in_epoch
from clam_dist.train.worker_config import StepPlan

# Rows per virtual file: one row group each, as data/writer.py writes a file this size.
DEFAULT_ROW_CHUNK = 65_536
# The most virtual files row_chunk_for makes (planning shuffles every file name per epoch).
MAX_MEMORY_FILES = 8_192
# data/writer.py: write_table's row_group_size (a file's row groups have at most this).
WRITER_ROW_GROUP = 65_536


def writer_row_groups(rows: int) -> tuple[int, ...]:
    """The row-group sizes data/writer.py gives a file of ``rows`` rows."""
    if rows <= WRITER_ROW_GROUP:
        return (rows,)
    full, rest = divmod(rows, WRITER_ROW_GROUP)
    return (WRITER_ROW_GROUP,) * full + ((rest,) if rest else ())


@dataclass(frozen=True)
class MemoryRows:
    """Rows (float32, C-contiguous) and their row keys, cut into virtual files."""

    x: np.ndarray
    keys: np.ndarray
    row_chunk: int

    @classmethod
    def of(
        cls, x: np.ndarray, ids: np.ndarray | None = None, row_chunk: int = DEFAULT_ROW_CHUNK
    ) -> MemoryRows:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or len(x) == 0:
            raise ValueError(f"x must be a non-empty (n, d) array, got shape {x.shape}")
        if row_chunk < 1:
            raise ValueError(f"row_chunk must be >= 1, got {row_chunk}")
        ids = np.arange(len(x), dtype=np.int64) if ids is None else np.asarray(ids)
        if len(ids) != len(x):
            raise ValueError(f"ids has {len(ids)} entries but x has {len(x)} rows")
        return cls(x, row_keys(ids), row_chunk)

    @property
    def n_files(self) -> int:
        return math.ceil(len(self.x) / self.row_chunk)

    def _name(self, i: int) -> str:
        return f"part-{i:05d}.parquet"  # data/writer.py: write_vectors' names

    def files(self) -> list[str]:
        """Sorted, as ``VectorSource.files`` lists the written dataset's files."""
        return sorted(self._name(i) for i in range(self.n_files))

    def row_group_rows(self) -> dict[str, tuple[int, ...]]:
        n, chunk = len(self.x), self.row_chunk
        return {
            self._name(i): writer_row_groups(min(n, (i + 1) * chunk) - i * chunk)
            for i in range(self.n_files)
        }

    def first_row(self, file: str) -> int:
        """Row of ``x`` where virtual ``file`` starts."""
        return int(file[len("part-") : -len(".parquet")]) * self.row_chunk

    def lane_rows(self, lane: int, n_lanes: int, epoch: int, seed: int) -> np.ndarray:
        """Indices into ``x`` of ``lane``'s rows in this epoch, in the order it reads them."""
        units = plan_parts(self.files(), self.row_group_rows(), n_lanes, epoch, seed, True)[lane]
        parts = [np.arange(u.start, u.stop) + self.first_row(u.file) for u in units]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def row_chunk_for(n: int) -> int:
    """Rows per virtual file for an in-memory fit of ``n`` rows: at most ~8,192 files, so
    the per-epoch shuffle of whole files (~60 ms per epoch to plan) is a shuffle of single
    rows up to 8,192 rows, and of runs of ceil(n / 8,192) rows beyond."""
    return max(1, math.ceil(n / MAX_MEMORY_FILES))


def plan_steps(
    cfg: TrainConfig, rows: MemoryRows, world: int = 1, steps_per_epoch: int = 0
) -> StepPlan:
    """Steps per epoch and in all, as ``trainer.plan_steps`` plans them from footers;
    ``steps_per_epoch`` > 0 caps every epoch at that many steps: each epoch then trains on
    the first rows of its own shuffled order, a fresh subset each epoch."""
    n_lanes, lane_batch = resolve_lanes(cfg.data.lanes, world, cfg.optim.batch_size)
    if n_lanes > len(rows.x):
        raise ValueError(
            f"{n_lanes} lanes (data.lanes, default one per worker) but the data has only "
            f"{len(rows.x)} rows"
        )
    files, counts = rows.files(), rows.row_group_rows()
    per_epoch = [
        steps_in_epoch(files, counts, n_lanes, lane_batch, e, cfg.run.seed)
        for e in range(total_epochs(cfg))
    ]
    if steps_per_epoch:
        per_epoch = [min(s, steps_per_epoch) for s in per_epoch]
    total = sum(per_epoch)
    if cfg.optim.max_steps:
        total = min(total, cfg.optim.max_steps)
    return StepPlan(tuple(per_epoch), total)


def memory_steps(
    rows: MemoryRows,
    lanes: list[int],
    n_lanes: int,
    lane_batch: int,
    epoch: int,
    seed: int,
    first_step: int,
    steps: int,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(x, row keys) of ``steps`` steps from ``first_step`` on: ``lane_batch`` rows from
    each of ``lanes`` in turn, as ``step.take_step`` takes them from ``LaneStream``s (a
    lane that has run out gives fewer rows, or none)."""
    order = [rows.lane_rows(lane, n_lanes, epoch, seed) for lane in lanes]
    for step in range(first_step, first_step + steps):
        lo, hi = step * lane_batch, (step + 1) * lane_batch
        idx = np.concatenate([lane[lo:hi] for lane in order])
        # LaneStream's ids of a step with no rows at all are an empty int64 array.
        keys = rows.keys[idx] if len(idx) else np.zeros(0, dtype=np.int64)
        yield rows.x[idx], keys
