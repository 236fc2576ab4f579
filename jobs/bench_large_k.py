"""Large-k two-level clustering against faiss, side by side in one run: fitting k = 65,536
prototypes as 256 coarse x 256 fine, and assigning held-out rows to them.

    python jobs/bench_large_k.py [--rows 1000000 --d 128 --k 65536 --coarse 256 --iters 20
                                  --assign-rows 100000 --threads 2 --data URL
                                  --json bench_results/large_k.json
                                  --plot bench_results/large_k.png --skip-clam
                                  --skip-defaults --clam-epochs N --fit-only]

Data: ``--rows`` fit rows plus ``--assign-rows`` held-out rows of one seeded Gaussian
mixture (``--components``, default k, of uneven weight and spread: the recipe of
jobs/bench_scale.py's ``write_mixture``), or, with ``--data URL``, the first rows of the
Parquet files ``write_mixture`` writes (any fsspec URL; read with clam_dist's
``VectorSource``/``read_rows``), the held-out rows being the ones after the fit rows.

Every step runs in its own process, forked from a server that has imported torch and
faiss but done no work, with ``--threads`` threads (``torch.set_num_threads``,
``faiss.omp_set_num_threads``, threadpoolctl), so its peak RSS (``ru_maxrss``) is its own;
``net`` is that peak less the process's RSS once warmed up (the step's method run once on
512 rows: lazy imports, thread pools and BLAS buffers are not the step's working memory),
printed next to a formula of what the step holds (``*_formula`` below, read off the code).

Fit (inertia: squared distance of every fit row to its nearest fine centroid under exact
search, faiss ``IndexFlatL2``, summed in float64, the same function for every method;
silhouette: scikit-learn's on a fixed ``--sample-rows`` sample of the fit rows labelled
by that exact search):
- ours: ``models.two_level.fit_two_level`` with the default ``kmeans_cell``, ``--iters``
  coarse and fine Lloyd passes (like with like with faiss; ours seeds by k-means++, trains
  the coarse level on at most 256 rows per cell, and stops a cell's Lloyd early once the
  inertia changes by < 1e-4);
- ours, estimator defaults: ``clam_dist.KMeans(n_clusters=k, coarse_clusters=coarse)``
  (swaps, up to 300 passes, a tenth of the rows held out to choose ``nprobe``;
  ``--skip-defaults`` leaves it out);
- faiss: ``faiss.contrib.clustering.two_level_clustering`` (rebalanced), ``--iters`` coarse
  and fine iterations (its fine ``faiss.Kmeans`` takes no ``niter``, so the step gives
  it one). Its coarse k-means trains on up to 2,000 rows per cell, its cells on their
  rows, random seeding, no early stop. Its rebalancing can give a cell with rows zero
  centroids and faiss then fails; the step then re-runs the same recipe with
  ``allocate_fine``'s split (>= 1 centroid per non-empty cell) and says so;
- ClAM: ``clam_dist.ClAM(n_clusters=k, coarse_clusters=coarse)`` with its defaults, or
  ``--clam-epochs`` epochs per cell (``--skip-clam`` leaves it out). ``--fit-only`` runs
  the fit steps alone (no assignment steps, no plot).
Target: our time / faiss time <= 0.5 and inertia within 1% of faiss's (or lower).

Assignment of the held-out rows to OUR like-with-like model's fine centroids (k of them):
exact labels from faiss ``IndexFlatL2.search(k=1)``. Agreement: the share of rows given a
nearest centroid (its label, or one whose float64 distance ties the exact label's to a
relative 1e-5). Rows/s: one timed pass over all held-out rows after a small warm-up.
- ours: ``TwoLevelModel.predict(x, nprobe)`` for nprobe = 1, 2, 4, ..., coarse and
  ``"exact"``;
- faiss ``IndexIVFFlat`` with our coarse centroids as quantizer and our fine centroids
  added to their own cells (lists = cells), the same nprobe sweep;
- faiss ``IndexHNSWFlat(d, --hnsw-m)`` over the fine centroids, efSearch swept.
Target: the smallest nprobe where ours agrees on >= 99% of rows is >= 10x faiss flat's
rows/s, and ahead of IVF and HNSW at the first setting where each reaches our agreement
(to 1e-4).

Outputs: a table on stdout, ``--json`` and ``--plot`` (agreement against rows/s).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import multiprocessing as mp
import os
import platform
import resource
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MIB = float(1 << 20)
TARGET_AGREEMENT = 0.99
# A peer "reaches our agreement" within this much (near-ties move a few rows either way).
AGREEMENT_SLACK = 1e-4
# Relative distance difference under which a different label still counts as nearest.
TIE_REL = 1e-5
SAMPLE_SEED = 12345
WARMUP_ROWS = 256
# clam_dist's distance blocks: at most 2^22 float32 entries (am.NEAREST_BLOCK_ELEMS,
# two_level._PREDICT_BLOCK_ELEMS); faiss's flat search blocks are 4096 x 1024 floats.
BLOCK_ELEMS = 1 << 22
# two_level.COARSE_ROWS_PER_CELL, and faiss's max_points_per_centroid of its coarse level.
OURS_COARSE_ROWS_PER_CELL = 256
FAISS_COARSE_ROWS_PER_CELL = 2000
FIT_STEPS = ("fit_ours", "fit_defaults", "fit_faiss", "fit_clam")
ASSIGN_STEPS = ("assign_flat", "assign_ours", "assign_ivf", "assign_hnsw")


# --- arguments -----------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rows", type=int, default=1_000_000, help="fit rows")
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--k", type=int, default=65_536, help="fine prototypes in all")
    p.add_argument("--coarse", type=int, default=256, help="coarse cells")
    p.add_argument("--iters", type=int, default=20, help="coarse and fine passes")
    p.add_argument("--assign-rows", type=int, default=100_000, help="held-out rows")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--components", type=int, default=0, help="mixture components (0 = k)")
    p.add_argument("--sample-rows", type=int, default=10_000, help="silhouette sample")
    p.add_argument("--batch-rows", type=int, default=65_536, help="rows per predict batch")
    p.add_argument("--hnsw-m", type=int, default=32)
    p.add_argument("--ef-search", default="16,32,64,128,256,512")
    p.add_argument("--data", default=None, help="Parquet URL written by write_mixture")
    p.add_argument("--json", default="bench_results/large_k.json")
    p.add_argument("--plot", default="bench_results/large_k.png")
    p.add_argument("--workdir", default=None, help="step scratch (default: a temp dir)")
    p.add_argument("--skip-clam", action="store_true")
    p.add_argument("--skip-defaults", action="store_true", help="no estimator-defaults fit")
    p.add_argument(
        "--clam-epochs", type=int, default=None, help="ClAM's epochs per cell (default: its own)"
    )
    p.add_argument("--fit-only", action="store_true", help="the fit steps only (no assignment)")
    p.add_argument(
        "--cell-seeding",
        choices=["kmeans++", "random"],
        default="kmeans++",
        help="our like-for-like fit's seeding of each cell (random: faiss's way)",
    )
    args = p.parse_args(argv)
    if not 1 <= args.coarse <= args.k:
        p.error(f"--coarse must be in [1, --k={args.k}]")
    return args


def nprobe_sweep(k1: int) -> list[int]:
    """1, 2, 4, ... below k1, then k1 (as two_level.default_nprobes, without torch)."""
    out, p = [], 1
    while p < k1:
        out.append(p)
        p *= 2
    return [*out, k1]


# --- data ----------------------------------------------------------------------------


def mixture_chunks(
    n: int, d: int, components: int, seed: int, chunk: int = 262_144
) -> Iterator[np.ndarray]:
    """n rows of write_mixture's Gaussian mixture (jobs/bench_scale.py), chunk by chunk so
    the parent never holds them all: centres N(0, 1), spreads U(0.3, 0.7), Dirichlet(2)
    weights."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 1.0, (components, d)).astype(np.float32)
    spread = rng.uniform(0.3, 0.7, components).astype(np.float32)
    weights = rng.dirichlet(np.full(components, 2.0))
    for r0 in range(0, n, chunk):
        m = min(chunk, n - r0)
        label = rng.choice(components, m, p=weights)
        x = rng.standard_normal((m, d), dtype=np.float32)
        x *= spread[label, None]
        x += centers[label]
        yield x


