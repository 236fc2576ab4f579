"""The whole job on a real multi-node Ray cluster on loopback: a head with no CPUs of its
own and two worker raylets of one CPU each (clam_dist/local_cluster.py), data and every
output in a real S3 API server on 127.0.0.1 (moto). The CLI runs as a person runs it:
``RAY_ADDRESS=<cluster> clam-dist pipeline --run-dir s3://bucket/run --set data.url=...``
with the endpoint and credentials in the environment only, as every AWS tool reads them.
"""

from __future__ import annotations

import json
import socket

import numpy as np
import pyarrow.parquet as pq
import pytest
from cli_harness import cli_env, run_cli

from clam_dist.commands.make_dataset import write_mixture
from clam_dist.data.local_s3 import local_s3
from clam_dist.data.source import open_filesystem
from clam_dist.drills import TASK_DELAY_ENV
from clam_dist.local_cluster import SINGLE_HOST_ENV, local_cluster

pytestmark = [pytest.mark.ray, pytest.mark.slow]

BUCKET = "clam-multi"
PIPELINE = [
    "--set", f"data.url=s3://{BUCKET}/data",
    "--set", "model.n_clusters=4",
    "--set", "optim.epochs=2",
    "--set", "train.num_workers=2",
    "--set", "eval_sample=500",
    "--set", "assign.concurrency=2",
]  # fmt: skip


@pytest.fixture(scope="module")
def s3():
    with local_s3(BUCKET) as server:
        write_mixture(
            server.url("data"), 6_000, 8, 4, 8.0, 0, 1_000, storage_options=server.storage_options
        )
        yield server


@pytest.fixture(scope="module")
def cluster():
    with local_cluster(workers=2, cpus_per_worker=1, head_cpus=0) as c:
        yield c


def _env(s3, cluster=None) -> dict[str, str]:
    """The user's shell: the S3 endpoint and keys in AWS_* variables, RAY_ADDRESS when
    joining the cluster (and Ray's single-host mode, which keeps 127.0.0.1 as given)."""
    extra = dict(s3.env())
    if cluster is not None:
        extra[SINGLE_HOST_ENV] = "0"
    return cli_env(ray_address=cluster.address if cluster else None, **extra)


def _read_json(s3, url: str) -> dict:
    fs, path = open_filesystem(url, s3.storage_options)
    fs.invalidate_cache()
    return json.loads(fs.cat_file(path))


