"""The pipeline on a 3-node Ray cluster on this machine, data and outputs in object storage.

Starts a head node with no CPUs of its own plus two worker raylets on 127.0.0.1
(clam_dist/local_cluster.py: separate raylets, object stores and worker processes, as on
three machines), a local S3 API server (moto, as the tests use), writes a generated data
set to ``s3://clam-dist/data``, submits the pipeline with ``ray job submit`` (endpoint
and keys reach the job through its runtime_env, as on a real cluster), then prints what
each node did (the summary's per-node split) and tears everything down.

    pip install -e '.[test]'      # moto's S3 server
    python jobs/multinode_quickstart.py [--rows 200000] [--workers 2] [--set model.n_clusters=32 ...]

Exit code: the job's (0 succeeded). Everything runs on loopback; nothing is left running.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from clam_dist.commands.make_dataset import write_mixture
from clam_dist.data.local_s3 import local_s3
from clam_dist.data.source import open_filesystem
from clam_dist.local_cluster import SINGLE_HOST_ENV, local_cluster
from clam_dist.ray_session import TRAIN_POLL_ENV, TRAIN_POLL_S

BUCKET = "clam-dist"


def _submit(dashboard: str, env: dict[str, str], pipeline_args: list[str]) -> int:
    """`ray job submit`: waits for the job and streams its output here."""
    runtime_env = {"env_vars": env}
    cmd = [
        "ray", "job", "submit",
        "--address", dashboard,
        "--submission-id", f"clam-quickstart-{int(time.time())}",
        "--runtime-env-json", json.dumps(runtime_env),
        "--", sys.executable, "-m", "clam_dist", "pipeline", *pipeline_args,
    ]  # fmt: skip
    shown = [c if c != json.dumps(runtime_env) else "'{\"env_vars\": {AWS_*...}}'" for c in cmd]
    print("$ " + " ".join(shown), flush=True)
    return subprocess.run(cmd, env=dict(os.environ, RAY_ADDRESS=dashboard)).returncode


def _print_split(summary: dict) -> None:
    """Which node did what: the training workers' rows and seconds per node."""
    cluster = summary.get("cluster") or {}
    print(f"\nnodes in the cluster: {cluster.get('nodes', 1)}")
    per_node = summary.get("stages", {}).get("train", {}).get("per_node") or {}
    print(f"{'node':<14} {'workers':>7} {'rows trained':>13} {'seconds':>8}")
    for node, work in sorted(per_node.items()):
        print(f"{node[:12]:<14} {work['workers']:>7} {work['rows']:>13,} {work['seconds']:>8.1f}")
    print(f"status: {summary.get('status')}  total {summary.get('seconds')} s")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=200_000, help="rows of the generated mixture")
    p.add_argument("--workers", type=int, default=2, help="worker nodes (1 CPU each)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    args = p.parse_args()

    with local_s3(BUCKET) as s3:
        data, run = s3.url("data"), s3.url(f"runs/{time.strftime('%Y%m%d-%H%M%S')}")
        print(f"S3 endpoint {s3.endpoint_url}: writing {args.rows:,} rows to {data}", flush=True)
        write_mixture(data, args.rows, 32, 16, 8.0, 0, 25_000, storage_options=s3.storage_options)
        with local_cluster(workers=args.workers, cpus_per_worker=1, dashboard=True) as cluster:
            print(f"Ray cluster: head (0 CPUs) + {args.workers} worker nodes, {cluster.address}")
            print(f"dashboard and job server: {cluster.dashboard_url}", flush=True)
            env = {**s3.env(), SINGLE_HOST_ENV: "0", TRAIN_POLL_ENV: TRAIN_POLL_S}
            pipeline_args = [
                "--run-dir", run,
                "--set", f"data.url={data}",
                "--set", f"train.num_workers={args.workers}",
                "--set", "data.label_column=label",
                *(a for kv in args.overrides for a in ("--set", kv)),
            ]  # fmt: skip
            code = _submit(cluster.dashboard_url, env, pipeline_args)
        fs, path = open_filesystem(f"{run}/summary.json", s3.storage_options)
        if fs.exists(path):
            _print_split(json.loads(fs.cat_file(path)))
            print(f"outputs: {run}/ (model, assignments, report, summary.json)")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
