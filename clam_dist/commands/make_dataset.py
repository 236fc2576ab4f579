"""Write sharded Parquet to any fsspec URL: a Gaussian mixture at scale (true centres and
labels kept) or one of the seven bundled ClAM-paper data sets.

A data set is written through the same commit protocol as assignment outputs
(``clam_dist.assign.commit``): files are staged, counted, moved into place, then
``_manifest.json`` and ``_SUCCESS``. A target that holds anything is refused unless
``--overwrite``, which replaces a data set this command wrote, whole, and only after the
new one is complete; files of any other origin are never touched."""

from __future__ import annotations

import argparse
import json

import numpy as np

from clam_dist.assign.commit import OutputPrefix
from clam_dist.config import ConfigError
from clam_dist.data.urls import absolute
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
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a data set that make-dataset wrote at URL (never other files)",
    )


def storage_options_from_args(args: argparse.Namespace) -> dict | None:
    """Credentials come from the standard AWS chain; only the endpoint is a flag."""
    return {"client_kwargs": {"endpoint_url": args.endpoint_url}} if args.endpoint_url else None


WRITER = "clam-dist make-dataset"
CENTERS = "_centers.json"


def check_mixture_args(n: int, d: int, k: int, separation: float, rows_per_file: int) -> None:
    """Refuse sizes that cannot make a data set, naming the flag (ConfigError: exit 2)."""
    for flag, value in (("--n", n), ("--d", d), ("--k", k), ("--rows-per-file", rows_per_file)):
        if value < 1:
            raise ConfigError(f"{flag}: expected an integer >= 1, got {value}")
    if k > n:
        raise ConfigError(f"--k: {k} components need at least as many rows, got --n {n}")
    if not separation > 0:
        raise ConfigError(f"--separation: expected a number > 0, got {separation}")


def write_dataset(
    url: str,
    write_parts,
    rows: int,
    meta: dict,
    storage_options=None,
    overwrite: bool = False,
    extra: dict[str, bytes] | None = None,
) -> dict:
    """Stage ``write_parts(staging_url)``'s files, then commit them as the data set at
    ``url`` (see the module doc); returns the manifest."""
    prefix = OutputPrefix(url, storage_options, writer=WRITER)
    staging = prefix.prepare(overwrite)
    try:
        write_parts(staging)
        for name, data in (extra or {}).items():
            prefix.fs.pipe(f"{prefix.staging_path(staging)}/{name}", data)
        return prefix.commit(staging, rows, meta, extra_files=list(extra or {}))
    except BaseException:
        prefix.abort(staging)
        raise


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
    overwrite: bool = False,
) -> list[str]:
    """Stream the mixture to ``url`` one file at a time (memory: one file), plus
    ``_centers.json`` with the true centres; returns the files' URLs."""
    check_mixture_args(n, d, k, separation, rows_per_file)

    def parts(staging: str) -> None:
        for i, (x, labels) in enumerate(
            iter_gaussian_mixture(n, d, k, separation, seed, rows_per_file)
        ):
            table = vectors_table(
                x, labels=labels, vector_layout=layout, id_start=i * rows_per_file
            )
            write_table(table, f"{staging}/part-{i:05d}.parquet", storage_options)

    meta = {"source": "mixture", "n": n, "d": d, "k": k, "separation": separation, "seed": seed}
    centers = dict(meta, centers=mixture_centers(d, k, separation, seed).tolist())
    manifest = write_dataset(
        url, parts, n, meta, storage_options, overwrite, {CENTERS: json.dumps(centers).encode()}
    )
    return [f"{url.rstrip('/')}/{f}" for f in manifest["files"]]


def write_paper_dataset(
    url: str,
    name: str,
    rows_per_file: int,
    layout: str = "list",
    storage_options: dict | None = None,
    overwrite: bool = False,
) -> list[str]:
    """One of the bundled ClAM-paper data sets (raw features + label) as Parquet."""
    if rows_per_file < 1:
        raise ConfigError(f"--rows-per-file: expected an integer >= 1, got {rows_per_file}")
    x, y = load_clam_paper(name)

    def parts(staging: str) -> None:
        write_vectors(
            staging,
            x.astype(np.float32),
            labels=y,
            rows_per_file=rows_per_file,
            storage_options=storage_options,
            vector_layout=layout,
        )

    meta = {"source": name, "n": int(len(x)), "d": int(x.shape[1])}
    manifest = write_dataset(url, parts, len(x), meta, storage_options, overwrite)
    return [f"{url.rstrip('/')}/{f}" for f in manifest["files"]]


def run(args: argparse.Namespace) -> int:
    opts = storage_options_from_args(args)
    url = absolute(args.url)
    # A missing bucket, files of another origin or a data set already there are refused
    # before any data is generated or loaded (write_dataset checks again, then writes).
    OutputPrefix(url, opts, writer=WRITER).check(args.overwrite)
    if args.source == "mixture":
        files = write_mixture(
            url,
            args.n,
            args.d,
            args.k,
            args.separation,
            args.seed,
            args.rows_per_file,
            args.layout,
            opts,
            args.overwrite,
        )
    else:
        files = write_paper_dataset(
            url, args.source, args.rows_per_file, args.layout, opts, args.overwrite
        )
    print(f"wrote {len(files)} file(s) under {url}")
    return 0
