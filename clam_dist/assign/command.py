"""`clam-dist assign`: label every row of a Parquet prefix with an existing model."""

from __future__ import annotations

import argparse
import json

from clam_dist.assign.pipeline import AssignConfig, run_assignment


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="Parquet prefix or file (any fsspec URL)")
    parser.add_argument(
        "--output", required=True, help="output prefix; committed with _manifest.json + _SUCCESS"
    )
    parser.add_argument(
        "--model", required=True, help="model artifact directory (model.json + model.safetensors)"
    )
    parser.add_argument("--vector-column", default=None, help="list column holding the vectors")
    parser.add_argument(
        "--feature-columns", default=None, help="comma-separated names or one glob, e.g. 'f*'"
    )
    parser.add_argument("--id-column", default=None, help="id column (default: '<file>:<row>' ids)")
    parser.add_argument(
        "--passthrough", default="", help="comma-separated input columns copied to the output"
    )
    parser.add_argument("--outputs", default="", help="extra outputs: energy,margin,probs")
    parser.add_argument(
        "--endpoint-url", default=None, help="S3 endpoint (credentials: standard AWS chain)"
    )
    parser.add_argument("--batch-size", type=int, default=8192, help="rows per model call")
    parser.add_argument(
        "--concurrency", type=int, default=2, help="actors, each holding the model once"
    )
    parser.add_argument(
        "--gpus-per-actor", type=float, default=0.0, help="GPUs per actor (0 = CPU)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a committed output")
    parser.add_argument(
        "--summary", default=None, help="write a JSON summary here (rows, rows/s, drift)"
    )


def _split(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def run(args: argparse.Namespace) -> int:
    feature_columns = _split(args.feature_columns)
    cfg = AssignConfig(
        input=args.input,
        output=args.output,
        model=args.model,
        vector_column=args.vector_column,
        feature_columns=(
            feature_columns[0]
            if len(feature_columns) == 1 and "*" in feature_columns[0]
            else feature_columns
        )
        or None,
        id_column=args.id_column,
        passthrough=_split(args.passthrough),
        outputs=_split(args.outputs),
        storage_options={"client_kwargs": {"endpoint_url": args.endpoint_url}}
        if args.endpoint_url
        else None,
        batch_size=args.batch_size,
        concurrency=args.concurrency,
        num_gpus_per_actor=args.gpus_per_actor,
        overwrite=args.overwrite,
    )
    res = run_assignment(cfg)
    summary = {
        "output": res.output,
        "rows": res.rows,
        "files": res.files,
        "seconds": res.seconds,
        "rows_per_second": res.rows_per_second,
        "drift_share_above_train_energy_p99": res.drift_share,
    }
    print(json.dumps(summary, indent=2))
    if args.summary:
        with open(args.summary, "w") as f:
            json.dump(summary, f, indent=2)
    return 0
