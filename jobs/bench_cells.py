"""Where a two-level fit's time goes: one fine cell at a time, ours against faiss, on the
cells of the large-k benchmark's data (issue 28: the two-level fit against faiss).

    python jobs/bench_cells.py [--rows 1000000 --d 128 --k 65536 --coarse 256 --cells 16
                                --iters 20 --json bench_results/cells.json]

The data are jobs/bench_large_k.py's mixture (``--components``, default k: about 15 rows
per component); the coarse level is ``models.two_level.fit_coarse`` and every row goes
to its nearest coarse centre; fine prototypes per cell by ``allocate_fine``. ``--cells``
cells spread evenly over the coarse ids are then fitted one after another, each variant
on the same cells with the same seeds, on ONE thread (torch, faiss and BLAS), which is
how both two-level fits run a cell when cells run side by side. Inertia: every cell
row's squared distance to its nearest fitted centre (faiss ``IndexFlatL2``, float64
sum), summed over the cells.

Variants:
- faiss ``Kmeans(niter=--iters)``: random seeding, no early stop (faiss's cell fit);
- ours, ``kmeans_cell``'s default: greedy k-means++ on all the cell's rows, then at most
  ``--iters`` Lloyd passes stopping at a relative inertia change below 1e-4;
- ours, random seeding (faiss's), the same Lloyd;
- ours, greedy k-means++ on m x k_c sampled rows of the cell (m = 2, 4, 8), then Lloyd
  on all its rows with at most 20 / 8 / 5 passes or tol 1e-3: what a cheaper start buys.

Prints a table (seconds, ratio to faiss, inertia, ratio to faiss) and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_large_k import mixture_chunks  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--k", type=int, default=65_536)
    p.add_argument("--coarse", type=int, default=256)
    p.add_argument("--components", type=int, default=0, help="mixture components (0 = k)")
    p.add_argument("--cells", type=int, default=16, help="cells fitted (spread over the ids)")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--json", default="bench_results/cells.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import faiss
    import torch

    from clam_dist.models.am import set_matmul_precision
    from clam_dist.models.kmeans import assign_nearest, kmeans_plus_plus, lloyd
    from clam_dist.models.two_level import allocate_fine, fit_coarse, kmeans_cell

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    set_matmul_precision()
    x = np.concatenate(list(mixture_chunks(args.rows, args.d, args.components or args.k, 0)))
    coarse = fit_coarse(x, args.coarse, 0, args.iters)
    _, cell = assign_nearest(torch.from_numpy(x), torch.from_numpy(coarse))
    cell = cell.numpy()
    rows = np.bincount(cell, minlength=args.coarse)
    alloc = allocate_fine(rows, args.k)
    step = max(1, args.coarse // args.cells)
    chosen = [c for c in range(0, args.coarse, step) if 0 < alloc[c] < rows[c]][: args.cells]
    cells = [(c, np.ascontiguousarray(x[cell == c]), int(alloc[c]), 1000 + c) for c in chosen]
    print(
        f"{len(cells)} cells of {args.coarse}: {sum(len(r) for _, r, _, _ in cells):,} rows, "
        f"{sum(k for _, _, k, _ in cells):,} fine prototypes, one thread",
        flush=True,
    )

    def inertia(rows_c: np.ndarray, centres: np.ndarray) -> float:
        index = faiss.IndexFlatL2(rows_c.shape[1])
        index.add(np.ascontiguousarray(centres, np.float32))
        dist, _ = index.search(rows_c, 1)
        return float(dist.sum(dtype=np.float64))

    def faiss_cell(rows_c, k_c, seed):
        km = faiss.Kmeans(rows_c.shape[1], k_c, niter=args.iters, seed=seed)
        km.train(rows_c)
        return km.centroids

    def sampled_start(per_centroid: int, passes: int, tol: float):
        def fit(rows_c, k_c, seed):
            xt = torch.from_numpy(rows_c)
            gen = torch.Generator().manual_seed(seed)
            m = per_centroid * k_c
            xs = xt if xt.shape[0] <= m else xt[torch.randperm(xt.shape[0], generator=gen)[:m]]
            return lloyd(xt, kmeans_plus_plus(xs, k_c, gen), passes, tol).centers.numpy()

        return fit

    variants: list[tuple[str, Callable]] = [
        (f"faiss Kmeans, random seeding, {args.iters} passes", faiss_cell),
        (
            f"ours kmeans_cell: greedy k-means++ on all rows, <= {args.iters} passes",
            lambda r, k, s: kmeans_cell(r, k, s, n_iter=args.iters),
        ),
        (
            f"ours, random seeding, <= {args.iters} passes",
            lambda r, k, s: kmeans_cell(r, k, s, n_iter=args.iters, seeding="random"),
        ),
    ]
    for m in (2, 4, 8):
        for passes, tol in ((20, 1e-4), (20, 1e-3), (8, 1e-4), (5, 1e-4)):
            variants.append(
                (f"ours, k-means++ on {m} x k_c rows, <= {passes} passes, tol {tol:g}",
                 sampled_start(m, passes, tol))
            )  # fmt: skip

    results = []
    for name, fit in variants:
        seconds = total = 0.0
        for _, rows_c, k_c, seed in cells:
            t0 = time.perf_counter()
            centres = fit(rows_c, k_c, seed)
            seconds += time.perf_counter() - t0
            total += inertia(rows_c, centres)
        results.append({"variant": name, "seconds": round(seconds, 4), "inertia": total})
        print(f"  {name}: {seconds:.3f} s, inertia {total:.5e}", flush=True)

    ref = results[0]
    print("\n| variant | seconds | vs faiss | inertia | vs faiss |")
    print("| --- | --- | --- | --- | --- |")
    for r in results:
        print(
            f"| {r['variant']} | {r['seconds']:.3f} | {r['seconds'] / ref['seconds']:.2f}x "
            f"| {r['inertia']:.4e} | {r['inertia'] / ref['inertia']:.3f} |"
        )
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "cells": chosen, "results": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
