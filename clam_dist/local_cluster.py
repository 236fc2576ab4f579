"""A real multi-node Ray cluster on this one host, on loopback, for tests, the quickstart
and scaling experiments.

Every node is a separate raylet (its own object store, worker pool and node id) joined to
one GCS, exactly as on a multi-machine cluster; only the network is 127.0.0.1. The head
has no CPUs by default, like the ``infra/`` deployments (the head runs no training), so
every task and training worker lands on a worker raylet.

    with local_cluster(workers=2) as cluster:
        cluster.connect()            # or RAY_ADDRESS=<cluster.address> in a subprocess
        ...

    python -m clam_dist.local_cluster --workers 2 --dashboard   # hold one open (Ctrl-C)

Why RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: Ray rewrites "127.0.0.1" in any address it is
given to this host's network IP, while servers started with node IP 127.0.0.1 listen on
loopback only, so a plain ``ray.init(address="127.0.0.1:port")`` would dial an address
nobody listens on. With that variable at 0 (Ray's single-host mode, the default on macOS
and Windows) Ray keeps 127.0.0.1 as it is. This module sets it for itself and for every
process the cluster starts (workers, job drivers); a separate shell that joins the
cluster needs it exported too (the CLI prints it).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

LOOPBACK = "127.0.0.1"
SINGLE_HOST_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# A lost (killed) raylet is noticed by the GCS's health checks. Ray's defaults take 15 to
# 30 seconds; these take a few, yet allow a raylet on a busy 2-core machine 5 misses of 2 s
# each before it is declared dead.
_HEALTH_CHECKS = {
    "health_check_initial_delay_ms": 1000,
    "health_check_period_ms": 1000,
    "health_check_timeout_ms": 2000,
    "health_check_failure_threshold": 5,
}
# Node start-up on a loaded 2-core machine takes 5-20 s per raylet: be generous.
_NODE_TIMEOUT_S = 120.0


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


@dataclass
class LocalCluster:
    """Handle on a running local cluster (made by :func:`local_cluster`)."""

    cluster: Any  # ray.cluster_utils.Cluster
    cpus_per_worker: int
    object_store_bytes: int
    temp_dir: str  # Ray's sessions, logs and sockets for this cluster alone
    dashboard_url: str | None = None
    # In start order (Cluster keeps a set): worker_nodes[0] is the oldest.
    _workers: list[Any] = field(default_factory=list, repr=False)

    @property
    def address(self) -> str:
        """The GCS address, "127.0.0.1:port": what ``ray.init(address=...)`` and
        ``RAY_ADDRESS`` take."""
        return self.cluster.address

    @property
    def head_node(self) -> Any:
        return self.cluster.head_node

    @property
    def worker_nodes(self) -> list[Any]:
        """The live worker nodes (``ray._private.node.Node``), oldest first."""
        return [n for n in self._workers if n in self.cluster.worker_nodes]

    def add_worker(self, num_cpus: int | None = None) -> Any:
        """Start one more worker raylet; returns once the GCS lists it alive."""
        node = self.cluster.add_node(
            **_node_args(
                self.cpus_per_worker if num_cpus is None else num_cpus,
                self.object_store_bytes,
                self.temp_dir,
            )
        )
        self._workers.append(node)
        self._wait_alive(node.node_id, alive=True)
        return node

    def remove_worker(self, node: Any, graceful: bool = False) -> None:
        """Lose ``node`` like a machine going away: its raylet and workers are killed
        (SIGKILL unless ``graceful``), and this returns once the GCS has marked it dead,
        so :meth:`node_ids` no longer lists it."""
        if node is self.cluster.head_node:
            raise ValueError("remove_worker removes worker nodes; the head ends with the cluster")
        procs = _processes([node])  # taken before its raylet, their parent, is gone
        self.cluster.remove_node(node, allow_graceful=graceful)
        self._workers = [n for n in self._workers if n is not node]
        self._wait_alive(node.node_id, alive=False)
        _reap(procs)

    def node_ids(self) -> list[str]:
        """Hex ids of the nodes the GCS holds alive (head included)."""
        return [n["NodeID"] for n in self.cluster.global_state.node_table() if n["Alive"]]

    def connect(self) -> None:
        """``ray.init`` this process into the cluster, quietly. The cluster's exit
        disconnects it again."""
        import ray

        ray.init(address=self.address, logging_level=logging.ERROR, log_to_driver=False)

    def pids(self) -> list[int]:
        """Every live process the cluster started (GCS, raylets, agents, dashboard) and
        their descendants (Ray's worker processes): what tidy-up must leave none of."""
        return sorted(p.pid for p in _processes(self.cluster.list_all_nodes()))

    def _wait_alive(self, node_id: str, alive: bool, timeout: float = _NODE_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while (node_id in self.node_ids()) != alive:
            if time.monotonic() > deadline:
                state = "alive" if alive else "dead"
                raise TimeoutError(f"node {node_id} not {state} after {timeout:.0f} s")
            time.sleep(0.2)

    def _shutdown(self) -> None:
        import ray

        try:
            # Ours to end only if this process is joined to THIS cluster (not another Ray).
            if ray.is_initialized() and _gcs_of_this_driver() == self.address:
                ray.shutdown()
        finally:
            procs = _processes(self.cluster.list_all_nodes())
            # Cluster.shutdown deletes /tmp/ray/ray_current_cluster, which may be another
            # user's cluster's address (we never wrote it: see local_cluster).
            with mock.patch("ray._common.utils.reset_ray_address"):
                self.cluster.shutdown()
            _reap(procs)


def _processes(nodes: list[Any]) -> list[Any]:
    """psutil handles on the live processes Ray started for ``nodes`` and on their
    descendants (worker processes are children of their raylet: taken while it lives)."""
    import psutil

    found: dict[int, Any] = {}
    for node in nodes:
        for _, popen in node.live_processes():
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(popen.pid)
                found.setdefault(proc.pid, proc)
                for child in proc.children(recursive=True):
                    found.setdefault(child.pid, child)
    return list(found.values())


def _reap(procs: list[Any], timeout: float = 10.0) -> None:
    """Kill whatever of ``procs`` Ray's own shutdown left running, through handles taken
    while they were ours (psutil checks the start time: a reused pid is never hit)."""
    import psutil

    alive = _wait_gone(procs, timeout)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    _wait_gone(alive, timeout)


def _wait_gone(procs: list[Any], timeout: float) -> list[Any]:
    """Those of ``procs`` still running after up to ``timeout`` s. Polled rather than
    psutil.wait_procs: an orphaned worker that exited stays a zombie until PID 1 reaps it,
    and wait_procs would wait out the whole timeout on it."""
    deadline = time.monotonic() + timeout
    while (alive := [p for p in procs if _running(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


def _running(proc: Any) -> bool:
    import psutil

    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _gcs_of_this_driver() -> str | None:
    import ray

    node = ray._private.worker.global_worker.node
    return getattr(node, "gcs_address", None)


def _node_args(num_cpus: int, object_store_bytes: int, temp_dir: str) -> dict:
    return {
        "num_cpus": num_cpus,
        "num_gpus": 0,
        "object_store_memory": object_store_bytes,
        "node_ip_address": LOOPBACK,
        "temp_dir": temp_dir,
        # Ray's fixed default (52365) is taken by any other Ray on the machine: let the
        # OS pick one per node.
        "dashboard_agent_listen_port": 0,
    }


def _wait_for_dashboard(url: str, timeout: float = _NODE_TIMEOUT_S) -> None:
    """The job server answers only once the dashboard has loaded its modules: wait, so a
    `ray job submit` right after start-up is not refused."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/api/version", timeout=5) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"Ray dashboard at {url} did not answer in {timeout:.0f} s")
        time.sleep(0.5)


@contextlib.contextmanager
def _single_host_ray() -> Iterator[None]:
    """Ray's single-host mode (see the module doc) for this process and its children,
    restored on exit so the rest of this process's Ray use is as before."""
    from ray._private import ray_constants

    before_env, before_flag = os.environ.get(SINGLE_HOST_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[SINGLE_HOST_ENV] = "0"  # children read it at import
    ray_constants.ENABLE_RAY_CLUSTER = False  # this process imported Ray already
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before_flag
        if before_env is None:
            os.environ.pop(SINGLE_HOST_ENV, None)
        else:
            os.environ[SINGLE_HOST_ENV] = before_env


@contextlib.contextmanager
def local_cluster(
    workers: int = 2,
    cpus_per_worker: int = 1,
    head_cpus: int = 0,
    object_store_bytes: int = 150 * 2**20,
    dashboard: bool = False,
) -> Iterator[LocalCluster]:
    """A head node with ``head_cpus`` CPUs plus ``workers`` worker raylets of
    ``cpus_per_worker`` CPUs each, all on 127.0.0.1; yields once every node is
    registered. On exit (errors included) the whole cluster is shut down and this process
    is disconnected from it if it had joined."""
    import ray._private.utils
    from ray.cluster_utils import Cluster

    with contextlib.ExitStack() as stack:
        stack.enter_context(_single_host_ray())
        if threading.current_thread() is threading.main_thread():
            # Each Ray node started here installs its own SIGTERM handler (drain for 30 s,
            # then exit): this process's own handler comes back with the cluster's end.
            stack.callback(signal.signal, signal.SIGTERM, signal.getsignal(signal.SIGTERM))
        # Ray's own temp folder, not the machine's /tmp/ray: Ray finds "the" cluster of a
        # machine through <temp dir>/ray_current_cluster (the job server does, for each
        # job's driver), and on a shared machine /tmp/ray's may name another user's
        # cluster. Under /tmp itself: Ray's unix socket paths must stay under 107 bytes.
        temp_dir = tempfile.mkdtemp(prefix="clamray-", dir="/tmp")
        stack.callback(shutil.rmtree, temp_dir, ignore_errors=True)  # after the shutdown
        # Once more at this process's exit: an empty session folder was once found in it
        # after the process ended (cause not pinned down; Ray's exit hooks, registered
        # later, run before this one).
        atexit.register(shutil.rmtree, temp_dir, ignore_errors=True)
        # Ray starts the API server even without the dashboard (in a minimal mode), on
        # 8265 unless told: a port of our own, so it never meets another Ray's there.
        dashboard_port = free_port()
        head_args = {
            **_node_args(head_cpus, object_store_bytes, temp_dir),
            "include_dashboard": dashboard,
            "dashboard_host": LOOPBACK,
            "dashboard_port": dashboard_port,
            "_system_config": _HEALTH_CHECKS,
        }
        cluster = Cluster(shutdown_at_exit=True)  # exit hooks: a killed driver leaves no raylets
        handle = LocalCluster(cluster, cpus_per_worker, object_store_bytes, temp_dir)
        # Registered before the first node starts, so a failure half-way through start-up
        # still tears down whatever did start.
        stack.callback(handle._shutdown)
        # Cluster writes the address to /tmp/ray/ray_current_cluster, where every
        # argument-less ray.init() on the machine (another user's tests) would find and
        # join this cluster: it goes into our own temp folder instead.
        with mock.patch("ray._private.utils.write_ray_address"):
            cluster.add_node(**head_args)
        ray._private.utils.write_ray_address(cluster.address, temp_dir)
        for _ in range(workers):
            handle._workers.append(
                cluster.add_node(**_node_args(cpus_per_worker, object_store_bytes, temp_dir))
            )
        cluster.wait_for_nodes(timeout=_NODE_TIMEOUT_S)
        if dashboard:
            handle.dashboard_url = f"http://{LOOPBACK}:{dashboard_port}"
            _wait_for_dashboard(handle.dashboard_url)
        yield handle


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m clam_dist.local_cluster",
        description="Hold a multi-node Ray cluster open on 127.0.0.1 until Ctrl-C / SIGTERM.",
    )
    p.add_argument("--workers", type=int, default=2, help="worker raylets (default 2)")
    p.add_argument("--cpus-per-worker", type=int, default=1)
    p.add_argument("--head-cpus", type=int, default=0, help="0: the head runs no work")
    p.add_argument("--object-store-mb", type=int, default=150, help="per node")
    p.add_argument("--dashboard", action="store_true", help="dashboard + job server")
    args = p.parse_args(argv)

    def stop(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt  # unwinds through local_cluster's tidy-up

    signal.signal(signal.SIGTERM, stop)  # during start-up (Ray may take it over)
    try:
        with local_cluster(
            workers=args.workers,
            cpus_per_worker=args.cpus_per_worker,
            head_cpus=args.head_cpus,
            object_store_bytes=args.object_store_mb * 2**20,
            dashboard=args.dashboard,
        ) as cluster:
            # Each Ray node installs a SIGTERM handler that drains for 30 s and then exits
            # past our tidy-up: ours again, so SIGTERM ends like Ctrl-C.
            signal.signal(signal.SIGTERM, stop)
            print(f"RAY_ADDRESS={cluster.address}")
            if cluster.dashboard_url:
                print(f"dashboard: {cluster.dashboard_url}")
            print(
                f"# {1 + args.workers} nodes up. To join from another shell: export "
                f"RAY_ADDRESS={cluster.address} {SINGLE_HOST_ENV}=0 "
                f"(keeps Ray from rewriting 127.0.0.1). Ray logs: {cluster.temp_dir} (removed "
                "at exit). Ctrl-C stops the cluster.",
                file=sys.stderr,
            )
            sys.stdout.flush()
            while True:  # until SIGINT / SIGTERM raise KeyboardInterrupt here
                time.sleep(3600)
    except KeyboardInterrupt:
        print("# cluster shut down", file=sys.stderr)
        return 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
