"""Whole-table passes with Dask: feature statistics, a uniform sample, validation.

Each pass is one parallel pass over row ranges (data/units.py: row groups merged up to
UNIT_ROWS rows, huge ones split), so one big file still gives several tasks; each task
reads its range in bounded batches (the same reader as training, so schema checks and the NaN policy are shared) and
returns a small partial result; partials are combined exactly. We use ``dask.delayed`` per
file rather than ``dask.dataframe`` because vectors are usually a fixed-size-list column,
which Dask DataFrames carry as Python objects (slow, and no per-coordinate reductions).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import dask
import dask.system
import numpy as np
import pyarrow as pa

from clam_dist.data.duplicates import find_duplicates
from clam_dist.data.errors import DataError
from clam_dist.data.source import FOOTER_THREADS, VectorSource
from clam_dist.data.stream import (
    VectorBatch,
    generated_or_column_ids,
    read_unit,
    record_batches_in,
    table_to_matrix,
)
from clam_dist.data.units import UNIT_ROWS, Unit, plan_units

BATCH_ROWS = 65_536
# Rows per Dask task at most (a row group larger than this is split into row ranges).
TASK_ROWS = UNIT_ROWS
# sample_rows computes this many unit tasks per core at a time (then merges them), so
# its memory is bounded by the cores, not the number of units (i.e. the data's size).
SAMPLE_WAVE_TASKS_PER_CPU = 2


def _compute(tasks: list, scheduler: str | None):
    return dask.compute(*tasks, scheduler=scheduler or "threads")


@dataclass
class FeatureStats:
    count: int
    mean: np.ndarray
    std: np.ndarray
    min: np.ndarray
    max: np.ndarray
    dropped: int = 0

    def to_dict(self) -> dict:
        return {
            "count": int(self.count),
            "dropped": int(self.dropped),
            **{k: getattr(self, k).tolist() for k in ("mean", "std", "min", "max")},
        }

    @classmethod
    def from_dict(cls, d: dict) -> FeatureStats:
        return cls(
            count=int(d["count"]),
            dropped=int(d.get("dropped", 0)),
            **{k: np.asarray(d[k], dtype=np.float64) for k in ("mean", "std", "min", "max")},
        )


def _units(source: VectorSource) -> list[Unit]:
    return plan_units(source.files(), source.row_group_rows(), TASK_ROWS)


def _unit_moments(
    source: VectorSource, unit: Unit
) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """(count, mean, M2, min, max, dropped) of one unit, combined batch by batch (Chan)."""
    count, mean, m2, lo, hi, dropped = 0, None, None, None, None, 0
    for b in read_unit(source, unit, BATCH_ROWS):
        dropped += b.dropped
        if not len(b):
            continue
        x = b.x.astype(np.float64)
        n_b, mean_b = x.shape[0], x.mean(0)
        m2_b = ((x - mean_b) ** 2).sum(0)
        if count == 0:
            count, mean, m2, lo, hi = n_b, mean_b, m2_b, x.min(0), x.max(0)
            continue
        delta = mean_b - mean
        total = count + n_b
        mean = mean + delta * n_b / total
        m2 = m2 + m2_b + delta**2 * count * n_b / total
        count, lo, hi = total, np.minimum(lo, x.min(0)), np.maximum(hi, x.max(0))
    return count, mean, m2, lo, hi, dropped


def feature_stats(source: VectorSource, scheduler: str | None = None) -> FeatureStats:
    """count, mean, std (population), min, max per feature, in one parallel pass."""
    source.dim()  # mixed widths fail here, naming both files
    parts = _compute([dask.delayed(_unit_moments)(source, u) for u in _units(source)], scheduler)
    count, mean, m2, lo, hi = 0, None, None, None, None
    dropped = sum(p[5] for p in parts)
    for c, mu, q, a, b, _ in parts:
        if c == 0:
            continue
        if count == 0:
            count, mean, m2, lo, hi = c, mu, q, a, b
            continue
        delta, total = mu - mean, count + c
        mean = mean + delta * c / total
        m2 = m2 + q + delta**2 * count * c / total
        count, lo, hi = total, np.minimum(lo, a), np.maximum(hi, b)
    if count == 0:
        raise DataError(f"{source.describe()}: no rows to compute statistics on")
    return FeatureStats(count, mean, np.sqrt(m2 / count), lo, hi, dropped)


def _unit_sample(
    source: VectorSource, file_index: int, unit: Unit, m: int, seed: int, bar: float = np.inf
):
    """The m rows of a unit with the smallest random keys (keys seeded per file and first
    row of the unit, so the sample does not depend on the scheduler), among the rows
    whose key is at most ``bar``: the m-th smallest key of the units already merged, so
    a row above it can never be in the sample (every key is still drawn, so the kept
    rows' keys do not depend on the bar)."""
    rng = np.random.default_rng([seed, file_index, unit.start])
    file = unit.file
    best_keys = np.zeros(0)
    best: VectorBatch | None = None
    for b in read_unit(source, unit, BATCH_ROWS):
        keys = rng.random(len(b))
        if bar < np.inf:
            sel = keys <= bar
            if not sel.any():
                continue
            keys = keys[sel]
            labels = None if b.labels is None else b.labels[sel]
            b = VectorBatch(b.ids[sel], b.x[sel], labels, file)
        if best is None:
            best_keys, best = keys, b
        else:
            best_keys = np.concatenate([best_keys, keys])
            best = VectorBatch(
                np.concatenate([best.ids, b.ids]),
                np.concatenate([best.x, b.x]),
                None if b.labels is None else np.concatenate([best.labels, b.labels]),
                file,
            )
        if len(best_keys) > m:
            keep = np.argpartition(best_keys, m)[:m]
            best_keys = best_keys[keep]
            best = VectorBatch(
                best.ids[keep],
                best.x[keep],
                None if best.labels is None else best.labels[keep],
                file,
            )
    return best_keys, best


def _merge_samples(
    best: tuple[np.ndarray, VectorBatch] | None, part: tuple[np.ndarray, VectorBatch], m: int
) -> tuple[np.ndarray, VectorBatch]:
    """The m smallest keys of ``best`` then ``part`` (in that order), sorted by key.

    A stable sort of the concatenation keeps equal keys in arrival order, so merging
    the units one after another in unit order selects exactly the rows (and the order)
    that one stable sort of every unit's rows at once would: ``best`` is already sorted
    and precedes ``part``."""
    keys_b, b = part
    if best is None:
        keys, ids, x, labels = keys_b, b.ids, b.x, b.labels
    else:
        keys_a, a = best
        keys = np.concatenate([keys_a, keys_b])
        ids = np.concatenate([a.ids, b.ids])
        x = np.concatenate([a.x, b.x])
        labels = None if a.labels is None else np.concatenate([a.labels, b.labels])
    order = np.argsort(keys, kind="stable")[:m]
    return keys[order], VectorBatch(
        ids[order],
        np.ascontiguousarray(x[order]),
        None if labels is None else labels[order],
        "<sample>",
    )


def sample_rows(
    source: VectorSource, m: int, seed: int = 0, scheduler: str | None = None
) -> VectorBatch:
    """A uniform random sample of min(m, n) rows without replacement, in one pass.

    Every row gets an independent uniform key; the m smallest keys overall are a uniform
    sample. Each unit keeps its own m smallest, so memory is O(m) per task.
    Deterministic for a seed (and file listing).

    The units are computed in waves of SAMPLE_WAVE_TASKS_PER_CPU tasks per core and each
    wave is merged into the running m smallest before the next starts (and later waves
    keep only rows below the m-th key merged so far): the driver holds O(m x cores)
    rows whatever the data's size. (Computing every unit first held one m-row sample PER
    UNIT at once, twice over with the final concatenation: at m = 50,000 and 128 dims
    the traced peak went 277 -> 784 MB from 2.5M to 10M rows; now 248 -> 306 MB.)
    """
    if m < 1:
        raise ValueError(f"sample size must be >= 1, got {m}")
    source.dim()  # mixed widths fail here, naming both files
    index = {f: i for i, f in enumerate(source.files())}
    units = _units(source)
    wave = max(1, SAMPLE_WAVE_TASKS_PER_CPU * dask.system.CPU_COUNT)
    best: tuple[np.ndarray, VectorBatch] | None = None
    for w0 in range(0, len(units), wave):
        # Once m rows are merged, later units keep only rows below the m-th key so far:
        # their partial samples shrink as the pass goes on.
        bar = best[0][-1] if best is not None and len(best[0]) == m else np.inf
        tasks = [
            dask.delayed(_unit_sample)(source, index[u.file], u, m, seed, bar)
            for u in units[w0 : w0 + wave]
        ]
        for part in _compute(tasks, scheduler):  # in unit order: see _merge_samples
            if part[1] is not None and len(part[1]):
                best = _merge_samples(best, part, m)
    if best is None:
        raise DataError(f"{source.describe()}: no rows to sample")
    return best[1]


@dataclass
class ValidationReport:
    rows: int = 0
    widths: dict[str, int] = field(default_factory=dict)  # file -> vector width
    nonfinite_rows: dict[str, int] = field(default_factory=dict)  # file -> rows with NaN/inf
    nonfinite_by_feature: list[int] = field(default_factory=list)
    duplicate_ids: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_if_bad(self) -> None:
        if self.problems:
            raise DataError("; ".join(self.problems))


def _scan_unit(pf, source: VectorSource, unit: Unit):
    """(widths seen, rows, rows with NaN/inf, NaN/inf count per feature) of a unit. Ids
    are read (so nulls and a missing id column are reported) but not kept: duplicates
    are found by data/duplicates.py in bounded memory."""
    file = unit.file
    widths, rows, bad_rows, by_feature = set(), 0, 0, None
    vec, cols = source.resolve_columns(pf.schema_arrow, file)
    wanted = ([vec] if vec else list(cols)) + ([source.id_column] if source.id_column else [])
    for row0, rb in record_batches_in(pf, BATCH_ROWS, wanted, unit.start, unit.stop):
        table = pa.Table.from_batches([rb])
        x = table_to_matrix(table, source, file, row0)
        widths.add(x.shape[1])
        nonfinite = ~np.isfinite(x)
        bad_rows += int(nonfinite.any(1).sum())
        by_feature = nonfinite.sum(0) if by_feature is None else by_feature + nonfinite.sum(0)
        if source.id_column:
            generated_or_column_ids(table, source, file, row0)
        rows += table.num_rows
    return widths, rows, bad_rows, by_feature


def _unit_validate(source: VectorSource, unit: Unit):
    """Widths, row count and NaN/inf counts of one unit; a DataError (or an
    unreadable range) becomes a problem instead of stopping the pass."""
    widths, rows, bad_rows, by_feature, error = set(), 0, 0, None, None
    try:
        with source.parquet_file(unit.file) as pf:
            widths, rows, bad_rows, by_feature = _scan_unit(pf, source, unit)
    except DataError as exc:
        error = str(exc)
    except (pa.ArrowInvalid, OSError) as exc:
        error = (
            f"{unit.file}: rows {unit.start}-{unit.stop} unreadable (corrupt or truncated?): {exc}"
        )
    return unit.file, widths, rows, bad_rows, by_feature, error


def _readable_units(source: VectorSource) -> tuple[list[Unit], list[str]]:
    """Units of every file whose footer reads, and a problem for each one that does not
    (validation reports every bad file rather than stopping at the first)."""
    files, problems, groups = source.files(), [], {}

    def footer(f):
        try:
            meta = source._footer(f)
            return f, tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups)), None
        except DataError as exc:
            return f, None, str(exc)

    with ThreadPoolExecutor(min(FOOTER_THREADS, len(files))) as pool:
        for f, rgs, error in pool.map(footer, files):
            if error:
                problems.append(error)
            else:
                groups[f] = rgs
    readable = [f for f in files if f in groups]
    return plan_units(readable, groups, TASK_ROWS), problems


