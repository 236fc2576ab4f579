"""`clam-dist pipeline`: the end-to-end job on embedded defaults or a config file.

stdout is for people: a progress line (or bar, on a terminal) per stage, then the summary
table. The machine records go to ``<run_dir>/logs/events.jsonl`` (and to stderr with
``--log-format json``); the same numbers as the table are in summary.json's overview."""

from __future__ import annotations

import argparse
import json
import sys

from clam_dist.config import load_config
from clam_dist.pipeline.config import PipelineConfig
from clam_dist.pipeline.overview import print_table
from clam_dist.pipeline.stages import STAGES, check_input_before_work, run_pipeline
from clam_dist.progress import Console


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", default=None, help="TOML/YAML/JSON pipeline config (defaults otherwise)"
    )
    parser.add_argument(
        "--run-dir",
        default=None,
        help="where every stage writes: a local folder (default: runs/demo) or a URL "
        "(s3://bucket/run), which every node of a multi-node cluster must see",
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
    parser.add_argument(
        "--progress-every",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="when stdout is not a terminal: a progress line this often (default 10)",
    )


def load_pipeline_config(args: argparse.Namespace) -> PipelineConfig:
    overrides = list(args.overrides)
    if args.run_dir:
        overrides.append(f"run_dir={json.dumps(args.run_dir)}")
    return load_config(PipelineConfig, args.config, overrides)


def run(args: argparse.Namespace) -> int:
    config = load_pipeline_config(args)  # validated before any work starts (else exit 2)
    check_input_before_work(config)  # a missing data.url: exit 2, no run dir made
    console = Console(every_s=args.progress_every)
    summary = run_pipeline(
        config, from_stage="data" if args.fresh else args.from_stage, console=console
    )
    failed = summary["status"] != "succeeded"
    print_table(summary["overview"], sys.stdout, summary.get("error") if failed else None)
    if failed:
        print(f"pipeline failed: {summary.get('error', '')}", file=sys.stderr)
        return 1
    return 0
