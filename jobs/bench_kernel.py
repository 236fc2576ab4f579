"""Flat k-means kernel against faiss, side by side in one run, on the same rows and threads.

Command used for docs/the issue (1M x 128, k = 256, 2 threads; k = 4,096 last)::

    flock /tmp/bench.lock python jobs/bench_kernel.py --rows 1000000 --d 128 --ks 256 \
        --threads 2 --iters 20

What is compared, and how (every timing is wall clock after one warm-up call):

(a) Lloyd: ``clam_dist.models.kmeans.lloyd(x, init, max_iter=iters, tol=0)`` against
    ``faiss.Kmeans(d, k, niter=iters, max_points_per_centroid=rows)`` trained with
    ``init_centroids=init`` (the same centroids, all rows used, no sampling). faiss runs
    ``iters`` assignments + updates; ours runs ``iters`` updates plus one final
    assignment, so its per-iteration time (total / iters) carries one extra pass. The
    final inertia of both is measured the same way (our assignment, float64 sum).
(b) Nearest search: ``assign_nearest(x, centers)`` against
    ``faiss.IndexFlatL2(d).search(x, 1)`` with the same centres; the label agreement is
    reported too (they differ only on float ties / rounding).
(c) ``clam_dist.KMeans(n_clusters=4096, random_state=0)`` with its defaults (sampling,
    seeding, swaps, tol) against ``faiss.Kmeans(d, 4096, niter=iters,
    max_points_per_centroid=rows)`` on all rows: time and all-rows inertia, and the
    time ratio ours / faiss. ``--skip-4096`` leaves it out.

Data: a seeded Gaussian mixture (float32): 2k random centres, unit noise, so the
clusters are neither trivial nor pure noise. Writes a JSON (``--json``) and prints a
table.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
import torch

import clam_dist
from clam_dist.models.kmeans import assign_nearest, lloyd


def make_data(rows: int, d: int, seed: int = 0) -> np.ndarray:
    """Gaussian mixture: 2,048 centres spread 4x wider than the unit noise."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((2048, d), dtype=np.float32) * 4.0
    owner = rng.integers(0, centres.shape[0], rows)
    x = rng.standard_normal((rows, d), dtype=np.float32)
    x += centres[owner]
    return x


# CPU seconds of this process per call, next to wall seconds: on a shared, oversubscribed
# machine the wall clock measures the neighbours as much as the kernel.
_CPU: dict[str, float] = {}


def timed(fn: Callable[[], object], tag: str = "") -> tuple[float, object]:
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    if tag:
        _CPU[tag] = time.process_time() - c0
    return time.perf_counter() - t0, out


def cpu_fields() -> dict:
    """CPU seconds of the last timed ours/faiss calls and their ratio faiss / ours."""
    ours, faiss_cpu = _CPU.get("ours", float("nan")), _CPU.get("faiss", float("nan"))
    return {"ours_cpu_s": ours, "faiss_cpu_s": faiss_cpu, "cpu_speed_vs_faiss": faiss_cpu / ours}


def all_rows_inertia(x: torch.Tensor, centers: np.ndarray) -> float:
    d2, _ = assign_nearest(x, torch.from_numpy(np.ascontiguousarray(centers, np.float32)))
    return float(d2.sum(dtype=torch.float64))


def bench_lloyd(xn: np.ndarray, x: torch.Tensor, init: np.ndarray, iters: int) -> dict:
    k, d = init.shape
    # Warm-up: first GEMMs pay for thread-pool start and page faults.
    assign_nearest(x[:4096], torch.from_numpy(init))
    t_ours, res = timed(lambda: lloyd(x, torch.from_numpy(init), max_iter=iters, tol=0.0), "ours")
    km = faiss.Kmeans(d, k, niter=iters, max_points_per_centroid=xn.shape[0], seed=1, verbose=False)
    t_faiss, _ = timed(lambda: km.train(xn, init_centroids=init), "faiss")
    ours_per = t_ours / max(res.n_iter, 1)
    faiss_per = t_faiss / iters
    return {
        "ours_s": t_ours,
        "ours_iters": res.n_iter,
        "ours_per_iter_s": ours_per,
        "faiss_s": t_faiss,
        "faiss_iters": iters,
        "faiss_per_iter_s": faiss_per,
        "speed_vs_faiss": faiss_per / ours_per,
        **cpu_fields(),
        "ours_inertia": all_rows_inertia(x, res.centers.numpy()),
        "faiss_inertia": all_rows_inertia(x, km.centroids),
    }