def _merge_files(parts) -> list:
    """Unit results combined per file, in file order (same tuple shape, widths a set)."""
    merged: dict[str, list] = {}
    for file, widths, rows, bad, by_feature, error in parts:
        m = merged.setdefault(file, [file, set(), 0, 0, None, []])
        if error:
            if error not in m[5]:
                m[5].append(error)
            continue
        m[1] |= widths
        m[2] += rows
        m[3] += bad
        if by_feature is not None:
            same = m[4] is not None and len(m[4]) == len(by_feature)
            m[4] = m[4] + by_feature if same else (by_feature if m[4] is None else m[4])
    return list(merged.values())


def validate(source: VectorSource, scheduler: str | None = None) -> ValidationReport:
    """NaN/inf counts per feature and per file, widths per file, duplicate ids, unreadable
    files: everything that is wrong, in one pass (one Dask task per unit), instead of
    stopping at the first."""
    units, footer_problems = _readable_units(source)
    parts = _compute([dask.delayed(_unit_validate)(source, u) for u in units], scheduler)
    rep = ValidationReport()
    rep.problems.extend(footer_problems)
    for file, widths, rows, bad, by_feature, errors in _merge_files(parts):
        if errors:
            rep.problems.extend(errors)
            continue
        rep.rows += rows
        if len(widths) > 1:
            rep.problems.append(f"{file}: vectors of several widths {sorted(widths)}")
        if widths:
            rep.widths[file] = min(widths)
        if bad:
            rep.nonfinite_rows[file] = bad
            rep.problems.append(f"{file}: {bad} row(s) with NaN/inf")
        if by_feature is not None:
            if not rep.nonfinite_by_feature:
                rep.nonfinite_by_feature = [0] * len(by_feature)
            if len(by_feature) == len(rep.nonfinite_by_feature):
                rep.nonfinite_by_feature = [
                    a + int(b) for a, b in zip(rep.nonfinite_by_feature, by_feature)
                ]
    widths = set(rep.widths.values())
    if len(widths) > 1:
        first = next(iter(rep.widths.items()))
        odd = [f"{f} ({w})" for f, w in rep.widths.items() if w != first[1]]
        rep.problems.append(
            f"mixed vector widths: {first[0]} has {first[1]}, but {', '.join(odd[:5])}"
        )
    readable = list(rep.widths)  # files read without an error
    if source.id_column and readable:
        # Not from the scan above: holding every id would grow the driver with the data
        # (data/duplicates.py re-reads the id column in bounded passes).
        dup = find_duplicates(source, source.id_column, readable, rep.rows, examples=3)
        rep.duplicate_ids = dup.values
        if dup.values:
            rep.problems.append(
                f"id column {source.id_column!r} has {dup.values} duplicated value(s), "
                f"e.g. {sorted(v for v, _ in dup.examples)}"
            )
    return rep
