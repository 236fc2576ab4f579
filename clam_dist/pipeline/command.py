"""`clam-dist pipeline`: the end-to-end job on embedded defaults or a config file."""

from __future__ import annotations

import argparse
import json
import sys

from clam_dist.config import load_config
from clam_dist.pipeline.config import PipelineConfig
from clam_dist.pipeline.stages import STAGES, run_pipeline


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", default=None, help="TOML/YAML/JSON pipeline config (defaults otherwise)"
    )
    parser.add_argument(
        "--run-dir", default=None, help="where every stage writes (default: runs/demo)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override any config field, e.g. --set model.n_clusters=32 --set data.url=s3://b/p",
    )
    parser.add_argument(
        "--from-stage", choices=STAGES, default=None, help="re-run from this stage on"
    )
    parser.add_argument(
        "--fresh", action="store_true", help="re-run every stage (same as --from-stage data)"
    )


def load_pipeline_config(args: argparse.Namespace) -> PipelineConfig:
    overrides = list(args.overrides)
    if args.run_dir:
        overrides.append(f"run_dir={json.dumps(args.run_dir)}")
    return load_config(PipelineConfig, args.config, overrides)


def run(args: argparse.Namespace) -> int:
    config = load_pipeline_config(args)  # validated before any work starts (else exit 2)
    summary = run_pipeline(config, from_stage="data" if args.fresh else args.from_stage)
    ev = summary["stages"].get("evaluate", {})
    metrics = ev.get("metrics", {})
    if metrics:
        print(f"\n{'metric':28s} value")
        for key in (
            "rows",
            "k",
            "n_nonempty",
            "silhouette",
            "silhouette_sample_size",
            "nmi",
            "ari",
            "acc",
            "mean_energy",
            "size_min",
            "size_max",
        ):
            if key in metrics:
                value = metrics[key]
                print(
                    f"{key:28s} {value:.4f}" if isinstance(value, float) else f"{key:28s} {value}"
                )
    for stage, rec in summary["stages"].items():
        took = "skipped (done)" if rec.get("skipped") else f"{rec['seconds']:.1f}s"
        print(f"stage {stage:9s} {took}")
    if ev:
        print(f"report: {ev['report']}")
    print(f"summary: {config.run_dir}/summary.json  status: {summary['status']}")
    if summary["status"] != "succeeded":
        print(f"pipeline failed: {summary.get('error', '')}", file=sys.stderr)
        return 1
    return 0