def _labels(s3, url: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, clusters, distances) of a committed assignment, ordered by id."""
    fs, path = open_filesystem(url, s3.storage_options)
    fs.invalidate_cache()
    table = pq.read_table(path, filesystem=fs)
    order = np.argsort(table.column("id").to_numpy(zero_copy_only=False))
    return tuple(  # type: ignore[return-value]
        table.column(c).to_numpy(zero_copy_only=False)[order] for c in ("id", "cluster", "distance")
    )


def test_pipeline_from_s3_to_s3_on_three_nodes_equals_one_node(s3, cluster, tmp_path):
    many = run_cli(
        "pipeline", "--run-dir", s3.url("run-3-nodes"), *PIPELINE,
        cwd=tmp_path, env=_env(s3, cluster), timeout=600,
    )  # fmt: skip
    assert many.code == 0, many.describe()
    one = run_cli(
        "pipeline", "--run-dir", s3.url("run-1-node"), *PIPELINE, "--set", "num_cpus=2",
        cwd=tmp_path, env=_env(s3), timeout=600,
    )  # fmt: skip
    assert one.code == 0, one.describe()
    assert list(tmp_path.iterdir()) == []  # everything went to the bucket

    ids3, labels3, dist3 = _labels(s3, s3.url("run-3-nodes/assignments"))
    ids1, labels1, dist1 = _labels(s3, s3.url("run-1-node/assignments"))
    assert len(ids3) == 6_000 and len(set(ids3)) == 6_000
    assert (ids3 == ids1).all()
    assert (labels3 == labels1).all()  # row for row, label for label
    np.testing.assert_allclose(dist3, dist1, rtol=1e-5, atol=1e-5)

    summary = _read_json(s3, s3.url("run-3-nodes/summary.json"))
    assert summary["status"] == "succeeded"
    assert summary["cluster"]["nodes"] == 3
    per_node = summary["stages"]["train"]["per_node"]
    workers = {n.node_id for n in cluster.worker_nodes}
    # one training worker on each worker node, none on the head (it has no CPUs)
    assert set(per_node) == workers, per_node
    assert all(v["workers"] == 1 and v["rows"] > 0 and v["seconds"] > 0 for v in per_node.values())
    assigned = summary["stages"]["assign"]["per_node"]
    assert set(assigned) == workers, assigned  # assignment tasks on every worker node
    assert sum(v["rows"] for v in assigned.values()) == 6_000
    single = _read_json(s3, s3.url("run-1-node/summary.json"))
    assert "cluster" not in single and len(single["stages"]["train"]["per_node"]) == 1

    # The driver lost after its assign stage (its process gone, its lock left behind):
    # the same command resumes from the stage markers in the bucket.
    fs, root = open_filesystem(s3.url("run-3-nodes"), s3.storage_options)
    fs.rm_file(f"{root}/stages/evaluate.json")
    dead = {"host": socket.gethostname(), "pid": 2**22 + 4321, "since": "earlier"}
    fs.pipe_file(f"{root}/.lock", json.dumps(dead).encode())
    again = run_cli(
        "pipeline", "--run-dir", s3.url("run-3-nodes"), *PIPELINE,
        cwd=tmp_path, env=_env(s3, cluster), timeout=600,
    )  # fmt: skip
    assert again.code == 0, again.describe()
    resumed = _read_json(s3, s3.url("run-3-nodes/summary.json"))
    assert resumed["overview"]["skipped"] == ["data", "train", "assign"]
    assert resumed["stages"]["evaluate"]["metrics"]["rows"] == 6_000
    fs.invalidate_cache()
    assert not fs.exists(f"{root}/.lock")  # taken over, then released


def test_a_local_run_dir_on_several_nodes_is_refused_before_any_work(s3, cluster, tmp_path):
    run_dir = tmp_path / "run"
    r = run_cli("pipeline", "--run-dir", str(run_dir), *PIPELINE, env=_env(s3, cluster))
    assert r.code == 2, r.describe()
    line = r.one_line(str(run_dir), "local path", "3 nodes", "storage.shared=true")
    assert "Traceback" not in r.err, line
    assert not run_dir.exists()  # nothing made, nothing written


def test_the_storage_probe_reads_a_token_on_every_node(s3, cluster, tmp_path):
    """A shared mount is taken on the user's word only after a task on each node read
    the driver's token there; a store the driver cannot write to is named."""
    import ray

    from clam_dist.shared_storage import (
        StorageNotShared,
        StoragePath,
        check_visible_from_every_node,
    )

    cluster.connect()
    try:
        local = StoragePath("run_dir", str(tmp_path / "shared"))
        checked = check_visible_from_every_node([local], shared=True)
        assert checked == {"nodes": 3, "checked": [local.url], "shared_mount": True}
        assert list((tmp_path / "shared").iterdir()) == []  # the token is gone again
        with pytest.raises(StorageNotShared, match="run_dir .* local path"):
            check_visible_from_every_node([local], shared=False)
        with pytest.raises(StorageNotShared, match="memory:// lives in one process"):
            check_visible_from_every_node([StoragePath("run_dir", "memory://x")], shared=True)
        missing = StoragePath("run_dir", "s3://no-such-bucket/run", s3.storage_options)
        with pytest.raises(StorageNotShared, match="no-such-bucket/run: the driver cannot"):
            check_visible_from_every_node([missing], shared=False)
    finally:
        ray.shutdown()


def test_two_level_cells_spread_over_the_nodes_from_s3(s3, cluster):
    """The two-level job (one Ray task per coarse cell, no all-reduce) on three nodes, its
    shuffled rows and cell checkpoints in the bucket: every cell is trained on a worker
    node and both worker nodes train cells."""
    import ray

    from clam_dist.data.cell_shards import CellShards
    from clam_dist.data.source import VectorSource
    from clam_dist.data.stats import sample_rows
    from clam_dist.methods.kmeans.estimator import KMeans
    from clam_dist.models.two_level import fit_coarse
    from clam_dist.train.cells import EstimatorCellFit, RowSpace, train_two_level

    source = VectorSource(s3.url("data"), storage_options=s3.storage_options)
    x = sample_rows(source, 6_000, 0).x
    space = RowSpace(x.mean(0), x.std(0))
    coarse = fit_coarse(space(x), 8, seed=0)
    fit = EstimatorCellFit(KMeans(n_init=1, swap_rounds=0))
    cluster.connect()
    try:
        shards = CellShards(s3.url("cells-3-nodes"), s3.storage_options)
        many = train_two_level(source, space, coarse, shards, 64, 0, fit)
    finally:
        ray.shutdown()
    workers = {n.node_id for n in cluster.worker_nodes}
    assert set(many.per_node) == workers, many.per_node  # no CPUs on the head: none there
    assert sum(v["cells"] for v in many.per_node.values()) == 8
    assert sum(v["rows"] for v in many.per_node.values()) == 6_000
    # What each cell fitted is the in-memory fit's (tests/test_two_level_cells.py).
    assert many.model.k == 64 and many.resumed == []


@pytest.fixture(scope="module")
def model_url(s3):
    """A model for the assignment tests, trained in memory (no Ray) and saved to S3."""
    from clam_dist import ClAM
    from clam_dist.artifacts import save_artifact
    from clam_dist.data.source import VectorSource
    from clam_dist.data.stats import sample_rows

    source = VectorSource(s3.url("data"), storage_options=s3.storage_options)
    x = sample_rows(source, 2_000, 0).x
    model = ClAM(n_clusters=4, epochs=2, random_state=0).fit(x)
    url = s3.url("model")
    save_artifact(model.to_artifact(), url, s3.storage_options)
    return url


