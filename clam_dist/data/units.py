"""Units of work: disjoint row ranges of Parquet files, planned from footers alone.

A unit is (file, first row, one past the last row), rows counted within the file. Units
follow row groups: consecutive small row groups of a file are merged up to ``max_rows``
rows, and a row group larger than that is cut into row ranges, so ONE file (even one
with a single huge row group) can feed any number of training lanes, Ray Data read tasks
or Dask tasks. Parts are CONTIGUOUS runs of units balanced by rows: a part reads each of
its files front to back with one open, and a row group is read by at most two parts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Rows per unit at most: 1 Mi rows of 128 float32 are 512 MiB of vectors, read as a stream
# of bounded batches, so this caps the work per task, not the memory.
UNIT_ROWS = 1 << 20
# even_parts moves a cut to a row-group boundary within this share of a part's rows.
SNAP = 0.05


@dataclass(frozen=True)
class Unit:
    file: str
    start: int  # first row, counted within the file
    stop: int  # one past the last row

    @property
    def rows(self) -> int:
        return self.stop - self.start


def _row_groups(value: int | tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """A file's row-group sizes; a bare row count stands for one row group."""
    return (int(value),) if isinstance(value, (int, np.integer)) else tuple(value)


def plan_units(
    files: list[str], row_groups: dict[str, int | tuple[int, ...]], max_rows: int = UNIT_ROWS
) -> list[Unit]:
    """Units covering every row of ``files`` (in that order) exactly once."""
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    units: list[Unit] = []
    for f in files:
        pos, begin = 0, 0  # rows [begin, pos) are merged row groups not yet emitted
        for rg in _row_groups(row_groups[f]):
            if rg > max_rows:
                if pos > begin:
                    units.append(Unit(f, begin, pos))
                pieces = math.ceil(rg / max_rows)
                cuts = [pos + rg * i // pieces for i in range(pieces + 1)]
                units.extend(Unit(f, a, b) for a, b in zip(cuts, cuts[1:]))
                pos += rg
                begin = pos
                continue
            if pos + rg - begin > max_rows and pos > begin:
                units.append(Unit(f, begin, pos))
                begin = pos
            pos += rg
        if pos > begin:
            units.append(Unit(f, begin, pos))
    return units


def deal(units: list[Unit], parts: int) -> list[list[Unit]]:
    """Split units into ``parts`` contiguous runs whose row totals are as equal as the unit
    boundaries allow; no part is empty while there are at least ``parts`` units."""
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    cum = np.concatenate([[0], np.cumsum([u.rows for u in units], dtype=np.int64)])
    total, k = int(cum[-1]), len(units)
    bounds = [0]
    for i in range(1, parts):
        target = total * i / parts
        j = int(np.searchsorted(cum, target))
        if j > 0 and (j > k or target - cum[j - 1] <= cum[j] - target):
            j -= 1
        lo = bounds[-1] + 1 if k >= parts else bounds[-1]
        hi = k - (parts - i) if k >= parts else k
        bounds.append(min(max(j, lo), hi))
    bounds.append(k)
    return [units[a:b] for a, b in zip(bounds, bounds[1:])]


def even_parts(
    files: list[str], row_groups: dict[str, int | tuple[int, ...]], parts: int
) -> list[list[Unit]]:
    """``parts`` contiguous, non-empty row ranges of ``files`` (in order) with equal row
    counts whatever the row groups: for tasks that run side by side, where the job lasts
    as long as its largest task. A cut lands on a row-group boundary when one is within
    SNAP of a part's rows from the exact position (a cut inside a row group makes the
    second task decode the group's rows before the cut and discard them), else exactly
    there, inside the group. Fewer parts than asked only when there are fewer rows."""
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    sizes = [sum(_row_groups(row_groups[f])) for f in files]
    total = sum(sizes)
    parts = max(1, min(parts, total))
    # Row-group boundaries in global row numbers, for snapping.
    edges = [0]
    for f in files:
        edges.extend((edges[-1] + np.cumsum(_row_groups(row_groups[f]), dtype=np.int64)).tolist())
    edges_np = np.unique(np.asarray(edges, dtype=np.int64))
    snap = max(1, int(total / parts * SNAP))
    cuts = [0]
    for i in range(1, parts):
        exact = total * i // parts
        j = int(np.searchsorted(edges_np, exact))
        near = [
            int(e)
            for e in edges_np[max(0, j - 1) : j + 1]
            if abs(int(e) - exact) <= snap and cuts[-1] < int(e) < total
        ]
        cut = min(near, key=lambda e: abs(e - exact)) if near else exact
        # at least one row for this part and one for each part still to come
        cuts.append(min(max(cut, cuts[-1] + 1), total - (parts - i)))
    cuts.append(total)
    starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).tolist()
    out: list[list[Unit]] = []
    for a, b in zip(cuts, cuts[1:]):
        part = []
        for f, f0, n in zip(files, starts, sizes):
            lo, hi = max(a, f0), min(b, f0 + n)
            if lo < hi:
                part.append(Unit(f, lo - f0, hi - f0))
        out.append(part)
    return out


def epoch_file_order(files: list[str], epoch: int, seed: int, shuffle: bool = True) -> list[str]:
    """This epoch's seeded permutation of the files (the order units are dealt in)."""
    if not shuffle:
        return list(files)
    rng = np.random.default_rng([seed, epoch])
    return [files[i] for i in rng.permutation(len(files))]


def plan_parts(
    files: list[str],
    row_groups: dict[str, int | tuple[int, ...]],
    parts: int,
    epoch: int = 0,
    seed: int = 0,
    shuffle: bool = True,
    max_rows: int = UNIT_ROWS,
) -> list[list[Unit]]:
    """The units of each of ``parts`` lanes / shards / tasks for one epoch.

    Units are at most ceil(rows / parts) rows, so even a one-file, one-row-group dataset
    gives every part rows; the plan depends only on the footers, the part count, the
    epoch and the seed, never on which worker asks.
    """
    order = epoch_file_order(files, epoch, seed, shuffle)
    total = sum(sum(_row_groups(row_groups[f])) for f in order)
    cap = max(1, min(max_rows, math.ceil(total / parts))) if total else max_rows
    return deal(plan_units(order, row_groups, cap), parts)


def segments(units: list[Unit]) -> list[Unit]:
    """Adjacent units of the same file merged, so a reader opens each file once."""
    out: list[Unit] = []
    for u in units:
        if out and out[-1].file == u.file and out[-1].stop == u.start:
            out[-1] = Unit(u.file, out[-1].start, u.stop)
        else:
            out.append(u)
    return out


def row_group_pieces(units: list[Unit], row_groups: dict[str, int | tuple[int, ...]]) -> list[Unit]:
    """The units cut at their files' row-group boundaries, in order: the pieces a pool
    decodes in parallel. A piece never spans two row groups (so the decoded data alive
    per piece is at most one row group) and never splits one (Parquet decodes a row
    group from its start, so a cut inside it would decode it twice)."""
    pieces: list[Unit] = []
    for u in units:
        begin = 0
        for rg in _row_groups(row_groups[u.file]):
            lo, hi = max(u.start, begin), min(u.stop, begin + rg)
            if lo < hi:
                pieces.append(Unit(u.file, lo, hi))
            begin += rg
            if begin >= u.stop:
                break
    return pieces
