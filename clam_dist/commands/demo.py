"""Cluster one bundled ClAM-paper data set with ClAM and k-means and print the metrics."""

from __future__ import annotations

import argparse

from clam_dist.commands.quality import evaluate_dataset, format_table
from clam_dist.datasets.clam_paper import CLAM_PAPER_DATASETS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset", default="ecoli", choices=CLAM_PAPER_DATASETS, help="bundled data set"
    )
    parser.add_argument(
        "--clam-seeds", type=int, default=5, help="ClAM restarts (best Silhouette kept)"
    )
    parser.add_argument(
        "--kmeans-seeds", type=int, default=10, help="k-means restarts (best inertia kept)"
    )


def run(args: argparse.Namespace) -> int:
    print(format_table([evaluate_dataset(args.dataset, args.kmeans_seeds, args.clam_seeds)]))
    return 0
