"""`clam-dist models`: a model registry's versions and aliases (clam_dist.registry.store).

- ``models list --registry URL`` the registered names; with ``--name NAME`` one row per
  version (created, parent, training partitions, k, method, aliases, a headline metric);
- ``models show --registry URL --name NAME [--version N | --alias A]`` a version's card
  as JSON (the latest version without either), with the aliases pointing at it;
- ``models promote --registry URL --name NAME --version N [--alias champion]`` and
  ``models rollback --registry URL --name NAME [--alias champion]``: an alias change,
  recorded in the alias history (nothing is ever deleted).

Storage options come from the environment as s3fs reads it (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, ...) and from ``--storage-option KEY=VALUE``
(repeatable; a dotted KEY nests, e.g. ``client_kwargs.endpoint_url=http://...``; a VALUE
that parses as JSON is taken as JSON). Unknown names, versions and aliases are one line on
stderr and exit code 2 (RegistryError, a ConfigError).
"""

from __future__ import annotations

import argparse
import json
import os

from clam_dist.data.urls import scheme_of
from clam_dist.registry.store import ModelRegistry, RegistryError, check_partition_key

# The metric shown in `models list` when a card has several: the first of these present,
# else the first numeric one by name.
HEADLINE_METRICS = ("silhouette", "ari", "nmi", "energy", "inertia", "loss")
DEFAULT_ALIAS = "champion"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--registry", required=True, help="the registry: a folder or any URL")
    common.add_argument(
        "--storage-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an fsspec storage option (repeatable; dotted keys nest; JSON values allowed)",
    )
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    p = sub.add_parser("list", parents=[common], help="registered names, or one's versions")
    p.add_argument("--name", default=None, help="a model's versions instead of the names")

    p = sub.add_parser("show", parents=[common], help="one version's card (JSON)")
    p.add_argument("--name", required=True)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--version", type=int, default=None, help="default: the latest")
    which.add_argument("--alias", default=None, help="the version this alias points at")

    p = sub.add_parser("promote", parents=[common], help="point an alias at a version")
    p.add_argument("--name", required=True)
    p.add_argument("--version", type=int, required=True)
    p.add_argument("--alias", default=DEFAULT_ALIAS)
    p.add_argument("--reason", default="promoted by hand")

    p = sub.add_parser("rollback", parents=[common], help="an alias back to its version before")
    p.add_argument("--name", required=True)
    p.add_argument("--alias", default=DEFAULT_ALIAS)
    p.add_argument("--reason", default="rolled back by hand")


def run(args: argparse.Namespace) -> int:
    options = storage_options(args.registry, args.storage_option)
    action = {"list": _list, "show": _show, "promote": _promote, "rollback": _rollback}
    return action[args.action](args, options)


# -- storage options ----------------------------------------------------------------------


