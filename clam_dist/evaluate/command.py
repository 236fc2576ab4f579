"""`clam-dist evaluate`: metrics JSON and an HTML/PNG report for committed assignments."""

from __future__ import annotations

import argparse
import json

from clam_dist.data.source import VectorSource
from clam_dist.evaluate.metrics_at_scale import EvalConfig, evaluate_run
from clam_dist.evaluate.report import write_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="the Parquet prefix that was assigned")
    parser.add_argument(
        "--assignments", required=True, help="committed output of `clam-dist assign`"
    )
    parser.add_argument("--model", required=True, help="model artifact directory")
    parser.add_argument(
        "--report-dir", required=True, help="local directory for metrics.json, PNGs, index.html"
    )
    parser.add_argument("--vector-column", default=None)
    parser.add_argument("--label-column", default=None, help="enables NMI/ARI/ACC (on the sample)")
    parser.add_argument(
        "--sample-size", type=int, default=10_000, help="rows sampled for Silhouette"
    )
    parser.add_argument(
        "--endpoint-url", default=None, help="S3 endpoint (credentials: standard AWS chain)"
    )


def run(args: argparse.Namespace) -> int:
    opts = {"client_kwargs": {"endpoint_url": args.endpoint_url}} if args.endpoint_url else None
    source = VectorSource(
        args.input,
        vector_column=args.vector_column,
        label_column=args.label_column,
        storage_options=opts,
    )
    metrics, plots = evaluate_run(
        EvalConfig(source, args.assignments, args.model, args.sample_size, 0, opts)
    )
    write_report(args.report_dir, metrics, plots)
    print(json.dumps(metrics, indent=2))
    return 0
