"""clam_dist.local_cluster: a real multi-node Ray cluster on this host (separate raylets
on 127.0.0.1, no mocks). One cluster for the module (start-up is the slow part): a head
with 0 CPUs and 2 worker raylets of 1 CPU each. The last test ends it: keep it last."""

from __future__ import annotations

import contextlib
import os

import psutil
import pytest
import ray
from ray._private import ray_constants
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from clam_dist.local_cluster import SINGLE_HOST_ENV, local_cluster

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def started():
    """(cluster, stack, Ray's single-host switch before it): this process joined to it;
    stack.close() ends it (the last test does, to check the tidy-up; closing again here
    is then a no-op)."""
    if ray.is_initialized():  # a Ray left by an earlier module would refuse the join
        ray.shutdown()
    before = (os.environ.get(SINGLE_HOST_ENV), ray_constants.ENABLE_RAY_CLUSTER)
    stack = contextlib.ExitStack()
    cluster = stack.enter_context(local_cluster(workers=2, cpus_per_worker=1, head_cpus=0))
    cluster.connect()
    try:
        yield cluster, stack, before
    finally:
        stack.close()


@ray.remote(num_cpus=1)
def where() -> tuple[str, list[int]]:
    """The node this task ran on, and its process's ancestors (the raylet among them)."""
    return ray.get_runtime_context().get_node_id(), [p.pid for p in psutil.Process().parents()]


def _raylet_pid(node) -> int:
    return node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid


def _running(pids: list[int]) -> list[int]:
    left = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:  # a zombie has exited
                left.append(pid)
    return left


def _run_on(node) -> tuple[str, list[int]]:
    strategy = NodeAffinitySchedulingStrategy(node_id=node.node_id, soft=False)
    return ray.get(where.options(scheduling_strategy=strategy).remote(), timeout=120)


def test_head_without_cpus_and_two_one_cpu_workers_on_loopback(started):
    cluster, _, _ = started
    assert cluster.address.startswith("127.0.0.1:")
    assert len(cluster.node_ids()) == 3
    assert len(cluster.worker_nodes) == 2
    by_id = {n["NodeID"]: n for n in ray.nodes() if n["Alive"]}
    assert set(by_id) == set(cluster.node_ids())
    assert by_id[cluster.head_node.node_id]["Resources"].get("CPU", 0) == 0
    for node in cluster.worker_nodes:
        assert by_id[node.node_id]["Resources"]["CPU"] == 1
        assert by_id[node.node_id]["NodeManagerAddress"] == "127.0.0.1"
    assert ray.cluster_resources()["CPU"] == 2


def test_a_task_runs_on_each_worker_raylet(started):
    cluster, _, _ = started
    seen = []
    for node in cluster.worker_nodes:
        node_id, ancestors = _run_on(node)
        assert node_id == node.node_id
        # A worker process of THAT node's raylet: two raylets really ran the two tasks.
        assert _raylet_pid(node) in ancestors
        seen.append(node_id)
    assert len(set(seen)) == 2
    assert cluster.head_node.node_id not in seen


def test_losing_a_worker_and_adding_one_back(started):
    cluster, _, _ = started
    lost = cluster.worker_nodes[0]
    cluster.remove_worker(lost)
    alive = cluster.node_ids()
    assert len(alive) == 2
    assert lost.node_id not in alive
    assert not lost.any_processes_alive()

    new = cluster.add_worker()
    assert len(cluster.node_ids()) == 3
    assert new.node_id in cluster.node_ids()
    assert _run_on(new)[0] == new.node_id  # the new raylet takes work


def test_exit_leaves_no_process_and_disconnects(started):
    """Keep after the tests above: ends the module's cluster."""
    cluster, stack, before = started
    pids = cluster.pids()
    raylets = [_raylet_pid(n) for n in cluster.cluster.list_all_nodes()]
    assert len(raylets) == 3 and set(raylets) <= set(pids)
    assert ray.is_initialized()

    stack.close()

    assert _running(pids) == [], "processes of the cluster still running"
    assert not ray.is_initialized()
    assert not os.path.exists(cluster.temp_dir)
    # Ray's single-host switch is this process's again, as it was before the cluster.
    assert (os.environ.get(SINGLE_HOST_ENV), ray_constants.ENABLE_RAY_CLUSTER) == before


def test_an_error_inside_still_ends_the_cluster():
    """(After the module's cluster has ended: one cluster at a time on 2 cores.)"""
    with pytest.raises(RuntimeError, match="boom"), local_cluster(workers=1) as cluster:
        pids = cluster.pids()
        cluster.connect()
        raise RuntimeError("boom")
    assert pids and _running(pids) == []
    assert not ray.is_initialized()