def bench_search(xn: np.ndarray, x: torch.Tensor, centers: np.ndarray) -> dict:
    c = torch.from_numpy(centers)
    assign_nearest(x[:4096], c)
    t_ours, (_, lab) = timed(lambda: assign_nearest(x, c), "ours")
    index = faiss.IndexFlatL2(centers.shape[1])
    index.add(centers)
    index.search(xn[:4096], 1)
    t_faiss, (_, flab) = timed(lambda: index.search(xn, 1), "faiss")
    return {
        "ours_s": t_ours,
        "faiss_s": t_faiss,
        "speed_vs_faiss": t_faiss / t_ours,
        **cpu_fields(),
        "label_agreement": float((lab.numpy() == flab[:, 0]).mean()),
    }


def bench_estimator(xn: np.ndarray, x: torch.Tensor, k: int, iters: int) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the rows-per-centroid warning at small sizes
        t_ours, est = timed(lambda: clam_dist.KMeans(n_clusters=k, random_state=0).fit(xn), "ours")
    km = faiss.Kmeans(
        xn.shape[1], k, niter=iters, max_points_per_centroid=xn.shape[0], seed=0, verbose=False
    )
    t_faiss, _ = timed(lambda: km.train(xn), "faiss")
    return {
        "k": k,
        "ours_s": t_ours,
        "ours_n_iter": int(est.n_iter_),
        "faiss_s": t_faiss,
        "time_ratio": t_ours / t_faiss,
        **cpu_fields(),
        "ours_inertia": all_rows_inertia(x, est.cluster_centers_),
        "faiss_inertia": all_rows_inertia(x, km.centroids),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--ks", type=int, nargs="*", default=[256], help="none: only (c)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--big-k", type=int, default=4096, help="k of the estimator comparison (c)")
    p.add_argument("--skip-4096", action="store_true", help="leave out comparison (c)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=Path("bench_results/kernel.json"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    xn = make_data(args.rows, args.d, args.seed)
    x = torch.from_numpy(xn)
    rng = np.random.default_rng(args.seed + 1)
    out: dict = {"config": {k: str(v) for k, v in vars(args).items()}, "lloyd": [], "search": []}
    for k in args.ks:
        init = np.ascontiguousarray(xn[rng.choice(args.rows, k, replace=False)])
        row = {"k": k, **bench_lloyd(xn, x, init, args.iters)}
        out["lloyd"].append(row)
        print(
            f"lloyd  k={k:5d}: ours {row['ours_per_iter_s']:.3f} s/iter "
            f"({row['ours_iters']} iters), faiss {row['faiss_per_iter_s']:.3f} s/iter, "
            f"speed {row['speed_vs_faiss']:.2f}x (cpu {row['cpu_speed_vs_faiss']:.2f}x); inertia ours {row['ours_inertia']:.6g} "
            f"faiss {row['faiss_inertia']:.6g}",
            flush=True,
        )
        srow = {"k": k, **bench_search(xn, x, init)}
        out["search"].append(srow)
        print(
            f"search k={k:5d}: ours {srow['ours_s']:.3f} s, faiss {srow['faiss_s']:.3f} s, "
            f"speed {srow['speed_vs_faiss']:.2f}x (cpu {srow['cpu_speed_vs_faiss']:.2f}x), agreement {srow['label_agreement']:.5f}",
            flush=True,
        )
    if not args.skip_4096:
        e = bench_estimator(xn, x, args.big_k, args.iters)
        out["estimator"] = e
        print(
            f"KMeans k={e['k']}: ours {e['ours_s']:.1f} s ({e['ours_n_iter']} iters), "
            f"faiss {e['faiss_s']:.1f} s, ratio {e['time_ratio']:.2f} (cpu {e['ours_cpu_s'] / e['faiss_cpu_s']:.2f}); inertia ours "
            f"{e['ours_inertia']:.6g} faiss {e['faiss_inertia']:.6g}",
            flush=True,
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
