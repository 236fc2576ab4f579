"""Two-level clustering for large k (tens of thousands of prototypes).

A coarse k-means with ``k1`` cells splits the rows; inside every cell a fine clustering
fits ``k_c`` prototypes, ``k_c`` proportional to the cell's rows (``allocate_fine``:
every non-empty cell gets at least one, none gets more than its rows, the total is
exactly k). Fitting then costs about k1 + k / k1 distance evaluations per row and pass
instead of k. Assignment probes each row's ``nprobe`` nearest coarse cells and searches
only the fine prototypes inside them; ``"exact"`` searches all fine prototypes.

Method-agnostic: ``fit_cell(rows, k_c, seed_c)`` fits one cell, so any method (k-means
by default, ClAM, ...) can supply the fine prototypes. Pure numpy/torch, no Ray.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from clam_dist.models.am import set_matmul_precision
from clam_dist.models.kmeans import assign_nearest, kmeans_plus_plus, lloyd, row_sq_norms

# Coarse k-means trains on at most this many rows per cell (faiss's max points per
# centroid); all rows are then assigned to the trained cells.
COARSE_ROWS_PER_CELL = 256

# Seed of cell c's fine fit: seed * CELL_SEED_STRIDE + c (distinct for every (seed, c)
# while c < the stride).
CELL_SEED_STRIDE = 1_000_003

# Most entries of one (rows x fine prototypes) distance block in ``predict``.
_PREDICT_BLOCK_ELEMS = 1 << 22

FitCell = Callable[[np.ndarray, int, int], np.ndarray]


def allocate_fine(cell_rows: np.ndarray, k: int) -> np.ndarray:
    """Fine prototypes per cell: proportional to the cell's rows, at least 1 for every
    non-empty cell, 0 for empty cells, never more than a cell's rows, summing to k.

    Cells whose proportional share is below one are fixed at one and the share of the
    others is recomputed from what is left, until every remaining share is at least one;
    the remaining shares are then rounded by largest remainder (ties: lower cell index).
    All arithmetic is in integers, so the result is exact and deterministic. A share of
    the remaining budget never exceeds a cell's rows (the budget never exceeds the rows
    left), so the cap needs no separate pass.
    """
    rows = np.asarray(cell_rows)
    if rows.ndim != 1:
        raise ValueError(f"cell_rows must be 1-D, got shape {rows.shape}")
    if rows.size and (not np.issubdtype(rows.dtype, np.integer) and not np.all(rows % 1 == 0)):
        raise ValueError("cell_rows must hold whole row counts")
    rows = rows.astype(np.int64)
    if np.any(rows < 0):
        raise ValueError("cell_rows must be >= 0")
    k = int(k)
    nonempty = int(np.count_nonzero(rows))
    total = int(rows.sum())
    if k < nonempty:
        raise ValueError(
            f"k={k} is smaller than the {nonempty} non-empty cells: every non-empty cell "
            f"needs at least one fine prototype"
        )
    if k > total:
        raise ValueError(f"k={k} is larger than the {total} rows in all cells")
    alloc = np.zeros(rows.size, dtype=np.int64)
    free = rows > 0
    budget, left = k, total
    while True:
        # share_c = budget * rows_c / left; fix at 1 every free cell whose share is < 1.
        low = free & (budget * rows < left)
        if not low.any():
            break
        alloc[low] = 1
        free &= ~low
        budget -= int(low.sum())
        left -= int(rows[low].sum())
    if budget > 0:
        num = budget * rows[free]
        share, rem = num // left, num % left
        cells = np.flatnonzero(free)
        extra = budget - int(share.sum())
        # Largest remainder first; lexsort's last key is the primary one.
        order = np.lexsort((cells, -rem))[:extra]
        share[order] += 1
        alloc[cells] = share
    return alloc


@dataclass
class TwoLevelModel:
    """Coarse cells and the fine prototypes inside them (grouped by cell)."""

    coarse: np.ndarray  # (k1, d) float32
    fine: np.ndarray  # (k, d) float32, grouped by cell
    cell_of_fine: np.ndarray  # (k,) int64: the coarse cell of each fine prototype
    cell_offsets: np.ndarray  # (k1 + 1,) int64: cell c's prototypes are fine[o[c]:o[c+1]]

    @property
    def k(self) -> int:
        return int(self.fine.shape[0])

    @property
    def k1(self) -> int:
        return int(self.coarse.shape[0])

    @torch.no_grad()
    def predict(
        self, x: np.ndarray, nprobe: int | str = "exact", batch_rows: int = 65536
    ) -> tuple[np.ndarray, np.ndarray]:
        """(global fine prototype id int64, squared distance float32) per row.

        ``nprobe="exact"``: flat nearest over all fine prototypes. An integer: the row's
        ``nprobe`` nearest non-empty coarse cells are searched (more than there are is
        the same as all of them). Rows are processed ``batch_rows`` at a time; within a
        batch the (row, probed cell) pairs are grouped by cell, so each cell is one GEMM
        of the rows probing it against its prototypes (chunked to bounded blocks), with
        a running best per row: memory never grows with rows x k.
        """
        x = np.asarray(x)
        d = self.fine.shape[1]
        if x.ndim != 2 or x.shape[1] != d:
            raise ValueError(f"x must have shape (n, {d}), got {x.shape}")
        if batch_rows < 1:
            raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
        exact = isinstance(nprobe, str)
        if exact and nprobe != "exact":
            raise ValueError(f"nprobe must be 'exact' or an integer >= 1, got {nprobe!r}")
        if not exact and (isinstance(nprobe, bool) or int(nprobe) != nprobe or nprobe < 1):
            raise ValueError(f"nprobe must be 'exact' or an integer >= 1, got {nprobe!r}")
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        fine = torch.from_numpy(np.ascontiguousarray(self.fine, dtype=np.float32))
        n = xt.shape[0]
        labels = torch.empty(n, dtype=torch.long)
        dist = torch.empty(n, dtype=torch.float32)
        if exact:
            for r0 in range(0, n, batch_rows):
                d2, idx = assign_nearest(xt[r0 : r0 + batch_rows], fine)
                dist[r0 : r0 + d2.shape[0]], labels[r0 : r0 + d2.shape[0]] = d2, idx
            return labels.numpy(), dist.numpy()
        search = _ProbeSearch(self, fine)
        for r0 in range(0, n, batch_rows):
            xb = xt[r0 : r0 + batch_rows]
            d2, idx = search(xb, int(nprobe))
            dist[r0 : r0 + xb.shape[0]], labels[r0 : r0 + xb.shape[0]] = d2, idx
        return labels.numpy(), dist.numpy()


def probed_pairs(
    x: torch.Tensor, coarse: torch.Tensor, coarse_sq: torch.Tensor, nprobe: int
) -> tuple[torch.Tensor, list[int]]:
    """Each row's ``nprobe`` nearest coarse cells (``coarse_sq``: the cells' squared norms,
    +inf for a cell never to probe), as (row, cell) pairs grouped by cell: the row of each
    pair (rows ascending within a cell) and the number of pairs per cell."""
    coarse_off = torch.addmm(coarse_sq, x, coarse.t(), alpha=-2.0)
    if nprobe == 1:
        probe = coarse_off.argmin(dim=1, keepdim=True)
    else:
        probe = torch.topk(coarse_off, nprobe, dim=1, largest=False, sorted=False).indices
    cells = probe.reshape(-1)
    order = torch.argsort(cells, stable=True)
    pair_rows = torch.div(order, nprobe, rounding_mode="floor")
    return pair_rows, torch.bincount(cells, minlength=coarse.shape[0]).tolist()


class _ProbeSearch:
    """The per-model tensors of a probed search, prepared once per ``predict`` call."""

    def __init__(self, model: TwoLevelModel, fine: torch.Tensor):
        self.coarse = torch.from_numpy(np.ascontiguousarray(model.coarse, dtype=np.float32))
        self.fine = fine
        self.fine_sq = row_sq_norms(fine)
        self.offsets = np.asarray(model.cell_offsets, dtype=np.int64)
        sizes = np.diff(self.offsets)
        # Empty cells (no fine prototype) are never probed: their coarse score is +inf.
        self.coarse_sq = row_sq_norms(self.coarse)
        self.coarse_sq[torch.from_numpy(sizes == 0)] = float("inf")
        self.searchable = int(np.count_nonzero(sizes))

    def __call__(self, xb: torch.Tensor, nprobe: int) -> tuple[torch.Tensor, torch.Tensor]:
        m = xb.shape[0]
        pair_rows, counts = probed_pairs(
            xb, self.coarse, self.coarse_sq, min(nprobe, self.searchable)
        )
        best = torch.full((m,), float("inf"), dtype=xb.dtype)
        best_idx = torch.full((m,), -1, dtype=torch.long)
        start = 0
        for c, count in enumerate(counts):
            if count == 0:
                continue
            rows = pair_rows[start : start + count]
            start += count
            f0, f1 = int(self.offsets[c]), int(self.offsets[c + 1])
            protos, p_sq = self.fine[f0:f1].t(), self.fine_sq[f0:f1]
            chunk = max(1, _PREDICT_BLOCK_ELEMS // (f1 - f0))
            for q0 in range(0, count, chunk):
                rr = rows[q0 : q0 + chunk]
                # ||f||^2 - 2 x.f: the row's ||x||^2 is added once at the end.
                block = torch.addmm(p_sq, xb[rr], protos, alpha=-2.0)
                # amin is ~20x faster than min-with-indices on CPU; the index is needed
                # only for the rows this cell improves (about H(nprobe) / nprobe of them).
                vals = block.amin(dim=1)
                better = vals < best[rr]
                won = rr[better]
                best[won] = vals[better]
                best_idx[won] = block[better].argmin(dim=1) + f0
        return best.add_(row_sq_norms(xb)).clamp_(min=0.0), best_idx


@torch.no_grad()
def kmeans_cell(
    rows: np.ndarray, k: int, seed: int, n_iter: int = 20, seeding: str = "kmeans++"
) -> np.ndarray:
    """The default ``fit_cell``: k-means++ seeding (or ``seeding="random"``: k distinct
    rows, faiss's way, cheaper: k-means++ costs a cell about twice its 20 Lloyd passes)
    then at most ``n_iter`` Lloyd passes on the cell's rows, with a torch generator seeded
    by ``seed``. (k, d) float32."""
    xt = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))
    gen = torch.Generator().manual_seed(int(seed))
    if seeding == "kmeans++":
        init = kmeans_plus_plus(xt, int(k), gen)
    elif seeding == "random":
        init = xt[torch.randperm(xt.shape[0], generator=gen)[: int(k)]]
    else:
        raise ValueError(f"seeding must be 'kmeans++' or 'random', got {seeding!r}")
    return lloyd(xt, init, max_iter=n_iter).centers.numpy()


@torch.no_grad()
def fit_coarse(x: np.ndarray, k1: int, seed: int = 0, n_iter: int = 20) -> np.ndarray:
    """Coarse centres: k-means++ then at most ``n_iter`` Lloyd passes on at most
    ``COARSE_ROWS_PER_CELL * k1`` rows (a sorted random sample drawn with the generator
    seeded by ``seed`` when there are more rows; otherwise all rows, no draw)."""
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    gen = torch.Generator().manual_seed(int(seed))
    n = xt.shape[0]
    size = COARSE_ROWS_PER_CELL * k1
    if n > size:
        xt = xt[torch.randperm(n, generator=gen)[:size].sort().values]
    init = kmeans_plus_plus(xt, k1, gen)
    return lloyd(xt, init, max_iter=n_iter).centers.numpy()


def fit_cells_side_by_side(
    cells: Sequence[int],
    fit_one: Callable[[int], np.ndarray],
    cell_rows: np.ndarray,
    workers: int | None = None,
) -> dict[int, np.ndarray]:
    """``{c: fit_one(c)}`` for every cell, ``workers`` cells at a time, largest first.

    Why side by side: a cell's GEMMs are small (thousands of rows x hundreds of
    prototypes), and torch's intra-op threads scale badly on them: on a busy 2-core box a
    3,906 x 256 cell took 3.7 s to seed with 2 threads against 0.12 s with one. So each
    worker thread runs its cell's ops on one torch thread (the ops release the GIL) and
    the cells share the cores; the caller's thread count is restored afterwards. With one
    worker the cells run in turn on the caller's thread count, as before. The first
    failing cell's error is raised once the running cells finish.
    """
    workers = torch.get_num_threads() if workers is None else int(workers)
    largest_first = sorted(cells, key=lambda c: (-int(cell_rows[c]), c))
    if workers <= 1 or len(largest_first) <= 1:
        return {c: fit_one(c) for c in largest_first}
    caller_threads = torch.get_num_threads()

    def on_one_thread(c: int) -> np.ndarray:
        torch.set_num_threads(1)  # this pool thread's ops (and the shared setting)
        return fit_one(c)

    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cell") as pool:
            return dict(zip(largest_first, pool.map(on_one_thread, largest_first)))
    finally:
        torch.set_num_threads(caller_threads)


def fit_two_level(
    x: np.ndarray,
    k: int,
    coarse_clusters: int,
    fit_cell: FitCell | None = None,
    seed: int = 0,
    coarse_iter: int = 20,
    fine_iter: int = 20,
    *,
    coarse_centers: np.ndarray | None = None,
    workers: int | None = None,
) -> TwoLevelModel:
    """Fit ``coarse_clusters`` coarse cells, then k fine prototypes inside them.

    1. Coarse centres by ``fit_coarse`` (or ``coarse_centers`` when given); every row
       goes to its nearest coarse centre.
    2. Fine prototypes per cell by ``allocate_fine`` on the cells' row counts.
    3. Cell c with k_c prototypes and n_c rows (in their original order): k_c == n_c
       returns the rows themselves, otherwise ``fit_cell(rows, k_c, seed_c)`` with
       ``seed_c = seed * CELL_SEED_STRIDE + c`` (default ``kmeans_cell`` with
       ``fine_iter`` passes). It must return (k_c, d) prototypes.

    ``workers`` cells are fitted at once (default: ``torch.get_num_threads()``), each in
    its own thread running torch ops on one thread (``fit_cells_side_by_side``). A cell's
    result depends only on its rows, k_c and seed_c, never on which finished first.
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D, got shape {x.shape}")
    n, d = x.shape
    k, k1 = int(k), int(coarse_clusters)
    if not 1 <= k1 <= n:
        raise ValueError(f"coarse_clusters must be in [1, n_samples={n}], got {k1}")
    if not k1 <= k <= n:
        raise ValueError(f"k must be in [coarse_clusters={k1}, n_samples={n}], got k={k}")
    if fit_cell is None:
        fit_cell = functools.partial(kmeans_cell, n_iter=fine_iter)
    set_matmul_precision()
    xf = np.ascontiguousarray(x, dtype=np.float32)
    if coarse_centers is None:
        coarse = fit_coarse(xf, k1, seed, coarse_iter)
    else:
        coarse = np.ascontiguousarray(coarse_centers, dtype=np.float32)
        if coarse.shape != (k1, d):
            raise ValueError(f"coarse_centers must have shape ({k1}, {d}), got {coarse.shape}")
    xt = torch.from_numpy(xf)
    with torch.no_grad():
        _, cell = assign_nearest(xt, torch.from_numpy(coarse))
    cell = cell.numpy()
    order = np.argsort(cell, kind="stable")
    row_offsets = np.concatenate([[0], np.cumsum(np.bincount(cell, minlength=k1))])
    cell_rows = np.diff(row_offsets)
    alloc = allocate_fine(cell_rows, k)

    def rows_of(c: int) -> np.ndarray:
        return xf[order[row_offsets[c] : row_offsets[c + 1]]]

    def fit_one(c: int) -> np.ndarray:
        k_c = int(alloc[c])
        protos = np.asarray(fit_cell(rows_of(c), k_c, seed * CELL_SEED_STRIDE + c), np.float32)
        if protos.shape != (k_c, d):
            raise ValueError(
                f"fit_cell returned shape {protos.shape} for cell {c}, expected ({k_c}, {d})"
            )
        return protos

    # A cell with as many prototypes as rows keeps its rows; the others are fitted.
    to_fit = [c for c in range(k1) if 0 < alloc[c] < cell_rows[c]]
    fitted = fit_cells_side_by_side(to_fit, fit_one, cell_rows, workers)
    parts = [fitted[c] if c in fitted else rows_of(c) for c in range(k1) if alloc[c] > 0]
    return TwoLevelModel(
        coarse=coarse,
        fine=np.ascontiguousarray(np.concatenate(parts)),
        cell_of_fine=np.repeat(np.arange(k1, dtype=np.int64), alloc),
        cell_offsets=np.concatenate([[0], np.cumsum(alloc)]).astype(np.int64),
    )


