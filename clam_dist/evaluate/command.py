"""`clam-dist evaluate`: metrics JSON and an HTML/PNG report for committed assignments.

Settings come from an optional TOML/YAML/JSON file (top-level keys = EvaluateConfig
fields), then ``--set field=value`` overrides, then the flags below (a flag wins).
"""

from __future__ import annotations

import argparse
import json

from clam_dist.config import load_config
from clam_dist.summary_file import writable_target, write_after_commit

_FLAG_FIELDS = (
    "input",
    "assignments",
    "model",
    "report_dir",
    "vector_column",
    "feature_columns",
    "id_column",
    "label_column",
    "sample_size",
    "seed",
    "title",
    "partitions",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Writes metrics.json, cluster_sizes.json, cluster_sizes.png, projection.png, "
        "energy.png, training.png (when the model carries a loss history), clusters.json "
        "(per-cluster table), partitions.json and drift.png (with --partitions) and index.html."
    )
    parser.add_argument(
        "--config", default=None, help="TOML/YAML/JSON file with EvaluateConfig fields"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override any config field, e.g. --set sample_size=20000",
    )
    parser.add_argument("--input", default=None, help="the Parquet prefix that was assigned")
    parser.add_argument(
        "--assignments", default=None, help="committed output prefix of `clam-dist assign`"
    )
    parser.add_argument("--model", default=None, help="model artifact directory")
    parser.add_argument(
        "--report-dir", default=None, help="folder or fsspec URL for the metrics and report"
    )
    parser.add_argument("--vector-column", default=None, help="list column holding the vectors")
    parser.add_argument(
        "--feature-columns", default=None, help="comma-separated numeric columns or one glob"
    )
    parser.add_argument(
        "--id-column", default=None, help="id column, as given to assign (default: generated)"
    )
    parser.add_argument(
        "--label-column",
        default=None,
        help="ground-truth labels: NMI/ARI/ACC over every row when assign passed it through, "
        "else on the sample",
    )
    parser.add_argument(
        "--sample-size",
        type=int,
        default=None,
        help="uniform sample for the Silhouette and the projection (default 10000)",
    )
    parser.add_argument("--seed", type=int, default=None, help="sampling seed (0)")
    parser.add_argument("--title", default=None, help="report title")
    parser.add_argument(
        "--partitions",
        default=None,
        help="comma-separated other committed outputs of the same model: the report shows "
        "the drift share of each beside this one",
    )
    parser.add_argument(
        "--no-kmeans-baseline",
        dest="kmeans_baseline",
        action="store_false",
        default=None,
        help="skip the k-means fit on the sample that the report compares the model with",
    )
    parser.add_argument(
        "--endpoint-url", default=None, help="S3-compatible endpoint for s3:// URLs"
    )
    parser.add_argument(
        "--summary",
        default=None,
        help="also write a JSON summary (metrics, report, seconds, per-stage timings_s) here",
    )


def config_from_args(args: argparse.Namespace):
    from clam_dist.evaluate.run import EvaluateConfig

    overrides = list(args.overrides)
    for name in _FLAG_FIELDS:
        value = getattr(args, name)
        if value is None:
            continue
        if name == "feature_columns":
            cols = [c.strip() for c in value.split(",") if c.strip()]
            value = cols[0] if len(cols) == 1 and any(ch in cols[0] for ch in "*?[") else cols
        overrides.append(f"{name}={json.dumps(value)}")
    if args.kmeans_baseline is False:
        overrides.append("kmeans_baseline=false")
    if args.endpoint_url:
        overrides.append(
            f"storage_options.client_kwargs.endpoint_url={json.dumps(args.endpoint_url)}"
        )
    return load_config(EvaluateConfig, args.config, overrides)


def run(args: argparse.Namespace) -> int:
    # Errors propagate: the CLI prints one line on stderr and picks the exit code.
    config = config_from_args(args)
    summary_target = writable_target(args.summary, config.storage_options)
    from clam_dist.evaluate.report import check_report_dir
    from clam_dist.evaluate.run import run_evaluation

    # A folder of the user's files is refused before the evaluation's work (exit 2).
    check_report_dir(config.report_dir, config.storage_options)
    res = run_evaluation(config)
    print(json.dumps(res.metrics, indent=2, default=str))
    print(f"report: {res.index_html}")
    if summary_target is not None:
        summary = {
            "status": "succeeded",
            "report": res.index_html,
            "seconds": round(res.seconds, 3),
            "timings_s": res.timings_s,
            "metrics": res.metrics,
        }
        write_after_commit(
            summary_target,
            json.dumps(summary, indent=2, default=str),
            what=f"the report {res.index_html} is written",
        )
    return 0
