"""Write sharded Parquet to any fsspec URL: a Gaussian mixture at scale (true centres and
labels kept) or one of the seven bundled ClAM-paper data sets."""

from __future__ import annotations

import argparse
import json

import numpy as np

from clam_dist.data.source import open_filesystem
from clam_dist.data.writer import vectors_table, write_table, write_vectors
from clam_dist.datasets.clam_paper import CLAM_PAPER_DATASETS, load_clam_paper
from clam_dist.datasets.synthetic import iter_gaussian_mixture, mixture_centers


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", help="output prefix, e.g. ./data/mix, s3://bucket/mix, memory://mix")
    parser.add_argument(
        "--source",
        default="mixture",
        choices=["mixture", *CLAM_PAPER_DATASETS],
        help="a Gaussian mixture, or a bundled paper data set (raw features + label)",
    )
    parser.add_argument("--n", type=int, default=100_000, help="mixture: rows")
    parser.add_argument("--d", type=int, default=32, help="mixture: dimension")
    parser.add_argument("--k", type=int, default=10, help="mixture: components")
    parser.add_argument(
        "--separation", type=float, default=8.0, help="mixture: centre distance in noise std's"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows-per-file", type=int, default=100_000)
    parser.add_argument(
        "--layout", choices=["list", "columns"], default="list", help="vector column layout"
    )
    parser.add_argument("--endpoint-url", default=None, help="S3 endpoint (e.g. a local S3 server)")


def storage_options_from_args(args: argparse.Namespace) -> dict | None:
    """Credentials come from the standard AWS chain; only the endpoint is a flag."""
    return {"client_kwargs": {"endpoint_url": args.endpoint_url}} if args.endpoint_url else None


def write_mixture(
    url: str,
    n: int,
    d: int,
    k: int,
    separation: float,
    seed: int,
    rows_per_file: int,
    layout: str = "list",
    storage_options: dict | None = None,
) -> list[str]:
    """Stream the mixture to ``url`` one file at a time (memory: one file), plus
    ``_centers.json`` with the true centres."""
    files = []
    for i, (x, labels) in enumerate(
        iter_gaussian_mixture(n, d, k, separation, seed, rows_per_file)
    ):
        table = vectors_table(x, labels=labels, vector_layout=layout, id_start=i * rows_per_file)
        files.append(write_table(table, f"{url.rstrip('/')}/part-{i:05d}.parquet", storage_options))
    fs, path = open_filesystem(url, storage_options)
    meta = {
        "n": n,
        "d": d,
        "k": k,
        "separation": separation,
        "seed": seed,
        "centers": mixture_centers(d, k, separation, seed).tolist(),
    }
    fs.pipe(f"{path}/_centers.json", json.dumps(meta).encode())
    return files


def run(args: argparse.Namespace) -> int:
    opts = storage_options_from_args(args)
    if args.source == "mixture":
        files = write_mixture(
            args.url,
            args.n,
            args.d,
            args.k,
            args.separation,
            args.seed,
            args.rows_per_file,
            args.layout,
            opts,
        )
    else:
        x, y = load_clam_paper(args.source)
        files = write_vectors(
            args.url,
            x.astype(np.float32),
            labels=y,
            rows_per_file=args.rows_per_file,
            storage_options=opts,
            vector_layout=args.layout,
        )
    print(f"wrote {len(files)} file(s) under {args.url}")
    return 0
