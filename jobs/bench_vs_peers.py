"""k-means / ClAM against faiss and scikit-learn on one generated mixture, same run (issue 12).

Data: n x d float32, a mixture of k Gaussian components of uneven size (Dirichlet weights)
and spread (per-component scale drawn in [0.5, 2] x 0.5: overlapping components,
Silhouette ~0.3 as in issue 12). Every method gets 2 threads
(torch.set_num_threads, faiss.omp_set_num_threads, threadpoolctl for numpy/scikit-learn).

Per method: fit wall time (fit only), inertia on all rows (one shared float32 kernel,
summed in float64), Silhouette on one fixed 20,000-row sample, ARI against the
generating components, and time-to-quality: the fit time if the final inertia is within
1% of the best any method reached, else "not reached" (final points only: the
per-iteration inertia is not traced). Prints a table, writes bench_results/vs_peers_k{k}.json
and a PNG (fit time vs inertia, one point per method). threadpoolctl's view of the BLAS
libraries is written too (OPENBLAS_CORETYPE, if set, slows numpy; it is reported, not changed).

    python jobs/bench_vs_peers.py [--n 1000000 --d 128 --k 256 --seed 0 --threads 2
                                   --methods faiss,faiss_all,sklearn,minibatch,kmeans,clam]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

METHODS = (
    "faiss",
    "faiss_all",
    "sklearn",
    "minibatch",
    "kmeans",
    "clam",
    "train_kmeans",
    "train_clam",
)


def make_mixture(n: int, d: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.full(k, 2.0))
    comp = rng.choice(k, n, p=weights)
    means = rng.normal(size=(k, d)).astype(np.float32)
    spread = (rng.uniform(0.5, 2.0, k) * 0.5).astype(np.float32)
    x = rng.standard_normal((n, d), dtype=np.float32)
    x *= spread[comp, None]
    x += means[comp]
    return x, comp


def fit_faiss(x: np.ndarray, k: int, seed: int, all_rows: bool) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    # faiss's defaults sample 256 rows per centroid; all_rows trains on every row.
    km = faiss.Kmeans(
        x.shape[1], k, niter=20, seed=seed, verbose=False,
        max_points_per_centroid=x.shape[0] if all_rows else 256,
    )  # fmt: skip
    km.train(x)
    _, labels = km.index.search(x, 1)
    return km.centroids, labels[:, 0]


def fit_sklearn(x: np.ndarray, k: int, seed: int, minibatch: bool):
    from sklearn.cluster import KMeans, MiniBatchKMeans

    model = (
        MiniBatchKMeans(k, n_init=1, random_state=seed)
        if minibatch
        else KMeans(k, n_init=1, random_state=seed)
    )
    model.fit(x)
    return model.cluster_centers_, model.labels_


def fit_clam_dist(x: np.ndarray, k: int, seed: int, clam: bool):
    import clam_dist

    model = clam_dist.ClAM(k, random_state=seed) if clam else clam_dist.KMeans(k, random_state=seed)
    model.fit(x)
    return model.cluster_centers_, model.labels_


def fit_train_command(x: np.ndarray, k: int, seed: int, method: str):
    """``clam-dist train`` as a user runs it (a fresh process, a local Ray with 2 workers,
    one epoch, Parquet input written beforehand and not timed): wall time includes
    Ray's start. Centres come back in input space (the artifact's scaler undone);
    labels are the model's own rule (AM dynamics for ClAM) via the predictor."""
    import subprocess
    import sys
    import tempfile

    from clam_dist.artifacts import load_artifact
    from clam_dist.data.writer import write_vectors
    from clam_dist.models.predictor import ClusterPredictor

    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        data = f"{tmp}/data"
        write_vectors(data, x, rows_per_file=max(1, x.shape[0] // 8))
        summary = f"{tmp}/summary.json"
        argv = [
            sys.executable, "-m", "clam_dist.cli", "train", "--data", data, "--k", str(k),
            "--workers", "2", "--set", f"model.method={method}", "--set", "optim.epochs=1",
            "--set", f"run.storage_path={tmp}/runs", "--set", f"run.seed={seed}",
            "--summary", summary,
        ]  # fmt: skip
        t0 = time.perf_counter()
        log = Path(tmp) / "train.log"  # Ray's own console output kept out of the table
        with open(log, "w") as sink:
            done = subprocess.run(argv, stdout=sink, stderr=subprocess.STDOUT)
        if done.returncode:
            raise SystemExit(f"clam-dist train failed:\n{log.read_text()[-4000:]}")
        wall = time.perf_counter() - t0
        art = load_artifact(json.loads(Path(summary).read_text())["artifact"])
        centers = art.prototypes
        if art.scaler_mean is not None:
            centers = centers * art.scaler_scale + art.scaler_mean
        labels = ClusterPredictor.from_artifact(art).predict(x)["cluster"]
    return centers, labels, wall


def runners(k: int, seed: int) -> dict[str, Callable]:
    return {
        "faiss": lambda x: fit_faiss(x, k, seed, all_rows=False),
        "faiss_all": lambda x: fit_faiss(x, k, seed, all_rows=True),
        "sklearn": lambda x: fit_sklearn(x, k, seed, minibatch=False),
        "minibatch": lambda x: fit_sklearn(x, k, seed, minibatch=True),
        "kmeans": lambda x: fit_clam_dist(x, k, seed, clam=False),
        "clam": lambda x: fit_clam_dist(x, k, seed, clam=True),
        "train_kmeans": lambda x: fit_train_command(x, k, seed, "kmeans"),
        "train_clam": lambda x: fit_train_command(x, k, seed, "clam"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--k", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--silhouette-rows", type=int, default=20_000)
    ap.add_argument("--out", default="bench_results")
    args = ap.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise SystemExit(f"unknown method(s) {bad}; choose from {METHODS}")

    import faiss
    from sklearn.metrics import adjusted_rand_score, silhouette_score
    from threadpoolctl import threadpool_info, threadpool_limits

    from clam_dist.models.kmeans import assign_nearest

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    x, comp = make_mixture(args.n, args.d, args.k, args.seed)
    xt = torch.from_numpy(x)
    sil_rows = np.random.default_rng(12345).choice(
        args.n, min(args.silhouette_rows, args.n), replace=False
    )
    results = []
    with threadpool_limits(args.threads):
        for name in methods:
            t0 = time.perf_counter()
            fitted = runners(args.k, args.seed)[name](x)
            wall = time.perf_counter() - t0
            if len(fitted) == 3:  # the train command times itself (data writing excluded)
                centers, labels, wall = fitted
            else:
                centers, labels = fitted
            c = torch.from_numpy(np.ascontiguousarray(centers, dtype=np.float32))
            inertia = float(assign_nearest(xt, c)[0].sum(dtype=torch.float64))
            labels = np.asarray(labels)
            sil = float(silhouette_score(x[sil_rows], labels[sil_rows]))
            ari = float(adjusted_rand_score(comp, labels))
            results.append(
                {"method": name, "fit_s": wall, "inertia": inertia, "silhouette": sil, "ari": ari}
            )
            print(f"{name:10s} fit {wall:8.1f} s  inertia {inertia:.4g}", flush=True)
        blas = threadpool_info()
    best = min(r["inertia"] for r in results)
    for r in results:
        r["time_to_quality_s"] = r["fit_s"] if r["inertia"] <= 1.01 * best else None

    print(f"\nn={args.n} d={args.d} k={args.k} seed={args.seed} threads={args.threads}")
    print(
        f"{'method':10s} {'fit s':>8s} {'inertia':>12s} {'silhouette':>10s} {'ARI':>6s} {'to 1%':>12s}"
    )
    for r in results:
        ttq = r["time_to_quality_s"]
        ttq_s = f"{ttq:.1f}" if ttq is not None else "not reached"
        print(
            f"{r['method']:10s} {r['fit_s']:8.1f} {r['inertia']:12.5g} "
            f"{r['silhouette']:10.4f} {r['ari']:6.3f} {ttq_s:>12s}"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "args": vars(args),
        "best_inertia": best,
        "results": results,
        "threadpools": blas,
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "faiss": faiss.__version__,
    }
    path = out / f"vs_peers_k{args.k}.json"
    path.write_text(json.dumps(record, indent=2, default=str))
    _plot(results, out / f"vs_peers_k{args.k}.png", args)
    print(f"wrote {path}")


def _plot(results: list[dict], path: Path, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        ax.scatter(r["fit_s"], r["inertia"])
        ax.annotate(r["method"], (r["fit_s"], r["inertia"]), fontsize=8)
    ax.set_xlabel("fit wall time (s)")
    ax.set_ylabel("inertia (all rows)")
    ax.set_title(f"n={args.n} d={args.d} k={args.k}, {args.threads} threads")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
