"""The distributed two-level job: rows shuffled by coarse cell, then one Ray task per cell.

The coarse centres are given (trained on a sample by the caller). Then:

1. **Shuffle**: one task per input unit reads its rows, maps them into the model's space
   (``RowSpace``), finds each row's nearest coarse centre and writes the rows split by
   cell (``CellShards.write_part``). A unit already shuffled (its record exists) is not
   read again.
2. **Allocate**: fine prototypes per cell proportional to its rows, every non-empty cell
   at least one, exactly k in all (``models.two_level.allocate_fine``).
3. **Fine level**: one task per non-empty cell reads only its own rows and fits its
   prototypes with ``fit_cell`` (any method's estimator: ``EstimatorCellFit``), then
   writes them as the cell's checkpoint. A cell already checkpointed is not trained
   again; a task lost with its worker or node is retried by Ray and retrains its cell
   only. Tasks are spread over the cluster's nodes: no all-reduce, no gang scheduling.

The seeds are those of ``models.two_level.fit_two_level`` (cell c: seed * stride + c),
and each cell sees its rows in input order, so on the same coarse centres this job
fits the same prototypes as the in-memory two-level fit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray
import torch

from clam_dist.data.cell_shards import CellShards
from clam_dist.data.source import VectorSource
from clam_dist.data.stream import read_unit
from clam_dist.data.units import Unit, plan_units
from clam_dist.models.am import normalize_rows
from clam_dist.models.kmeans import assign_nearest
from clam_dist.models.two_level import CELL_SEED_STRIDE, TwoLevelModel, allocate_fine

# A task lost with its worker process or node is run again this many times.
CELL_TASK_RETRIES = 3

# Most cell tasks in flight per CPU of the cluster: enough to keep every CPU busy while
# finished cells are collected, few enough that the driver never holds every cell's
# result at once.
TASKS_IN_FLIGHT_PER_CPU = 2


@dataclass(frozen=True)
class RowSpace:
    """Raw rows -> the model's space: standardised with the run's global scaler, unit
    length under the spherical metric."""

    mean: np.ndarray
    scale: np.ndarray
    spherical: bool = False

    def __call__(self, x: np.ndarray) -> np.ndarray:
        z = ((x - self.mean) / self.scale).astype(np.float32)
        if self.spherical:
            z = normalize_rows(torch.from_numpy(z)).numpy()
        return np.ascontiguousarray(z)


# fit_cell(rows, k_c, seed_c) -> (prototypes (k_c, d), small JSON-able attributes)
CellFit = Callable[[np.ndarray, int, int], tuple[np.ndarray, dict]]

# The fitted attributes of a cell's estimator that the whole model reads back (ClAM's and
# attention's beta as the median over cells, the in-memory estimators' artifact fields).
CELL_ATTRIBUTES = ("beta_", "_fields", "n_iter_")


class EstimatorCellFit:
    """Fit one cell with a clone of ``template`` (any registered method's estimator):
    ``n_clusters=k_c``, one level, ``random_state`` from the cell's seed."""

    def __init__(self, template: Any):
        self.template = template

    def __call__(self, rows: np.ndarray, k_c: int, seed_c: int) -> tuple[np.ndarray, dict]:
        from sklearn.base import clone

        est = clone(self.template).set_params(
            n_clusters=int(k_c), coarse_clusters=None, random_state=int(seed_c % (2**31 - 1))
        )
        est._cell_fit = True  # the whole job warned about rows per cluster already
        est.fit(rows)
        info = {a: _plain(getattr(est, a)) for a in CELL_ATTRIBUTES if hasattr(est, a)}
        return np.asarray(est.cluster_centers_, np.float32), info


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


@dataclass
class CellsResult:
    model: TwoLevelModel
    infos: list[dict]  # the fitted cells' attributes (cells fitted, not copied rows)
    cell_rows: np.ndarray  # rows per coarse cell
    trained: list[int] = field(default_factory=list)  # cells trained by this call
    resumed: list[int] = field(default_factory=list)  # cells read from their checkpoint
    per_node: dict[str, dict] = field(default_factory=dict)  # cells, rows, seconds
    seconds: dict[str, float] = field(default_factory=dict)


def input_units(source: VectorSource) -> list[Unit]:
    """The shuffle's parts: row-group-aligned units of every input file, in file order."""
    return plan_units(source.files(), source.row_group_rows())


def _shuffle_unit(
    source: VectorSource,
    part: int,
    unit: Unit,
    space: RowSpace,
    coarse: np.ndarray,
    shards: CellShards,
) -> dict[int, int]:
    done = shards.part_counts(part)
    if done is not None:
        return done
    # Batch by batch into one float32 array: mapping the whole unit at once held its raw
    # rows, their concatenation and two float64 temporaries of the standardisation
    # (about 7 x the unit's float32 size: 3.5 GB per process for 2^20 x 128 rows in the
    # 10M-row run); now the unit's rows once plus one batch's temporaries.
    z = np.empty((unit.rows, coarse.shape[1]), np.float32)
    cell = np.empty(unit.rows, np.int64)
    coarse_t, row = torch.from_numpy(coarse), 0
    for b in read_unit(source, unit):
        zb = space(b.x)
        z[row : row + len(zb)] = zb
        cell[row : row + len(zb)] = assign_nearest(torch.from_numpy(zb), coarse_t)[1].numpy()
        row += len(zb)
    # Fewer rows than the unit's when nan_policy="drop" dropped some.
    return shards.write_part(part, z[:row], cell[:row])


def _fit_one_cell(
    shards: CellShards,
    cell: int,
    parts: list[int],
    d: int,
    k_c: int,
    seed_c: int,
    fit_cell: CellFit,
) -> dict:
    t0 = time.perf_counter()
    node = ray.get_runtime_context().get_node_id()
    done = shards.read_fine(cell)
    if done is not None:
        protos, info = done
        return dict(cell=cell, prototypes=protos, info=info, resumed=True, node=node, rows=0,
                    seconds=0.0)  # fmt: skip
    rows = shards.read_cell(cell, parts, d)
    if k_c == rows.shape[0]:  # as many prototypes as rows: the rows themselves
        protos, info = rows, {}
    else:
        protos, info = fit_cell(rows, k_c, seed_c)
        protos = np.asarray(protos, np.float32)
    if protos.shape != (k_c, d):
        raise ValueError(
            f"cell {cell}: the fit returned shape {protos.shape}, expected ({k_c}, {d})"
        )
    shards.write_fine(cell, protos, info)
    return dict(cell=cell, prototypes=protos, info=info, resumed=False, node=node,
                rows=int(rows.shape[0]), seconds=time.perf_counter() - t0)  # fmt: skip


def _in_flight() -> int:
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return max(1, TASKS_IN_FLIGHT_PER_CPU * cpus)


def _run_bounded(submit: Callable[[Any], Any], items: list, on_done: Callable[[Any], None]):
    """Submit ``submit(item)`` for every item with at most ``_in_flight()`` pending; call
    ``on_done`` with each result as it finishes."""
    limit, pending, queue = _in_flight(), [], list(items)
    while queue or pending:
        while queue and len(pending) < limit:
            pending.append(submit(queue.pop(0)))
        ready, pending = ray.wait(pending, num_returns=1)
        on_done(ray.get(ready[0]))


# on_progress(done, total, unit, cells): the shuffle counts "parts" (equal row ranges);
# the fine level counts the "rows" of the fitted cells (a cell's fit costs about
# rows x its prototypes, so a count of cells, largest first, would make any rate a
# guess), with ``cells`` = "fitted/all" beside it ("" while shuffling).
Progress = Callable[[int, int, str, str], None]


def shuffle_by_cell(
    source: VectorSource,
    space: RowSpace,
    coarse: np.ndarray,
    shards: CellShards,
    on_progress: Progress | None = None,
) -> np.ndarray:
    """Every row into its coarse cell's files; returns each part's rows per cell, summed:
    rows per cell (k1,). ``parts_of`` below reads which parts hold a cell."""
    task = ray.remote(num_cpus=1, max_retries=CELL_TASK_RETRIES)(_shuffle_unit)
    units = input_units(source)
    counts = np.zeros(coarse.shape[0], np.int64)
    source_ref, coarse_ref = ray.put(source), ray.put(coarse)
    finished = 0

    def add(part_counts: dict[int, int]) -> None:
        nonlocal finished
        for c, n in part_counts.items():
            counts[c] += n
        finished += 1
        if on_progress is not None:
            on_progress(finished, len(units), "parts", "")

    if on_progress is not None:
        on_progress(0, len(units), "parts", "")  # the phase starts: its rate counts from now
    _run_bounded(
        lambda item: task.remote(source_ref, item[0], item[1], space, coarse_ref, shards),
        list(enumerate(units)),
        add,
    )
    return counts


def parts_of(shards: CellShards, n_parts: int) -> dict[int, list[int]]:
    """Cell -> the parts (in order) holding some of its rows, from the part records."""
    out: dict[int, list[int]] = {}
    for p in range(n_parts):
        counts = shards.part_counts(p)
        if counts is None:
            raise RuntimeError(f"{shards.url}: part {p} has no shuffle record")
        for c in sorted(counts):
            out.setdefault(c, []).append(p)
    return out


def fit_cells(
    shards: CellShards,
    coarse: np.ndarray,
    cell_rows: np.ndarray,
    parts: dict[int, list[int]],
    k: int,
    seed: int,
    fit_cell: CellFit,
    on_progress: Progress | None = None,
) -> CellsResult:
    """One task per non-empty cell (largest first, so the longest fits start early),
    spread over the nodes; the prototypes assembled in cell order."""
    d = coarse.shape[1]
    alloc = allocate_fine(cell_rows, k)
    cells = [c for c in np.argsort(-cell_rows, kind="stable").tolist() if alloc[c] > 0]
    task = ray.remote(num_cpus=1, max_retries=CELL_TASK_RETRIES, scheduling_strategy="SPREAD")(
        _fit_one_cell
    )
    fit_ref = ray.put(fit_cell)
    results: dict[int, dict] = {}
    # A resumed job's checkpointed cells count as done from the phase's first report, so
    # the rate (and ETA) measures only the cells fitted now.
    resumed = shards.fitted_cells() & set(cells) if on_progress is not None else set()
    total_rows = int(cell_rows.sum())
    rows_done = int(sum(int(cell_rows[c]) for c in resumed))

    def collect(r: dict) -> None:
        nonlocal rows_done
        fitted_now = r["cell"] not in results and r["cell"] not in resumed
        results[r["cell"]] = r
        rows_done += int(cell_rows[r["cell"]]) if fitted_now else 0
        if on_progress is not None:
            fitted = len(results) + len(resumed - set(results))
            on_progress(rows_done, total_rows, "rows", f"{fitted}/{len(cells)}")

    if on_progress is not None:  # the fine level starts
        on_progress(rows_done, total_rows, "rows", f"{len(resumed)}/{len(cells)}")

    _run_bounded(
        lambda c: task.remote(
            shards, c, parts[c], d, int(alloc[c]), seed * CELL_SEED_STRIDE + c, fit_ref
        ),
        cells,
        collect,
    )
    order = sorted(results)
    per_node: dict[str, dict] = {}
    for r in results.values():
        if r["resumed"]:
            continue
        node = per_node.setdefault(r["node"], {"cells": 0, "rows": 0, "seconds": 0.0})
        node["cells"] += 1
        node["rows"] += r["rows"]
        node["seconds"] = round(node["seconds"] + r["seconds"], 3)
    model = TwoLevelModel(
        coarse=coarse,
        fine=np.ascontiguousarray(np.concatenate([results[c]["prototypes"] for c in order])),
        cell_of_fine=np.repeat(np.arange(len(cell_rows), dtype=np.int64), alloc),
        cell_offsets=np.concatenate([[0], np.cumsum(alloc)]).astype(np.int64),
    )
    return CellsResult(
        model=model,
        infos=[results[c]["info"] for c in order if results[c]["info"]],
        cell_rows=cell_rows,
        trained=sorted(c for c, r in results.items() if not r["resumed"]),
        resumed=sorted(c for c, r in results.items() if r["resumed"]),
        per_node=per_node,
    )


def train_two_level(
    source: VectorSource,
    space: RowSpace,
    coarse: np.ndarray,
    shards: CellShards,
    k: int,
    seed: int,
    fit_cell: CellFit,
    on_progress: Progress | None = None,
) -> CellsResult:
    """Shuffle, allocate, fit every cell: the two-level model on ``coarse`` centres.
    ``on_progress`` hears every shuffled part, then every fitted cell (``Progress``)."""
    coarse = np.ascontiguousarray(coarse, np.float32)
    t0 = time.perf_counter()
    cell_rows = shuffle_by_cell(source, space, coarse, shards, on_progress)
    t1 = time.perf_counter()
    if int(cell_rows.sum()) < k:
        raise ValueError(f"{int(cell_rows.sum())} rows for n_clusters={k}: need at least k rows")
    parts = parts_of(shards, len(input_units(source)))
    result = fit_cells(shards, coarse, cell_rows, parts, k, seed, fit_cell, on_progress)
    result.seconds = {"shuffle": round(t1 - t0, 3), "cells": round(time.perf_counter() - t1, 3)}
    return result