def storage_options(registry: str, pairs: list[str]) -> dict | None:
    """``--storage-option`` pairs as a dict (None for a local registry); an S3 endpoint
    from AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL when none is given (older botocore does not
    read them itself)."""
    if scheme_of(registry) in (None, "file"):
        return None
    options: dict = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise RegistryError(f"--storage-option must be KEY=VALUE, got {pair!r}")
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        *outer, last = key.strip().split(".")
        where = options
        for part in outer:
            nested = where.setdefault(part, {})
            if not isinstance(nested, dict):
                raise RegistryError(f"--storage-option {pair!r}: {part} is not a dict")
            where = nested
        where[last] = value
    if scheme_of(registry) in ("s3", "s3a"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        client = options.get("client_kwargs") or {}
        if endpoint and "endpoint_url" not in options and "endpoint_url" not in client:
            options["client_kwargs"] = dict(client, endpoint_url=endpoint)
    return options


# -- commands -----------------------------------------------------------------------------


def _model(args: argparse.Namespace, options: dict | None) -> ModelRegistry:
    """The named model, which must have a complete version (else RegistryError)."""
    registry = ModelRegistry(args.registry, args.name, options)
    if not registry.versions():
        names = ModelRegistry.names(args.registry, options)
        there = ", ".join(names) if names else "none"
        raise RegistryError(
            f"no model named {args.name!r} in registry {registry.registry} (models: {there})"
        )
    return registry


def _list(args: argparse.Namespace, options: dict | None) -> int:
    if args.name is None:
        rows = []
        for name in ModelRegistry.names(args.registry, options):
            registry = ModelRegistry(args.registry, name, options)
            versions = registry.versions()
            rows.append(
                {
                    "name": name,
                    "versions": len(versions),
                    "latest": versions[-1] if versions else None,
                    "aliases": registry.aliases(),
                }
            )
        if args.json:
            _print_json(rows)
        elif rows:
            header = ["name", "versions", "latest", "aliases"]
            body = [
                [r["name"], str(r["versions"]), str(r["latest"]), _aliases_text(r["aliases"])]
                for r in rows
            ]
            print(_table([header, *body]))
        else:
            print(f"no models registered in {args.registry}")
        return 0
    registry = _model(args, options)
    by_version = _by_version(registry.aliases())
    rows = [_version_row(registry, v, by_version.get(v, [])) for v in registry.versions()]
    if args.json:
        _print_json(rows)
        return 0
    header = ["version", "created_at", "parent", "partitions", "k", "method", "aliases", "metric"]
    body = [
        [
            str(r["version"]),
            _text(r["created_at"]),
            _text(r["parent"]),
            _partitions_text(r["partitions"]),
            _text(r["k"]),
            _text(r["method"]),
            ",".join(r["aliases"]) or "-",
            _metric_text(r["metric"]),
        ]
        for r in rows
    ]
    print(_table([header, *body]))
    return 0


def _show(args: argparse.Namespace, options: dict | None) -> int:
    registry = _model(args, options)
    aliases = registry.aliases()
    if args.alias is not None:
        check_partition_key(args.alias, "alias")
        if args.alias not in aliases:
            there = ", ".join(aliases) if aliases else "none"
            raise RegistryError(
                f"model {registry.name!r} has no alias {args.alias!r} (aliases: {there})"
            )
        version = aliases[args.alias]
    else:
        version = args.version if args.version is not None else registry.latest()
    card = registry.card(version)
    _print_json(
        {
            "name": registry.name,
            "version": version,
            "aliases": _by_version(aliases).get(version, []),
            "card": card,
        }
    )
    return 0


def _promote(args: argparse.Namespace, options: dict | None) -> int:
    registry = _model(args, options)
    _report(registry, registry.promote(args.version, alias=args.alias, reason=args.reason), args)
    return 0


def _rollback(args: argparse.Namespace, options: dict | None) -> int:
    registry = _model(args, options)
    _report(registry, registry.rollback(alias=args.alias, reason=args.reason), args)
    return 0


def _report(registry: ModelRegistry, record: dict, args: argparse.Namespace) -> None:
    if args.json:
        _print_json(record)
        return
    was = record.get("previous")
    print(
        f"{registry.name}: {record['alias']} -> version {record['version']} "
        f"(was {'unset' if was is None else f'version {was}'}; history record {record['seq']})"
    )


# -- rows ---------------------------------------------------------------------------------


def _by_version(aliases: dict[str, int]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for alias, version in sorted(aliases.items()):
        out.setdefault(version, []).append(alias)
    return out


def _version_row(registry: ModelRegistry, version: int, aliases: list[str]) -> dict:
    card = registry.card(version)
    # k and method: the card's when it says, else the artifact's own small model.json.
    meta = {} if "k" in card and "method" in card else (registry.artifact_meta(version) or {})
    partitions = card.get("partitions")
    return {
        "version": version,
        "created_at": card.get("created_at"),
        "parent": card.get("parent"),
        "partitions": [str(p) for p in partitions] if isinstance(partitions, list) else [],
        "k": card.get("k", meta.get("k")),
        "method": card.get("method", meta.get("method")),
        "aliases": aliases,
        "metric": _headline(card.get("metrics")),
    }


def _headline(metrics) -> dict | None:
    if not isinstance(metrics, dict):
        return None
    numeric = {
        k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    for name in (*HEADLINE_METRICS, *sorted(numeric)):
        if name in numeric:
            return {"name": name, "value": numeric[name]}
    return None


def _text(value) -> str:
    return "-" if value is None or value == "" else str(value)


def _partitions_text(partitions: list[str]) -> str:
    if not partitions:
        return "-"
    if len(partitions) <= 2:
        return ",".join(partitions)
    return f"{partitions[0]}..{partitions[-1]} ({len(partitions)})"


def _metric_text(metric: dict | None) -> str:
    if metric is None:
        return "-"
    value = metric["value"]
    return (
        f"{metric['name']}={value:.4g}" if isinstance(value, float) else f"{metric['name']}={value}"
    )


def _aliases_text(aliases: dict[str, int]) -> str:
    return ",".join(f"{a}=v{v}" for a, v in aliases.items()) or "-"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows
    )


def _print_json(value) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))
