"""`clam-dist assign`: label every row of a Parquet prefix with an existing model.

Settings come from an optional TOML/YAML/JSON file (top-level keys = AssignConfig
fields), then ``--set field=value`` overrides, then the flags below (a flag wins).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os

from clam_dist.config import load_config
from clam_dist.summary_file import writable_target, write_after_commit

# flag dest -> AssignConfig field (flags left at None are not applied)
_FLAG_FIELDS = {
    "input": "input",
    "output": "output",
    "model": "model",
    "partition": "partition",
    "vector_column": "vector_column",
    "feature_columns": "feature_columns",
    "id_column": "id_column",
    "label_column": "label_column",
    "passthrough": "passthrough",
    "outputs": "outputs",
    "batch_size": "batch_size",
    "concurrency": "concurrency",
    "cpus_per_actor": "num_cpus_per_actor",
    "gpus_per_actor": "num_gpus_per_actor",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "Output columns: id, cluster, distance (squared, from the row to its assigned\n"
        "prototype, in the model's standardised space; for ClAM the cluster, margin and\n"
        "probs describe the state after the T AM steps), the optional extras and the\n"
        "pass-through columns.\n"
        "The output is committed atomically: part-NNNNN.parquet + _manifest.json + _SUCCESS\n"
        "(last); a prefix without _SUCCESS is incomplete and a re-run replaces it.\n\n"
        "Example (scheduled, one partition per day):\n"
        "  clam-dist assign --input 's3://b/events/{partition}' --output 's3://b/clusters/{partition}' \\\n"
        "    --model s3://b/models/v3 --partition date=2026-05-01 --id-column event_id \\\n"
        "    --endpoint-url http://127.0.0.1:9000 --summary summary.json"
    )
    parser.add_argument(
        "--config", default=None, help="TOML/YAML/JSON file with AssignConfig fields"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override any config field, e.g. --set concurrency=8 --set outputs=energy,margin",
    )
    parser.add_argument("--input", default=None, help="Parquet prefix or file (any fsspec URL)")
    parser.add_argument(
        "--output",
        default=None,
        help="output prefix (dedicated to this output; files of other origin are refused)",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="model artifact directory (model.json + model.safetensors), any fsspec URL",
    )
    parser.add_argument(
        "--partition",
        default=None,
        help="fills '{partition}' in --input/--output, e.g. date=2026-05-01",
    )
    parser.add_argument(
        "--vector-column", default=None, help="list column holding the vectors (default: auto)"
    )
    parser.add_argument(
        "--feature-columns",
        default=None,
        help="comma-separated numeric columns, or one glob such as 'f*' (instead of a vector column)",
    )
    parser.add_argument(
        "--id-column", default=None, help="id column (default: generated '<file>:<row>' ids)"
    )
    parser.add_argument("--label-column", default=None, help="ground-truth label column, if any")
    parser.add_argument(
        "--passthrough", default=None, help="comma-separated input columns copied to the output"
    )
    parser.add_argument(
        "--outputs",
        default=None,
        help="comma-separated extras: energy (AM energy, a novelty score: high = far from "
        "every memory), margin (2nd-best minus best squared distance), probs (soft "
        "assignment probabilities, a k-wide list); default energy,margin, '' for none",
    )
    parser.add_argument(
        "--endpoint-url",
        default=None,
        help="S3-compatible endpoint for s3:// URLs (credentials: the standard AWS chain)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="rows per model call (default 0 = auto)"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="assignment tasks in flight, each worker process holding the model once (2)",
    )
    parser.add_argument(
        "--cpus-per-actor", type=float, default=None, help="CPUs per assignment task (1)"
    )
    parser.add_argument(
        "--gpus-per-actor",
        type=float,
        default=None,
        help="GPUs per assignment task (0 = run on CPU)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an output that is already committed"
    )
    parser.add_argument(
        "--nan-policy",
        choices=["error", "drop"],
        default=None,
        help="rows with NaN/inf or overflowing distances: error (default, names them) or "
        "drop (left out; the manifest counts them)",
    )
    parser.add_argument(
        "--allow-duplicate-ids",
        action="store_true",
        help="assign even when the id column repeats values (refused by default)",
    )
    parser.add_argument(
        "--address", default=None, help="Ray address (default: RAY_ADDRESS or a local Ray)"
    )
    parser.add_argument(
        "--summary", default=None, help="also write the JSON summary (rows, rows/s, drift) here"
    )


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def config_from_args(args: argparse.Namespace):
    """AssignConfig from --config, --set and flags; raises ConfigError naming the field."""
    from clam_dist.assign.commit import require_segment
    from clam_dist.assign.pipeline import AssignConfig

    overrides = list(args.overrides)
    for dest, name in _FLAG_FIELDS.items():
        value = getattr(args, dest)
        if value is None:
            continue
        if dest in ("passthrough", "outputs"):
            value = _split(value)
        elif dest == "feature_columns":
            cols = _split(value)
            value = cols[0] if len(cols) == 1 and any(ch in cols[0] for ch in "*?[") else cols
        overrides.append(f"{name}={json.dumps(value)}")
    if args.endpoint_url:
        overrides.append(
            f"storage_options.client_kwargs.endpoint_url={json.dumps(args.endpoint_url)}"
        )
    if args.overwrite:
        overrides.append("overwrite=true")
    if args.nan_policy:
        overrides.append(f"nan_policy={args.nan_policy}")
    if args.allow_duplicate_ids:
        overrides.append("allow_duplicate_ids=true")
    config = load_config(AssignConfig, args.config, overrides)
    if config.partition is not None:
        # Schedulers fill this from outside: it must not climb out of the prefix.
        require_segment(config.partition, "--partition")
    return config


def _refuse_glob(config) -> None:
    """A glob is not expanded (fsspec would look for a file literally named '*.parquet'):
    say so, rather than 'no such file'."""
    from clam_dist.data.errors import DataError
    from clam_dist.data.source import open_filesystem

    if not any(ch in config.input_url for ch in "*?["):
        return
    fs, path = open_filesystem(config.input_url, config.storage_options)
    if not fs.exists(path):
        raise DataError(
            f"--input {config.input_url}: glob patterns are not expanded; give the folder "
            "(prefix) that holds the Parquet files, or one file"
        )


def check_before_ray(config) -> None:
    """Refuse what cheap checks can refuse before Ray starts (starting or joining Ray takes
    seconds to a minute): the input (exists, not a glob, its width against the model), the
    model, input/output overlap, and the output prefix (bucket, files of another origin,
    a committed result without --overwrite). run_assignment checks them again; the
    duplicate-id scan, a full pass over the ids, stays there."""
    from clam_dist.assign.commit import OutputPrefix
    from clam_dist.assign.pipeline import check_disjoint, check_inputs, load_model

    _refuse_glob(config)
    artifact = load_model(config)
    check_inputs(config, config.source(), artifact)
    check_disjoint(config)
    OutputPrefix(config.output_url, config.storage_options).check(config.overwrite)


def check_storage(config) -> dict | None:
    """On a Ray cluster of several nodes: --output (written by tasks on any node), --input
    and --model (read there) seen by every node, or StorageNotShared (exit 2, nothing
    written) naming the path and the node count; a local path only with
    ``--set storage_shared=true``. None on one node (not checked). A local output folder
    the check made for its token is removed again: the job meets the output as it was."""
    from clam_dist.data.urls import is_local_url, refuse_url
    from clam_dist.shared_storage import StoragePath, check_visible_from_every_node

    options = config.storage_options
    paths = [
        StoragePath("--output", config.output_url, options, writes=True),
        StoragePath("--input", config.input_url, options, writes=False),
        StoragePath("--model", config.model, options, writes=False),
    ]
    made = None  # the outermost folder of a local output that is not there yet
    if is_local_url(config.output_url):
        here = os.path.abspath(refuse_url(config.output_url, "--output"))
        while not os.path.exists(here) and os.path.dirname(here) != here:
            made, here = here, os.path.dirname(here)
    try:
        return check_visible_from_every_node(
            paths, shared=config.storage_shared, knob="storage_shared"
        )
    finally:
        for root, _dirs, files in os.walk(made, topdown=False) if made else ():
            if files:
                break
            with contextlib.suppress(OSError):
                os.rmdir(root)


def run(args: argparse.Namespace) -> int:
    """Errors propagate to the CLI, which prints one line and picks the exit code."""
    config = config_from_args(args)  # validated before any work starts
    summary_target = writable_target(args.summary, config.storage_options)
    check_before_ray(config)
    from clam_dist.assign.pipeline import run_assignment
    from clam_dist.ray_session import start_ray

    start_ray(args.address)  # quiet; under `ray job submit` this joins the job's cluster
    check_storage(config)  # several nodes: every node sees input, output and model
    res = run_assignment(config)
    summary = res.to_dict()
    summary.pop("manifest")
    text = json.dumps(summary, indent=2, default=str)
    print(text)
    if summary_target is not None:
        write_after_commit(summary_target, text, what=f"the output {res.output} is committed")
    return 0
