"""`clam-dist report --registry URL --name NAME [--output DIR]`: a registered model's
timeline across its partitions (drift share per day, cluster sizes over time, which
version was champion when, refresh decisions with their gate numbers) as
``timeline.html``, ``timeline.png`` and ``timeline.json`` in a local folder. Read-only
on the registry."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--registry", required=True, help="the registry: a folder or URL")
    parser.add_argument("--name", required=True, help="the model's name in the registry")
    parser.add_argument(
        "--output", default=None, help="local folder for the report (default: report-<name>)"
    )
    parser.add_argument(
        "--storage-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an fsspec storage option (repeatable; dotted keys nest; JSON values allowed)",
    )
    parser.add_argument("--json", action="store_true", help="print the timeline as JSON too")


def run(args: argparse.Namespace) -> int:
    from clam_dist.registry.models_command import storage_options
    from clam_dist.registry.store import ModelRegistry, RegistryError
    from clam_dist.registry.timeline import build_timeline, render_timeline

    registry = ModelRegistry(
        args.registry, args.name, storage_options(args.registry, args.storage_option)
    )
    keys = registry.partitions()
    if not keys:
        raise RegistryError(
            f"{registry.url}: no partition has run for model {args.name!r} "
            "(run `clam-dist run-partition` first)"
        )
    records = [r for r in (registry.read_partition(k) for k in keys) if r]
    cards = {v: registry.card(v) for v in registry.versions()}
    timeline = build_timeline(records, cards, registry.alias_history(), name=args.name)
    paths = render_timeline(
        timeline, args.output or f"report-{args.name}", title=f"{args.name}: {registry.url}"
    )
    if args.json:
        print(json.dumps(timeline, indent=2, default=str))
    for what, path in paths.items():
        print(f"{what}: {path}")
    return 0
