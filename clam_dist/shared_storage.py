"""Storage every node can see, checked before any work.

On a Ray cluster of several nodes the driver writes the run's records, Ray Train writes
checkpoints from the workers' nodes, Ray Data writes part files from whichever node runs
a task, and every node loads the model from its URL. A local folder is then a different
folder on each machine: the job "succeeds" with its output scattered over local disks.
So with more than one node alive every path must be object storage, or a local path the
user says is a shared mount (``storage.shared=true``: NFS, a Kubernetes volume); and
rather than trust either, a token written by the driver is read back by a task pinned to
each node. ``memory://`` lives in one process and is refused outright.

A single-node Ray (the default local one) is not checked: local disk works as it always
did.
"""

from __future__ import annotations

import contextlib
import secrets
from dataclasses import dataclass

from clam_dist.config import ConfigError
from clam_dist.data.urls import is_local_url, scheme_of

PROBE_TIMEOUT_S = 120.0  # a node's probe task, scheduling included
_TOKEN_NAME = ".clam-dist-probe-{}"


class StorageNotShared(ConfigError):
    """A path some node of the cluster cannot see (exit 2, before any work)."""


@dataclass(frozen=True)
class StoragePath:
    option: str  # how the user names it: "--run-dir", "data.url"
    url: str
    storage_options: dict | None = None
    # True: a folder the job writes (the driver writes a token there for the nodes to
    # read back); False: input the job only reads (each node checks it exists).
    writes: bool = True


def alive_nodes() -> list[dict]:
    """The connected Ray cluster's live nodes (ray.nodes() records)."""
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def _node_name(node: dict) -> str:
    return f"{node.get('NodeManagerAddress', '?')} (node {node['NodeID'][:12]})"


def _refuse_unshared(path: StoragePath, shared: bool, n_nodes: int, knob: str) -> None:
    if scheme_of(path.url) == "memory":
        raise StorageNotShared(
            f"{path.option} {path.url}: memory:// lives in one process and this Ray cluster "
            f"has {n_nodes} nodes; use object storage (s3://, gs://)"
        )
    if is_local_url(path.url) and not shared:
        raise StorageNotShared(
            f"{path.option} {path.url} is a local path and this Ray cluster has {n_nodes} "
            "nodes, each with its own disk; use object storage (s3://bucket/...) or, if "
            f"it is a mount every node shares (NFS, a volume), --set {knob}=true"
        )


def _probe(checks: list[tuple[str, str, dict | None, str | None]]) -> list[tuple[int, str]]:
    """On one node: each (option, url, storage options, expected token text or None for a
    read path) that this node cannot see, as (index, why)."""
    from clam_dist.data.source import open_filesystem

    problems = []
    for i, (_option, url, options, token) in enumerate(checks):
        try:
            fs, path = open_filesystem(url, options)
            fs.invalidate_cache()
            if token is None:
                if not fs.exists(path):
                    problems.append((i, "not found"))
            else:
                with fs.open(f"{path.rstrip('/')}/{_TOKEN_NAME.format(token)}", "rb") as f:
                    if f.read().decode() != token:
                        problems.append((i, "another file is there"))
        except FileNotFoundError:
            problems.append((i, "the driver's token is not there: another disk"))
        except Exception as exc:  # noqa: BLE001 - whatever the backend says is the reason
            problems.append((i, f"{type(exc).__name__}: {str(exc)[:200]}"))
    return problems


def check_visible_from_every_node(
    paths: list[StoragePath], shared: bool, knob: str = "storage.shared"
) -> dict | None:
    """Refuse (StorageNotShared) when the cluster has several nodes and some path is local
    without ``shared``, or is not visible from some node; else a record of the check
    (None on a single node). ``knob``: the setting that says "shared", as the refusal
    names it (the pipeline's and training's ``storage.shared``; assign's is flat)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from clam_dist.data.source import open_filesystem

    nodes = alive_nodes()
    if len(nodes) < 2:
        return None
    for path in paths:
        _refuse_unshared(path, shared, len(nodes), knob)
    token = secrets.token_hex(8)
    written = []
    checks = []
    try:
        for path in paths:
            if path.writes:
                fs, root = open_filesystem(path.url, path.storage_options)
                target = f"{root.rstrip('/')}/{_TOKEN_NAME.format(token)}"
                try:
                    if is_local_url(path.url):  # s3fs would make a bucket
                        fs.makedirs(root, exist_ok=True)
                    fs.pipe_file(target, token.encode())
                except Exception as exc:  # noqa: BLE001 - the backend's words are the reason
                    raise StorageNotShared(
                        f"{path.option} {path.url}: the driver cannot write there "
                        f"({type(exc).__name__}: {str(exc)[:200]})"
                    ) from exc
                written.append((fs, target))
            checks.append(
                (path.option, path.url, path.storage_options, token if path.writes else None)
            )
        probe = ray.remote(num_cpus=0, max_retries=0)(_probe)
        pending = {
            probe.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
            ).remote(checks): node
            for node in nodes
        }
        for ref, node in pending.items():
            try:
                problems = ray.get(ref, timeout=PROBE_TIMEOUT_S)
            except ray.exceptions.GetTimeoutError:
                raise StorageNotShared(
                    f"node {_node_name(node)} did not answer the storage check in "
                    f"{PROBE_TIMEOUT_S:.0f} s"
                ) from None
            if problems:
                i, why = problems[0]
                raise StorageNotShared(
                    f"{checks[i][0]} {checks[i][1]}: node {_node_name(node)} cannot see it ({why})"
                )
    finally:
        for fs, target in written:
            with contextlib.suppress(Exception):  # a leftover token is harmless
                fs.rm_file(target)
    return {"nodes": len(nodes), "checked": [p.url for p in paths], "shared_mount": shared}
