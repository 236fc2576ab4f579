"""`clam-dist train`: distributed training with Ray Train from a config file + overrides."""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial

from clam_dist.config import load_config
from clam_dist.errors import InputError
from clam_dist.summary_file import writable_target, write_after_commit
from clam_dist.train.config import TrainConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default=None,
        help="TOML/YAML/JSON TrainConfig ([data], [model], [optim], [run], [storage])",
    )
    parser.add_argument("--data", default=None, help="shortcut for --set data.url=...")
    parser.add_argument(
        "--k", type=int, default=None, help="shortcut for --set model.n_clusters=..."
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="shortcut for --set run.num_workers=..."
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override any field, e.g. --set optim.lr=0.02 --set run.storage_path=s3://b/runs",
    )
    parser.add_argument(
        "--address", default=None, help="Ray address (default: RAY_ADDRESS or a local Ray)"
    )
    parser.add_argument(
        "--summary", default=None, help="write the final metrics and artifact URL here (JSON)"
    )


def run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    for flag, key in (
        (args.data, "data.url"),
        (args.k, "model.n_clusters"),
        (args.workers, "run.num_workers"),
    ):
        if flag is not None:
            overrides.append(f"{key}={json.dumps(flag)}")
    config = load_config(TrainConfig, args.config, overrides)  # before any work starts
    from clam_dist.ray_session import start_ray
    from clam_dist.train.trainer import run_training

    summary_target = writable_target(args.summary, None)
    start_ray(args.address)  # quiet; under `ray job submit` this joins the job's cluster
    try:
        # on several nodes every node must see data.url and run.storage_path: checked
        # first (a local path only with --set storage.shared=true)
        result = _train_with_progress(config, partial(run_training, check_nodes=True))
    except ValueError as exc:  # the fail-fast checks, before any work
        if type(exc) is ValueError:  # ours (ConfigError, DataError, ...) keep their type
            raise InputError(str(exc)) from exc
        raise
    summary = {
        "artifact": result.artifact_url,
        "checkpoint": result.checkpoint_path,
        "metrics": result.metrics,
    }
    text = json.dumps(summary, indent=2, default=str)
    print(text)
    if summary_target is not None:
        write_after_commit(summary_target, text, what=f"the model {result.artifact_url} is saved")
    return 0


def _train_with_progress(config: TrainConfig, run_training):
    """Train, with a progress bar on stderr when stderr is a terminal (a person watching).
    Piped, stderr keeps to the one line of a failure and stdout to the JSON summary; Ray's
    own per-report lines come back with -v."""
    import time

    from clam_dist.progress import Console, NullConsole, TrainReports

    console = Console(out=sys.stderr) if sys.stderr.isatty() else NullConsole()
    t0 = time.perf_counter()
    with TrainReports(console) as reports:
        console.stage_start("train", None, unit="steps")
        try:
            result = run_training(config, progress_queue=reports.queue)
        except BaseException:
            console.stage_end("train", time.perf_counter() - t0, status="failed")
            raise
        console.stage_end("train", time.perf_counter() - t0)
    return result
