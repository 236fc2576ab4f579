"""ClAM vs k-means on the seven ClAM-paper data sets (the quality benchmark).

Protocol: features standardised (as the paper); k = number of classes; labels used only
for NMI/ARI/ACC. k-means: scikit-learn convention, best of ``--kmeans-seeds`` restarts
by inertia. ClAM: default settings (auto beta), ``--clam-seeds`` restarts, best by its own
training loss (unsupervised selection: no labels, no Silhouette). Silhouette is compared
at the number of non-empty clusters each method returns (reported beside it).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from clam_dist.datasets.clam_paper import CLAM_PAPER_DATASETS, load_clam_paper, standardize


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--datasets",
        default=",".join(CLAM_PAPER_DATASETS),
        help=f"comma-separated subset of {', '.join(CLAM_PAPER_DATASETS)}",
    )
    parser.add_argument(
        "--kmeans-seeds", type=int, default=10, help="k-means restarts (best inertia kept)"
    )
    parser.add_argument(
        "--clam-seeds", type=int, default=3, help="ClAM restarts (best training loss kept)"
    )
    parser.add_argument(
        "--epochs", type=int, default=None, help="ClAM epochs (default: the estimator's)"
    )
    parser.add_argument(
        "--json", default="bench_results/quality.json", help="where to write the JSON results"
    )


def evaluate_dataset(
    name: str, kmeans_seeds: int, clam_seeds: int, epochs: int | None = None
) -> dict:
    from clam_dist.estimator import ClAM, KMeans
    from clam_dist.metrics import clustering_report

    x_raw, y = load_clam_paper(name)
    x = standardize(x_raw).astype(np.float32)
    k = int(np.unique(y).size)
    row: dict = {"dataset": name, "n": int(x.shape[0]), "d": int(x.shape[1]), "k": k}
    t0 = time.perf_counter()
    km = KMeans(n_clusters=k, n_init=kmeans_seeds, random_state=0).fit(x)
    row["kmeans_time_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    extra = {} if epochs is None else {"epochs": epochs}
    clam = ClAM(n_clusters=k, n_init=clam_seeds, random_state=0, **extra).fit(x)
    row["clam_time_s"] = time.perf_counter() - t0
    row["clam_beta"] = clam.beta_
    for prefix, est in (("kmeans", km), ("clam", clam)):
        rep = clustering_report(x, est.labels_, est.cluster_centers_, y_true=y)
        for key in ("silhouette", "n_nonempty", "nmi", "ari", "acc"):
            row[f"{prefix}_{key}"] = rep[key]
    row["clam_wins"] = bool(row["clam_silhouette"] >= row["kmeans_silhouette"])
    return row


def format_table(rows: list[dict]) -> str:
    head = (
        f"{'data set':16s} {'n':>5s} {'d':>5s} {'k':>3s} | {'Sil KM':>7s} {'Sil ClAM':>8s} {'ne KM/ClAM':>10s} | "
        f"{'NMI KM':>6s} {'NMI ClAM':>8s} | {'ARI KM':>6s} {'ARI ClAM':>8s} | {'t KM':>6s} {'t ClAM':>7s}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['dataset']:16s} {r['n']:5d} {r['d']:5d} {r['k']:3d} | {r['kmeans_silhouette']:7.3f} "
            f"{r['clam_silhouette']:8.3f} {r['kmeans_n_nonempty']:>4d}/{r['clam_n_nonempty']:<5d} | "
            f"{r['kmeans_nmi']:6.3f} {r['clam_nmi']:8.3f} | {r['kmeans_ari']:6.3f} {r['clam_ari']:8.3f} | "
            f"{r['kmeans_time_s']:5.1f}s {r['clam_time_s']:6.1f}s"
        )
    wins = sum(r["clam_wins"] for r in rows)
    lines.append(f"ClAM Silhouette >= k-means on {wins} of {len(rows)} data sets")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    unknown = sorted(set(names) - set(CLAM_PAPER_DATASETS))
    if unknown:
        raise SystemExit(
            f"unknown data set(s) {unknown}; choose from {', '.join(CLAM_PAPER_DATASETS)}"
        )
    rows = []
    for name in names:
        rows.append(evaluate_dataset(name, args.kmeans_seeds, args.clam_seeds, args.epochs))
        print(f"  done {name}", flush=True)
    print(format_table(rows))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"protocol": __doc__.strip(), "rows": rows}, indent=2))
    print(f"wrote {out}")
    return 0