def parquet_chunks(url: str) -> Iterator[np.ndarray]:
    """The vectors of every file under ``url`` in file order, batch by batch."""
    from clam_dist.data.source import VectorSource
    from clam_dist.data.stream import read_rows

    source = VectorSource(url)
    for f in source.files():
        for batch in read_rows(source, f):
            yield batch.x


def parquet_shape(url: str) -> tuple[int, int]:
    """(rows, d) of the Parquet files under ``url``: rows from the footers, d from the
    first batch."""
    from clam_dist.data.source import VectorSource

    source = VectorSource(url)
    rows = 0
    for f in source.files():
        with source.parquet_file(f) as pf:
            rows += pf.metadata.num_rows
    return rows, int(next(parquet_chunks(url)).shape[1])


def write_rows(chunks: Iterator[np.ndarray], dests: list[tuple[Path, int]], d: int) -> None:
    """Fill .npy files of (rows, d) float32 in order from ``chunks`` (memory-mapped: the
    parent holds one chunk at a time)."""
    it = iter(chunks)
    carry = np.empty((0, d), np.float32)
    for path, rows in dests:
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, d))
        r = 0
        while r < rows:
            if carry.shape[0] == 0:
                carry = np.ascontiguousarray(next(it), dtype=np.float32)
            take = min(rows - r, carry.shape[0])
            out[r : r + take] = carry[:take]
            carry, r = carry[take:], r + take
        out.flush()
        del out


def prepare_data(args: argparse.Namespace, wd: Path) -> dict:
    """Write fit.npy and held.npy; ``args.rows``/``args.d`` become what was written."""
    if args.data:
        total, d = parquet_shape(args.data)
        if total <= args.assign_rows:
            raise SystemExit(f"{args.data}: {total} rows, need more than --assign-rows")
        if total < args.rows + args.assign_rows:
            print(f"[data] {args.data} has {total:,} rows: fitting on {total - args.assign_rows:,}")
            args.rows = total - args.assign_rows
        args.d = d
        chunks, source = parquet_chunks(args.data), args.data
    else:
        comps = args.components or args.k
        chunks = mixture_chunks(args.rows + args.assign_rows, args.d, comps, seed=0)
        source = f"generated mixture, {comps} components, seed 0"
    t0 = time.perf_counter()
    write_rows(chunks, [(wd / "fit.npy", args.rows), (wd / "held.npy", args.assign_rows)], args.d)
    print(
        f"[data] {args.rows:,} + {args.assign_rows:,} rows x {args.d} ({source}) in "
        f"{time.perf_counter() - t0:.1f}s"
    )
    return {"source": source, "rows": args.rows, "assign_rows": args.assign_rows, "d": args.d}


# --- memory --------------------------------------------------------------------------


def max_rss_mib() -> float:
    """This process's peak RSS so far (ru_maxrss, KiB on Linux). The kernel updates that
    high-water mark lazily, so it can trail the current RSS by a few pages: take both."""
    import psutil

    now = psutil.Process().memory_info().rss / MIB
    return max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, now)


