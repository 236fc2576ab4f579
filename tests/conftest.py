"""Shared fixtures: a real S3 API server on loopback and a small real local Ray instance."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from clam_dist.ray_session import TRAIN_POLL_ENV, TRAIN_POLL_S

# Keep torch from oversubscribing the 2-core CI machine when Ray workers run beside it.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
# Every Ray the tests start (fixtures, clusters, CLI subprocesses) polls Ray Train reports
# as the commands' own Ray does (clam_dist.ray_session): not once per 2 s.
os.environ.setdefault(TRAIN_POLL_ENV, TRAIN_POLL_S)


# The suite runs on two pytest-xdist workers, one test module at a time each (pyproject:
# -n 2 --dist loadfile --no-loadscope-reorder). Modules that take minutes go first: one of
# them started last would run alone at the end while the other worker idles. Longest
# first (seconds measured by `pytest --durations`); the rest keep their order.
SLOW_MODULES_FIRST = (
    "test_multinode.py",
    "test_schedule_cli.py",
    "test_multinode_commands.py",
    "test_trust.py",
    "test_two_level_estimators.py",
    "test_two_level_cells.py",
    "test_train_ray.py",
    "test_train_methods.py",
    "test_fault_tolerance.py",
    "test_trust_pipeline.py",
    "test_console.py",
    "test_assign_pipeline.py",
    "test_tune_methods.py",
    "test_run_record.py",
    "test_trust_artifacts.py",
    "test_trust_data.py",
    "test_tune.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_MODULES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1:<free port> with one bucket; yields a LocalS3."""
    from clam_dist.data.local_s3 import local_s3

    with local_s3(bucket="clam-test") as server:
        yield server


@pytest.fixture(scope="session")
def s3_options(s3_server):
    """storage_options for fsspec/s3fs/pyarrow/dask that reach the local S3 server."""
    return s3_server.storage_options


@pytest.fixture(scope="module")
def ray_local():
    """One real local Ray instance per test module (2 CPUs, modest object store)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    # address='local' always starts a fresh instance, never joins a `ray start` cluster.
    ray.init(
        address="local",
        num_cpus=2,
        object_store_memory=256 * 1024 * 1024,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="module")
def ray_address():
    """A real Ray cluster (one head node on loopback, 2 CPUs) that CLI subprocesses join
    through RAY_ADDRESS, so each command does not pay for starting Ray. Torn down by the
    fixture (never `ray stop`, which would kill every Ray process on the machine)."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        connect=False,
        head_node_args={
            "num_cpus": 2,
            "object_store_memory": 256 * 1024 * 1024,
            "include_dashboard": False,
        },
    )
    try:
        yield cluster.address
    finally:
        cluster.shutdown()