def test_a_node_lost_mid_assignment_commits_every_row_once(s3, cluster, model_url, tmp_path):
    """A worker node removed once the first part file is staged: its tasks are retried on
    the nodes left, and the committed output holds exactly the 6,000 input ids, once
    each, with nothing of the lost attempts beside the manifest's files."""
    from cli_harness import start_cli

    from clam_dist.assign.commit import read_assignments

    output = s3.url("assigned-lost")
    # Each batch waits a second (a drill the driver hands to every node's tasks): on a
    # fast machine the 6,000 rows were all written before the node could be removed.
    running = start_cli(
        "assign", "--input", s3.url("data"), "--output", output, "--model", model_url,
        "--concurrency", "2", "--summary", str(tmp_path / "assign.json"),
        env={**_env(s3, cluster), TASK_DELAY_ENV: "1.0"},
    )  # fmt: skip
    fs, root = open_filesystem(output, s3.storage_options)

    def first_part_staged() -> bool:
        fs.invalidate_cache()
        return any(p.endswith(".parquet") for p in fs.find(root))

    running.wait_until(first_part_staged, "a first staged part file", timeout=300)
    victim = cluster.worker_nodes[0]
    cluster.remove_worker(victim)
    try:
        assert running.proc.poll() is None, "the job ended before the node was lost"
    finally:
        new = cluster.add_worker()  # the next tests find two worker nodes again
    done = running.finish(timeout=600)
    assert done.code == 0, done.describe()
    per_node = json.loads((tmp_path / "assign.json").read_text())["per_node"]
    # tasks finished on the nodes left (and maybe the new one); all rows counted once
    assert sum(v["rows"] for k, v in per_node.items() if k != victim.node_id) > 0
    assert set(per_node) <= {*cluster.node_ids(), victim.node_id, new.node_id}

    fs.invalidate_cache()  # this process listed the prefix while the job wrote it
    table = read_assignments(output, s3.storage_options)
    ids = table.column("id").to_pylist()
    assert len(ids) == 6_000 and len(set(ids)) == 6_000
    manifest = _read_json(s3, f"{output}/_manifest.json")
    fs.invalidate_cache()
    listed = {p.rsplit("/", 1)[-1] for p in fs.find(root)}
    assert listed == {
        *(f.rsplit("/", 1)[-1] for f in manifest["files"]),
        "_manifest.json",
        "_SUCCESS",
    }


def _train_args(s3, name: str, summary) -> list[str]:
    return [
        "train",
        "--summary", str(summary),
        "--set", f"data.url={s3.url('data')}",
        "--set", "data.lanes=2",
        "--set", "model.n_clusters=4",
        "--set", "optim.epochs=12",
        # 30 steps an epoch: 360 steps, long enough to lose a node in the middle
        "--set", "optim.batch_size=100",
        "--set", "run.num_workers=2",
        "--set", "run.checkpoint_every_steps=10",
        "--set", "run.report_every=30",
        "--set", "run.max_failures=2",
        "--set", f"run.storage_path={s3.url('train-runs')}",
        "--set", f"run.name={name}",
    ]  # fmt: skip


def test_a_node_lost_mid_training_resumes_on_a_new_node_and_ends_where_it_would(
    s3, cluster, tmp_path
):
    """A worker node (raylet, object store and training worker) removed after the first
    checkpoint: Ray Train restarts the worker group on the node left and a node added
    back, from the last checkpoint in the bucket, and the run ends with the prototypes
    the uninterrupted run ends with."""
    from cli_harness import start_cli

    from clam_dist.artifacts import load_artifact

    env = _env(s3, cluster)
    steady = run_cli(*_train_args(s3, "steady", tmp_path / "steady.json"), env=env, timeout=600)
    assert steady.code == 0, steady.describe()
    running = start_cli(*_train_args(s3, "lost", tmp_path / "lost.json"), env=env)
    fs, root = open_filesystem(s3.url("train-runs/lost"), s3.storage_options)

    def checkpointed() -> bool:
        fs.invalidate_cache()
        return fs.exists(root) and any("checkpoint_" in p for p in fs.ls(root))

    running.wait_until(checkpointed, "a first checkpoint in the bucket", timeout=300)
    victim = cluster.worker_nodes[0]
    cluster.remove_worker(victim)  # SIGKILL: its raylet, object store and worker
    new = cluster.add_worker()
    lost = running.finish(timeout=600)
    assert lost.code == 0, lost.describe()

    steady_summary = json.loads((tmp_path / "steady.json").read_text())
    lost_summary = json.loads((tmp_path / "lost.json").read_text())
    per_node = lost_summary["metrics"]["per_node"]
    # the last attempt ran on the node left and the one added, not on the lost one
    assert victim.node_id not in per_node and new.node_id in per_node, per_node
    assert lost_summary["metrics"]["step"] == steady_summary["metrics"]["step"] == 360
    p_steady = load_artifact(steady_summary["artifact"], s3.storage_options).prototypes
    p_lost = load_artifact(lost_summary["artifact"], s3.storage_options).prototypes
    np.testing.assert_allclose(p_lost, p_steady, rtol=1e-4, atol=1e-5)