@dataclass
class Formula:
    """A step's memory, term by term: (name, bytes)."""

    terms: list[tuple[str, float]] = field(default_factory=list)

    def add(self, name: str, nbytes: float) -> Formula:
        self.terms.append((name, float(nbytes)))
        return self

    @property
    def mib(self) -> float:
        return sum(b for _, b in self.terms) / MIB

    def text(self) -> str:
        return " + ".join(f"{name} {b / MIB:.1f}" for name, b in self.terms)


def block_bytes(n: int, k: int) -> int:
    """clam_dist's reused (rows x centres) buffer (am.offset_score_blocks): as many rows
    as fit in 2^22 entries, at most n."""
    return min(n, max(1, BLOCK_ELEMS // max(k, 1))) * k * 4


def faiss_block_bytes(n: int, k: int) -> int:
    """faiss's exhaustive-search inner-product block (exhaustive_L2sqr_blas)."""
    return min(n, 4096) * min(k, 1024) * 4


def sample_copy_bytes(n: int, d: int, size: int) -> int:
    """Both coarse levels copy a training sample of ``size`` rows only when n exceeds it."""
    return size * d * 4 if n > size else 0


def two_level_fit_formula(n: int, d: int, k: int, k1: int) -> Formula:
    """fit_two_level (models/two_level.py): the rows; the coarse-training sample copy;
    assigning every row to a cell (assign_nearest: row norms n x 4, distances n x 4 kept
    as ``_``, labels n x 8, one 2^22-float block); the stable argsort order n x 8; the
    per-cell prototypes and their concatenation (2 x k x d x 4). The largest cell's row
    copy and its k-means scratch (about n / k1 rows) are not counted."""
    return (
        Formula()
        .add("data n*d*4", n * d * 4)
        .add("coarse sample copy", sample_copy_bytes(n, d, OURS_COARSE_ROWS_PER_CELL * k1))
        .add("cell assign n*(4+4+8)", n * 16)
        .add("sort order n*8", n * 8)
        .add("distance block", block_bytes(n, k1))
        .add("fine 2*k*d*4", 2 * k * d * 4)
    )


def estimator_fit_formula(n: int, d: int, k: int, k1: int, nprobe, batch: int) -> Formula:
    """estimator_base._fit_two_level: fit_two_level on the 90% kept rows, which it copies
    (z[train]), then ``predict`` of all rows (labels n x 8, distances n x 4, and one
    batch's probe working set)."""
    held = min(10_000, n // 10, n - k)
    f = Formula().add("data n*d*4", n * d * 4).add("train copy", (n - max(held, 0)) * d * 4)
    inner = two_level_fit_formula(n - max(held, 0), d, k, k1)
    f.terms += [t for t in inner.terms if not t[0].startswith("data")]
    f.add("predict out n*12", n * 12)
    f.terms += probe_batch_formula(min(n, batch), k, k1, nprobe).terms
    return f


def faiss_fit_formula(n: int, d: int, k: int, k1: int) -> Formula:
    """faiss two_level_clustering: the rows; faiss.Kmeans's copy of its coarse training
    sample (<= 2,000 rows per cell); assigning every row (distances n x 4, labels n x 8,
    one 4096 x 1024 float block); argsort order n x 8; centroids list + vstack 2 x k x d x 4."""
    return (
        Formula()
        .add("data n*d*4", n * d * 4)
        .add("coarse sample copy", sample_copy_bytes(n, d, FAISS_COARSE_ROWS_PER_CELL * k1))
        .add("cell assign n*12", n * 12)
        .add("sort order n*8", n * 8)
        .add("faiss block", faiss_block_bytes(n, k1))
        .add("fine 2*k*d*4", 2 * k * d * 4)
    )


def probe_batch_formula(b: int, k: int, k1: int, p: int | str) -> Formula:
    """One ``predict`` batch of b rows. Exact: one distance block against all k. At
    nprobe p (two_level.probed_pairs and _ProbeSearch): coarse scores b x k1 x 4; topk
    values b x p x 4 and indices b x p x 8; the stable argsort of the cells (sorted copy
    + order, 2 x b x p x 8); pair rows b x p x 8; one cell's distance block (about
    b p / k1 rows x k / k1 prototypes). Not bounded by the 2^22-entry block."""
    if p == "exact":
        return Formula().add("distance block", block_bytes(b, k))
    return (
        Formula()
        .add("coarse scores b*k1*4", b * k1 * 4)
        .add("probe pairs b*p*36", b * p * 36)
        .add("cell block", block_bytes(-(-b * p // k1), -(-k // k1)))
    )


def larger(*formulas: Formula) -> Formula:
    return max(formulas, key=lambda f: f.mib)


def assign_formula(name: str, m: int, d: int, k: int, k1: int, args) -> Formula:
    """What each assignment step holds besides the interpreter: the held-out rows, the
    centroids (as the library keeps them), outputs, and search scratch."""
    f = Formula().add("rows m*d*4", m * d * 4).add("fine k*d*4", k * d * 4)
    if name == "assign_flat":
        f.add("index copy k*d*4", k * d * 4).add("out m*12", m * 12)
        f.add("faiss block", faiss_block_bytes(m, k))
    elif name == "assign_ours":
        f.add("exact labels m*8", m * 8).add("out m*12", m * 12)
        b = min(m, args.batch_rows)  # the exact search or the widest probe, whichever is larger
        batch = larger(probe_batch_formula(b, k, k1, "exact"), probe_batch_formula(b, k, k1, k1))
        f.terms += batch.terms
    elif name == "assign_ivf":
        f.add("lists k*(d*4+8)", k * (d * 4 + 8)).add("out m*12", m * 12)
        f.add("probe lists m*k1*12", m * k1 * 12)  # the largest nprobe swept is k1
    else:  # hnsw: vectors, level-0 links (2M int32), ~1 upper link set, levels, offsets
        mm = args.hnsw_m
        f.add("index k*d*4", k * d * 4).add("links k*(2M+M/(M-1))*4", k * (2 * mm + 1.04) * 4)
        f.add("levels+offsets k*12", k * 12).add("out m*12", m * 12)
    return f


# --- measures shared by the steps -----------------------------------------------------


def exact_nearest(x: np.ndarray, fine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(squared distance float32, label int64) of every row's nearest fine centroid by
    faiss's exhaustive search: one reference for every method."""
    import faiss

    index = faiss.IndexFlatL2(fine.shape[1])
    index.add(np.ascontiguousarray(fine, dtype=np.float32))
    dist, labels = index.search(np.ascontiguousarray(x, dtype=np.float32), 1)
    return np.maximum(dist[:, 0], 0.0), labels[:, 0].astype(np.int64)


def agreement(x: np.ndarray, fine: np.ndarray, labels: np.ndarray, exact: np.ndarray) -> float:
    """Share of rows whose label is a nearest centroid: equal to the exact label, or
    within TIE_REL of its distance in float64 (two code paths can break a float32 near-tie
    differently; that is not a search miss)."""
    labels, exact = np.asarray(labels, np.int64), np.asarray(exact, np.int64)
    n = labels.shape[0]
    if n == 0:
        return 1.0
    miss = np.flatnonzero((labels != exact) & (labels >= 0))
    ties = 0
    for r0 in range(0, miss.size, 65_536):
        rows = miss[r0 : r0 + 65_536]
        xr = x[rows].astype(np.float64)
        d_lab = ((xr - fine[labels[rows]].astype(np.float64)) ** 2).sum(1)
        d_ex = ((xr - fine[exact[rows]].astype(np.float64)) ** 2).sum(1)
        ties += int(np.count_nonzero(d_lab <= d_ex * (1.0 + TIE_REL)))
    return float((np.count_nonzero(labels == exact) + ties) / n)


def silhouette(x: np.ndarray, labels: np.ndarray, rows: int, threads: int) -> dict:
    """scikit-learn's silhouette on a fixed sample (float64). With k much larger than the
    sample most sampled clusters are singletons, which score 0: the share is reported."""
    from sklearn.metrics import silhouette_score
    from threadpoolctl import threadpool_limits

    n = x.shape[0]
    idx = np.sort(np.random.default_rng(SAMPLE_SEED).choice(n, min(rows, n), replace=False))
    lab = labels[idx]
    _, inverse, counts = np.unique(lab, return_inverse=True, return_counts=True)
    singles = float(np.mean(counts[inverse] == 1))
    if not 2 <= counts.size <= idx.size - 1:
        return {"silhouette": None, "sample_rows": int(idx.size), "singleton_share": singles}
    with threadpool_limits(threads):
        score = float(silhouette_score(x[idx].astype(np.float64), lab))
    return {"silhouette": score, "sample_rows": int(idx.size), "singleton_share": singles}


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def rate(rows: int, seconds: float) -> float:
    return rows / max(seconds, 1e-12)


# --- fit steps ------------------------------------------------------------------------


@dataclass
class FitOutput:
    fine: np.ndarray
    seconds: float
    formula: Formula
    extra: dict = field(default_factory=dict)


def fit_ours(x: np.ndarray, args: argparse.Namespace, wd: Path) -> FitOutput:
    """fit_two_level with the default kmeans_cell: ``--iters`` passes on both levels."""
    from clam_dist.models.two_level import fit_two_level, kmeans_cell

    cell = functools.partial(kmeans_cell, n_iter=args.iters, seeding=args.cell_seeding)
    seconds, model = timed(
        lambda: fit_two_level(
            x, args.k, args.coarse, cell, seed=0, coarse_iter=args.iters, fine_iter=args.iters
        )
    )
    # The assignment steps search this model's centroids.
    np.savez(
        wd / "ours_model.npz",
        coarse=model.coarse,
        fine=model.fine,
        cell_of_fine=model.cell_of_fine,
        cell_offsets=model.cell_offsets,
    )
    formula = two_level_fit_formula(x.shape[0], x.shape[1], args.k, args.coarse)
    return FitOutput(model.fine, seconds, formula)


def fit_estimator(cls_name: str) -> Callable[[np.ndarray, argparse.Namespace, Path], FitOutput]:
    """A fit by the estimator ``clam_dist.<cls_name>`` with its defaults (two levels)."""

    def fit(x: np.ndarray, args: argparse.Namespace, wd: Path) -> FitOutput:
        import warnings

        import clam_dist

        params = {"n_clusters": args.k, "coarse_clusters": args.coarse, "random_state": 0}
        if cls_name == "ClAM" and args.clam_epochs is not None:
            params["epochs"] = args.clam_epochs
        est = getattr(clam_dist, cls_name)(**params)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the few-rows-per-cluster note
            seconds, _ = timed(lambda: est.fit(x))
        extra = {"nprobe": est.nprobe_, "own_inertia": float(est.inertia_)}
        if "epochs" in params:
            extra["epochs"] = params["epochs"]
        if hasattr(est, "beta_"):
            extra["beta"] = float(est.beta_)
        n, d = x.shape
        formula = estimator_fit_formula(n, d, args.k, args.coarse, est.nprobe_, 65_536)
        return FitOutput(np.asarray(est.cluster_centers_, np.float32), seconds, formula, extra)

    return fit


@contextlib.contextmanager
def faiss_fine_niter(niter: int) -> Iterator[None]:
    """two_level_clustering passes ``niter`` to its coarse faiss.Kmeans only (and any
    ``niter`` in its **args would collide with that one): give the cells' Kmeans the same
    count by default, for this step only."""
    import faiss

    original = faiss.Kmeans

    class Kmeans(original):
        def __init__(self, d: int, k: int, **kwargs):
            kwargs.setdefault("niter", niter)
            super().__init__(d, k, **kwargs)

    faiss.Kmeans = Kmeans
    try:
        yield
    finally:
        faiss.Kmeans = original


def faiss_two_level_safe(x: np.ndarray, k1: int, k: int, niter: int) -> np.ndarray:
    """faiss's two_level_clustering recipe step for step (coarse faiss.Kmeans on <= 2,000
    rows per cell, assign, per-cell faiss.Kmeans), but each cell's centroid count from
    ``allocate_fine``: >= 1 per non-empty cell, <= its rows, k in all."""
    import faiss

    from clam_dist.models.two_level import allocate_fine

    d = x.shape[1]
    km = faiss.Kmeans(d, k1, niter=niter, max_points_per_centroid=FAISS_COARSE_ROWS_PER_CELL)
    km.train(x)
    _, assign1 = km.assign(x)
    bc = np.bincount(assign1, minlength=k1)
    order = assign1.argsort()
    alloc = allocate_fine(bc, k)
    parts, i0 = [], 0
    for c in range(k1):
        subset, i0 = order[i0 : i0 + bc[c]], i0 + bc[c]
        if alloc[c] == 0:
            continue
        rows = x[subset]
        if alloc[c] == rows.shape[0]:  # as many centroids as rows: the rows themselves
            parts.append(rows)
            continue
        km = faiss.Kmeans(d, int(alloc[c]), niter=niter)
        km.train(rows)
        parts.append(km.centroids)
    return np.vstack(parts)


def fit_faiss(x: np.ndarray, args: argparse.Namespace, wd: Path) -> FitOutput:
    """faiss's recipe; on its rebalancing failure, the same recipe with a safe split."""
    from faiss.contrib.clustering import two_level_clustering

    extra: dict = {}
    try:
        with faiss_fine_niter(args.iters):
            seconds, (fine, _) = timed(
                lambda: two_level_clustering(
                    x, args.coarse, args.k, rebalance=True, clustering_niter=args.iters
                )
            )
        extra["mode"] = "faiss two_level_clustering(rebalance=True)"
    except (AssertionError, RuntimeError) as exc:
        failed = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        seconds, fine = timed(lambda: faiss_two_level_safe(x, args.coarse, args.k, args.iters))
        extra["mode"] = (
            "faiss rebalancing failed (a cell got 0 centroids); re-ran the same recipe "
            "with allocate_fine's split (>= 1 centroid per non-empty cell)"
        )
        extra["failed_error"] = f"{type(exc).__name__}: {failed}"
    formula = faiss_fit_formula(x.shape[0], x.shape[1], args.k, args.coarse)
    return FitOutput(np.asarray(fine, np.float32), seconds, formula, extra)


FITTERS: dict[str, Callable[[np.ndarray, argparse.Namespace, Path], FitOutput]] = {
    "fit_ours": fit_ours,
    "fit_defaults": fit_estimator("KMeans"),
    "fit_faiss": fit_faiss,
    "fit_clam": fit_estimator("ClAM"),
}


def run_fit(name: str, args: argparse.Namespace, wd: Path, base_mib: float) -> dict:
    x = np.load(wd / "fit.npy")
    out = FITTERS[name](x, args, wd)
    # The peak is read before scoring, so it is the fit's own (ru_maxrss only grows).
    peak = max_rss_mib()
    dist, labels = exact_nearest(x, out.fine)
    result = {
        "seconds": out.seconds,
        "inertia": float(dist.astype(np.float64).sum()),
        "k": int(out.fine.shape[0]),
        "nonempty": int(np.unique(labels).size),
        **silhouette(x, labels, args.sample_rows, args.threads),
        **out.extra,
    }
    result["rss"] = rss_entry(base_mib, peak, out.formula)
    return result


def rss_entry(base_mib: float, peak_mib: float, formula: Formula) -> dict:
    net = peak_mib - base_mib
    return {
        "base_mib": base_mib,
        "peak_mib": peak_mib,
        "net_mib": net,
        "formula_mib": formula.mib,
        "formula": formula.text(),
        "net_over_formula": net / formula.mib if formula.mib else None,
    }


# --- assignment steps -----------------------------------------------------------------


def load_model(wd: Path):
    from clam_dist.models.two_level import TwoLevelModel

    z = np.load(wd / "ours_model.npz")
    return TwoLevelModel(z["coarse"], z["fine"], z["cell_of_fine"], z["cell_offsets"])


def faiss_search_rate(index, x: np.ndarray) -> tuple[float, np.ndarray]:
    """(rows/s, labels) of ``index.search(x, 1)`` after a warm-up on a few rows."""
    index.search(x[:WARMUP_ROWS], 1)
    seconds, (_, labels) = timed(lambda: index.search(x, 1))
    return rate(x.shape[0], seconds), labels[:, 0].astype(np.int64)


def assign_flat(x: np.ndarray, model, args: argparse.Namespace, wd: Path) -> dict:
    import faiss

    index = faiss.IndexFlatL2(x.shape[1])
    index.add(model.fine)
    rows_per_s, labels = faiss_search_rate(index, x)
    np.save(wd / "exact.npy", labels)
    return {"rows_per_s": rows_per_s, "agreement": 1.0}


def assign_ours(x: np.ndarray, model, args: argparse.Namespace, wd: Path) -> dict:
    exact = np.load(wd / "exact.npy")
    model.predict(x[:WARMUP_ROWS], 1, args.batch_rows)
    model.predict(x[:WARMUP_ROWS], "exact", args.batch_rows)
    seconds, (labels, _) = timed(lambda: model.predict(x, "exact", args.batch_rows))
    out = {
        "exact": {
            "rows_per_s": rate(x.shape[0], seconds),
            "agreement": agreement(x, model.fine, labels, exact),
        },
        "curve": [],
    }
    for p in nprobe_sweep(model.k1):
        seconds, (labels, _) = timed(lambda p=p: model.predict(x, p, args.batch_rows))
        out["curve"].append(
            {
                "nprobe": p,
                "agreement": agreement(x, model.fine, labels, exact),
                "rows_per_s": rate(x.shape[0], seconds),
            }
        )
    return out


def assign_ivf(x: np.ndarray, model, args: argparse.Namespace, wd: Path) -> dict:
    """IndexIVFFlat whose quantizer holds our coarse centroids and whose list c holds
    cell c's fine centroids (added pre-assigned, ids = our fine ids)."""
    import faiss
    from faiss.contrib.ivf_tools import add_preassigned

    exact = np.load(wd / "exact.npy")
    d = x.shape[1]
    quantizer = faiss.IndexFlatL2(d)
    quantizer.add(model.coarse)
    index = faiss.IndexIVFFlat(quantizer, d, model.k1)
    assert index.is_trained  # a full quantizer needs no training
    add_preassigned(index, np.ascontiguousarray(model.fine), model.cell_of_fine.astype(np.int64))
    curve = []
    for p in nprobe_sweep(model.k1):
        index.nprobe = p
        rows_per_s, labels = faiss_search_rate(index, x)
        curve.append(
            {
                "nprobe": p,
                "agreement": agreement(x, model.fine, labels, exact),
                "rows_per_s": rows_per_s,
            }
        )
    return {"curve": curve}


def assign_hnsw(x: np.ndarray, model, args: argparse.Namespace, wd: Path) -> dict:
    import faiss

    exact = np.load(wd / "exact.npy")
    index = faiss.IndexHNSWFlat(x.shape[1], args.hnsw_m)
    build_s, _ = timed(lambda: index.add(model.fine))
    curve = []
    for ef in (int(v) for v in args.ef_search.split(",")):
        index.hnsw.efSearch = ef
        rows_per_s, labels = faiss_search_rate(index, x)
        curve.append(
            {
                "ef_search": ef,
                "agreement": agreement(x, model.fine, labels, exact),
                "rows_per_s": rows_per_s,
            }
        )
    return {"m": args.hnsw_m, "build_s": build_s, "curve": curve}


ASSIGNERS: dict[str, Callable] = {
    "assign_flat": assign_flat,
    "assign_ours": assign_ours,
    "assign_ivf": assign_ivf,
    "assign_hnsw": assign_hnsw,
}


def run_assign(name: str, args: argparse.Namespace, wd: Path, base_mib: float) -> dict:
    x = np.load(wd / "held.npy")
    model = load_model(wd)
    result = ASSIGNERS[name](x, model, args, wd)
    formula = assign_formula(name, x.shape[0], x.shape[1], model.k, model.k1, args)
    result["rss"] = rss_entry(base_mib, max_rss_mib(), formula)
    return result


# --- step processes --------------------------------------------------------------------


# What a step imports lazily: imported before its baseline so that code pages are not
# counted as the step's memory (a first ``clam_dist.KMeans`` fit pulls in scikit-learn,
# scipy and pandas; a first ClAM fit torch.optim, sympy and the tune package: 100-150 MiB).
STEP_IMPORTS = {"assign_ivf": "faiss.contrib.ivf_tools"}


def warm_up(name: str, args: argparse.Namespace) -> float:
    """Set the threads, then run the step's method once on tiny data (imports, thread
    pools, BLAS buffers); return the RSS (MiB) the step then starts from."""
    import importlib
    import warnings

    import faiss
    import psutil
    import torch

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    if name in STEP_IMPORTS:
        importlib.import_module(STEP_IMPORTS[name])
    rows = np.random.default_rng(0).normal(size=(512, args.d)).astype(np.float32)
    tiny = argparse.Namespace(**{**vars(args), "k": 16, "coarse": 4, "iters": 2})
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if name in FIT_STEPS:
            FITTERS[name](rows, tiny, Path(tmp))
        else:
            from clam_dist.models.two_level import fit_two_level

            model = fit_two_level(rows, 16, 4, coarse_iter=2, fine_iter=2)
            model.predict(rows, "exact")
            model.predict(rows, 2)
            exact_nearest(rows, model.fine)
    return psutil.Process().memory_info().rss / MIB


def step_main(name: str, args: argparse.Namespace, wd: str) -> None:
    """A step's process: its output to <step>.log, its result to <step>.json."""
    wd_path = Path(wd)
    log = os.open(wd_path / f"{name}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    # faiss's C++ warnings (few rows per centroid, one per cell) go to fd 2 directly.
    os.dup2(log, 1)
    os.dup2(log, 2)
    try:
        base = warm_up(name, args)
        run = run_fit if name in FIT_STEPS else run_assign
        result = run(name, args, wd_path, base)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    (wd_path / f"{name}.json").write_text(json.dumps(to_json(result)))


def to_json(value):
    """numpy scalars and arrays as plain JSON values."""
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class StepRunner:
    """Runs each step in a process forked from one server that has imported torch,
    faiss and clam_dist but run nothing: no import cost per step, and each step's
    ru_maxrss is its own (the fork starts from the server's small, idle RSS)."""

    def __init__(self, args: argparse.Namespace, wd: Path):
        self.args, self.wd = args, wd
        self.ctx = mp.get_context("forkserver")
        self.ctx.set_forkserver_preload(["torch", "faiss", "clam_dist.models.two_level"])

    def run(self, name: str) -> dict:
        t0 = time.perf_counter()
        print(f"[{name}] started", flush=True)
        proc = self.ctx.Process(target=step_main, args=(name, self.args, str(self.wd)))
        proc.start()
        proc.join()
        out = self.wd / f"{name}.json"
        if proc.exitcode != 0 or not out.exists():
            log = (self.wd / f"{name}.log").read_text(errors="replace")[-4000:]
            raise SystemExit(f"[{name}] failed (exit {proc.exitcode}):\n{log}")
        print(f"[{name}] done in {time.perf_counter() - t0:.1f}s", flush=True)
        return json.loads(out.read_text())


# --- headline, table, plot -------------------------------------------------------------


def fit_target(fit: dict) -> dict:
    ours, peer = fit["ours"], fit["faiss"]
    time_ratio = ours["seconds"] / peer["seconds"]
    inertia_ratio = ours["inertia"] / peer["inertia"]
    return {
        "time_ratio": time_ratio,
        "time_met": time_ratio <= 0.5,
        "inertia_ratio": inertia_ratio,
        "inertia_met": inertia_ratio <= 1.01,
    }


def first_reaching(curve: list[dict], bar: float) -> dict | None:
    return next((e for e in curve if e["agreement"] >= bar), None)


def assign_target(assign: dict) -> dict:
    ours = first_reaching(assign["ours"]["curve"], TARGET_AGREEMENT)
    if ours is None:
        return {"nprobe": None, "speedup_met": False, "ahead_met": False}
    bar = ours["agreement"] - AGREEMENT_SLACK
    speedup = ours["rows_per_s"] / assign["flat"]["rows_per_s"]
    out = {
        "nprobe": ours["nprobe"],
        "agreement": ours["agreement"],
        "rows_per_s": ours["rows_per_s"],
        "speedup_vs_flat": speedup,
        "speedup_met": speedup >= 10.0,
    }
    ahead = True
    for peer in ("ivf", "hnsw"):
        hit = first_reaching(assign[peer]["curve"], bar)
        out[peer] = hit
        if hit is not None:
            ahead &= ours["rows_per_s"] > hit["rows_per_s"]
    # IVF at the same nprobe searches the very same cells: the like-for-like point.
    out["ivf_same_nprobe"] = next(
        e for e in assign["ivf"]["curve"] if e["nprobe"] == ours["nprobe"]
    )
    out["ahead_met"] = ahead
    return out


def met(flag: bool) -> str:
    return "met" if flag else "NOT met"


def print_fit_table(fit: dict) -> None:
    print("\nFit (inertia: exact search over all fit rows; silhouette on a fixed sample)")
    print(
        "| method | seconds | inertia | non-empty | silhouette | peak RSS MiB | net MiB | formula MiB |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in fit.items():
        sil = "n/a" if r["silhouette"] is None else f"{r['silhouette']:.4f}"
        rss = r["rss"]
        print(
            f"| {name} | {r['seconds']:.1f} | {r['inertia']:.6g} | {r['nonempty']:,}/{r['k']:,} "
            f"| {sil} ({r['singleton_share']:.0%} singletons) | {rss['peak_mib']:.0f} "
            f"| {rss['net_mib']:.0f} | {rss['formula_mib']:.0f} |"
        )
    for name, r in fit.items():
        print(f"  {name} formula (MiB): {r['rss']['formula']}")
        for key in ("mode", "failed_error", "nprobe", "own_inertia", "beta", "epochs"):
            if key in r:
                print(f"  {name} {key}: {r[key]}")


def print_assign_table(assign: dict) -> None:
    print("\nAssignment of held-out rows (agreement with exact search)")
    print("| method | setting | agreement | rows/s |")
    print("| --- | --- | --- | --- |")
    flat = assign["flat"]
    print(f"| faiss IndexFlatL2 | exact | 1.0000 | {flat['rows_per_s']:,.0f} |")
    ex = assign["ours"]["exact"]
    print(f"| ours predict | exact | {ex['agreement']:.4f} | {ex['rows_per_s']:,.0f} |")
    rows = [("ours predict", "nprobe", e) for e in assign["ours"]["curve"]]
    rows += [("faiss IVFFlat", "nprobe", e) for e in assign["ivf"]["curve"]]
    rows += [("faiss HNSWFlat", "efSearch", e) for e in assign["hnsw"]["curve"]]
    for name, key, e in rows:
        setting = e["nprobe"] if key == "nprobe" else e["ef_search"]
        print(f"| {name} | {key}={setting} | {e['agreement']:.4f} | {e['rows_per_s']:,.0f} |")
    print(f"  HNSW build: {assign['hnsw']['build_s']:.1f}s (M={assign['hnsw']['m']})")
    print("\nPeak RSS of the assignment steps (MiB: peak, net of the step's start, formula)")
    for name in ("flat", "ours", "ivf", "hnsw"):
        rss = assign[name]["rss"]
        print(
            f"  {name}: {rss['peak_mib']:.0f}, net {rss['net_mib']:.0f}, formula "
            f"{rss['formula_mib']:.0f} = {rss['formula']}"
        )


def print_targets(report: dict) -> None:
    ft, at = report["fit_target"], report["assign_target"]
    print("\nTargets")
    print(
        f"  fit time ours / faiss = {ft['time_ratio']:.3f} (<= 0.5 wanted): {met(ft['time_met'])}"
    )
    print(
        f"  inertia ours / faiss = {ft['inertia_ratio']:.4f} (<= 1.01 wanted): "
        f"{met(ft['inertia_met'])}"
    )
    if at is None:
        return
    if at["nprobe"] is None:
        print(f"  assignment: no nprobe reaches {TARGET_AGREEMENT:.0%} agreement: NOT met")
        return
    print(
        f"  assignment: nprobe={at['nprobe']} agrees on {at['agreement']:.4f} at "
        f"{at['rows_per_s']:,.0f} rows/s = {at['speedup_vs_flat']:.1f}x faiss flat "
        f"(>= 10x wanted): {met(at['speedup_met'])}"
    )
    same = at["ivf_same_nprobe"]
    print(
        f"  faiss IVF at the same nprobe (same cells): {same['agreement']:.4f}, "
        f"{same['rows_per_s']:,.0f} rows/s"
    )
    for peer, key in (("ivf", "nprobe"), ("hnsw", "ef_search")):
        hit = at[peer]
        where = (
            "never reaches it"
            if hit is None
            else f"first reaches it at {key}={hit[key]}: {hit['rows_per_s']:,.0f} rows/s"
        )
        print(f"  faiss {peer.upper()} {where}")
    print(f"  ours ahead of IVF and HNSW at that agreement: {met(at['ahead_met'])}")


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = report["assign"]
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, key, curve, style in (
        ("ours TwoLevelModel.predict", "nprobe", a["ours"]["curve"], "o-"),
        ("faiss IndexIVFFlat (same cells)", "nprobe", a["ivf"]["curve"], "s--"),
        (f"faiss IndexHNSWFlat M={a['hnsw']['m']}", "ef_search", a["hnsw"]["curve"], "^-."),
    ):
        xs = [e["rows_per_s"] for e in curve]
        ys = [e["agreement"] for e in curve]
        ax.plot(xs, ys, style, label=name)
        for e in curve:
            ax.annotate(str(e[key]), (e["rows_per_s"], e["agreement"]), fontsize=7)
    ax.plot([a["flat"]["rows_per_s"]], [1.0], "k*", markersize=12, label="faiss IndexFlatL2")
    ax.plot(
        [a["ours"]["exact"]["rows_per_s"]],
        [a["ours"]["exact"]["agreement"]],
        "kx",
        label="ours exact",
    )
    ax.axhline(TARGET_AGREEMENT, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("rows / s (log)")
    ax.set_ylabel("agreement with exact assignment")
    c = report["config"]
    ax.set_title(
        f"k={c['k']:,} ({c['coarse']} cells), {c['assign_rows']:,} rows x {c['d']}, "
        f"{c['threads']} threads"
    )
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- main ----------------------------------------------------------------------------


def planned_steps(args: argparse.Namespace) -> list[str]:
    skip = {"fit_clam"} if args.skip_clam else set()
    if args.skip_defaults:
        skip.add("fit_defaults")
    if args.fit_only:
        skip.update(ASSIGN_STEPS)
    return [s for s in (*FIT_STEPS, *ASSIGN_STEPS) if s not in skip]


FIT_NAMES = {
    "fit_ours": "ours",
    "fit_defaults": "ours_defaults",
    "fit_faiss": "faiss",
    "fit_clam": "clam",
}


def build_report(args: argparse.Namespace, data: dict, results: dict) -> dict:
    fit = {FIT_NAMES[s]: r for s, r in results.items() if s in FIT_STEPS}
    assign = {s.removeprefix("assign_"): r for s, r in results.items() if s in ASSIGN_STEPS}
    report = {
        "config": {
            **{
                k: getattr(args, k)
                for k in (
                    "rows",
                    "d",
                    "k",
                    "coarse",
                    "iters",
                    "cell_seeding",
                    "assign_rows",
                    "threads",
                    "sample_rows",
                    "batch_rows",
                    "hnsw_m",
                    "ef_search",
                )
            },
            "data": data,
            "target_agreement": TARGET_AGREEMENT,
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        },
        "fit": fit,
        "assign": assign,
    }
    report["fit_target"] = fit_target(fit)
    report["assign_target"] = assign_target(assign) if assign else None
    report["rss"] = {s: r["rss"] for s, r in results.items()}
    return report


@contextlib.contextmanager
def workdir(path: str | None) -> Iterator[Path]:
    if path:
        Path(path).mkdir(parents=True, exist_ok=True)
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="bench-large-k-") as tmp:
        yield Path(tmp)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(args.threads)  # inherited by the fork server
    t0 = time.perf_counter()
    with workdir(args.workdir) as wd:
        data = prepare_data(args, wd)
        runner = StepRunner(args, wd)
        results = {name: runner.run(name) for name in planned_steps(args)}
    report = to_json(build_report(args, data, results))
    report["total_s"] = time.perf_counter() - t0
    print(
        f"\nk={args.k:,} = {args.coarse} coarse cells, {args.rows:,} fit rows x {args.d}, "
        f"{args.assign_rows:,} held-out rows, {args.threads} threads, {args.iters} iterations"
    )
    print_fit_table(report["fit"])
    if report["assign"]:
        print_assign_table(report["assign"])
    print_targets(report)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    if report["assign"]:
        plot(report, Path(args.plot))
    print(f"\nwrote {out} ({report['total_s']:.0f}s in all)")


if __name__ == "__main__":
    main()
