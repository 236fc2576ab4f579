"""`clam-dist run-partition`: what a scheduler calls once per partition (the interface is
fixed; scripts depend on it):

    clam-dist run-partition --registry URL --name NAME --partition KEY --input URL
        [--config FILE] [--set SECTION.FIELD=VALUE ...] [--summary PATH]

stdout: one line per step and the summary's headline; ``--summary`` writes the JSON
summary (``assignments``, ``model_version``, ``refreshed``, ``promoted``, ``drift_share``
and the decision's numbers). Exit codes: 0 done (also when the gate refused a
challenger, and for a partition that already ran), 2 bad input, 1 a failed job.
"""

from __future__ import annotations

import argparse
import json

from clam_dist.config import load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--registry", required=True, help="the registry: a folder or URL")
    parser.add_argument("--name", required=True, help="the model's name in the registry")
    parser.add_argument(
        "--partition", required=True, help="the partition's key, e.g. the schedule's date"
    )
    parser.add_argument(
        "--input", required=True, help="the partition's Parquet rows ({partition} is filled in)"
    )
    parser.add_argument("--config", default=None, help="TOML/YAML/JSON config (the pipeline's)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override a config field, e.g. --set model.n_clusters=64 --set drift.threshold=0.05",
    )
    parser.add_argument("--summary", default=None, help="also write the JSON summary here")
    parser.add_argument(
        "--reapply-champion",
        action="store_true",
        help="a partition that already ran: assign it again with the current champion",
    )


def run(args: argparse.Namespace) -> int:
    from clam_dist.registry.config import PartitionConfig
    from clam_dist.registry.partition import PartitionRequest, PartitionRun
    from clam_dist.summary_file import writable_target, write_after_commit

    config = load_config(PartitionConfig, args.config, args.overrides)
    summary_target = writable_target(args.summary, config.data.storage_options)
    request = PartitionRequest(
        registry=args.registry,
        name=args.name,
        partition=args.partition,
        input=args.input,
        reapply_champion=args.reapply_champion,
    )
    work = PartitionRun(config, request, say=lambda line: print(line, flush=True))
    work.check_input()  # bad input: exit 2 before the lock, Ray or any write
    with work.locked():
        started = _start_ray(config, work)
        try:
            summary = work.run_locked()
        finally:
            if started:
                import ray

                ray.shutdown()
    if summary_target is not None:
        text = json.dumps(summary, indent=2, default=str)
        write_after_commit(
            summary_target, text, what=f"partition {summary['partition']} is committed"
        )
    print(json.dumps({k: summary[k] for k in HEADLINE}))
    return 0


HEADLINE = ("partition", "model_version", "assignments", "refreshed", "promoted", "drift_share")


def _start_ray(config, work) -> bool:
    """Local Ray (``num_cpus``) or the cluster in RAY_ADDRESS; on several nodes the
    registry and the input must be visible from every node (clam_dist/shared_storage.py)."""
    from clam_dist.ray_session import start_ray
    from clam_dist.shared_storage import StoragePath, check_visible_from_every_node

    started = start_ray(num_cpus=config.num_cpus)
    try:
        options = config.data.storage_options
        check_visible_from_every_node(
            [
                StoragePath("--registry", work.registry.url, options, writes=True),
                StoragePath("--input", work.input_url, options, writes=False),
            ],
            shared=config.storage.shared,
        )
    except BaseException:
        if started:
            import ray

            ray.shutdown()
        raise
    return started