def default_nprobes(k1: int) -> list[int]:
    """1, 2, 4, ... below k1, then k1."""
    out, p = [], 1
    while p < k1:
        out.append(p)
        p *= 2
    return [*out, k1]


def agreement_curve(
    model: TwoLevelModel,
    x_sample: np.ndarray,
    nprobes: Sequence[int] | None = None,
    batch_rows: int = 65536,
) -> list[dict]:
    """Per nprobe: the share of rows whose probed label equals the exact label, and the
    rows per second of the probed search. Each entry: ``nprobe``, ``agreement``,
    ``rows_per_s``, ``exact_rows_per_s`` (the exact search on the same rows)."""
    nprobes = default_nprobes(model.k1) if nprobes is None else list(nprobes)
    n = np.asarray(x_sample).shape[0]
    t0 = time.perf_counter()
    exact, _ = model.predict(x_sample, "exact", batch_rows)
    exact_rate = n / max(time.perf_counter() - t0, 1e-12)
    curve = []
    for p in nprobes:
        t0 = time.perf_counter()
        labels, _ = model.predict(x_sample, int(p), batch_rows)
        rate = n / max(time.perf_counter() - t0, 1e-12)
        curve.append(
            {
                "nprobe": int(p),
                "agreement": float(np.mean(labels == exact)) if n else 1.0,
                "rows_per_s": rate,
                "exact_rows_per_s": exact_rate,
            }
        )
    return curve


def choose_nprobe(curve: Sequence[dict], target: float = 0.99) -> int:
    """The smallest nprobe in ``curve`` whose agreement reaches ``target``."""
    hits = [e["nprobe"] for e in curve if e["agreement"] >= target]
    if not hits:
        best = max(curve, key=lambda e: e["agreement"], default=None)
        reached = (
            "nothing" if best is None else f"{best['agreement']:.4f} at nprobe={best['nprobe']}"
        )
        raise ValueError(f"no nprobe reaches agreement {target}; the best is {reached}")
    return int(min(hits))
