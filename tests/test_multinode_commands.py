"""The standalone commands on a real multi-node Ray cluster on loopback (a head with no
CPUs and two 1-CPU worker raylets, clam_dist/local_cluster.py), run as a person runs
them: ``RAY_ADDRESS=<cluster> clam-dist train|assign ...``. A local path is a different
folder on each machine of a real cluster, so with several nodes it is refused before any
work, in one line naming it and the node count (exit 2, nothing written), unless the user
says it is a shared mount; then a task on every node reads the driver's token back (here
every "node" shares this host's disk, so the probe passes).
"""

from __future__ import annotations

import json

import pytest
from cli_harness import cli_env, run_cli

from clam_dist.commands.make_dataset import write_mixture
from clam_dist.local_cluster import SINGLE_HOST_ENV, local_cluster

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROWS = 600


@pytest.fixture(scope="module")
def cluster():
    with local_cluster(workers=2, cpus_per_worker=1, head_cpus=0) as c:
        yield c


@pytest.fixture(scope="module")
def local_data(tmp_path_factory):
    """Parquet rows and a model trained on them in memory (no Ray), both on local disk."""
    from clam_dist import ClAM
    from clam_dist.artifacts import save_artifact
    from clam_dist.data.source import VectorSource
    from clam_dist.data.stats import sample_rows

    root = tmp_path_factory.mktemp("local")
    data = str(root / "data")
    write_mixture(data, ROWS, 6, 3, 8.0, 0, 200)
    x = sample_rows(VectorSource(data), ROWS, 0).x
    model = str(root / "model")
    save_artifact(ClAM(n_clusters=3, epochs=2, random_state=0).fit(x).to_artifact(), model)
    return data, model


def _env(cluster) -> dict[str, str]:
    # Ray's single-host mode keeps 127.0.0.1 as given (clam_dist/local_cluster.py)
    return cli_env(ray_address=cluster.address, **{SINGLE_HOST_ENV: "0"})


def test_train_refuses_local_paths_on_three_nodes_unless_shared(cluster, local_data, tmp_path):
    data, _ = local_data
    runs = tmp_path / "runs"
    args = ["train", "--data", data, "--k", "3", "--set", f"run.storage_path={runs}"]
    refused = run_cli(*args, cwd=tmp_path, env=_env(cluster))
    assert refused.code == 2, refused.describe()
    line = refused.one_line(str(runs), "local path", "3 nodes", "storage.shared=true")
    assert "Traceback" not in refused.err, line
    assert list(tmp_path.iterdir()) == []  # nothing made, nothing written

    # Declared shared: every node reads the token back, and the job goes on to its next
    # check (64 workers on a cluster of 2 CPUs), leaving no storage folder behind.
    shared = run_cli(
        *args, "--workers", "64", "--set", "storage.shared=true", cwd=tmp_path, env=_env(cluster)
    )
    assert shared.code == 2, shared.describe()
    shared.one_line("run.num_workers=64", "needs 64 CPUs", "has 2")
    assert list(tmp_path.iterdir()) == []


def test_assign_refuses_local_paths_on_three_nodes_and_runs_when_shared(
    cluster, local_data, tmp_path
):
    data, model = local_data
    out = tmp_path / "out"
    args = ["assign", "--input", data, "--output", str(out), "--model", model]
    refused = run_cli(*args, cwd=tmp_path, env=_env(cluster))
    assert refused.code == 2, refused.describe()
    line = refused.one_line(str(out), "local path", "3 nodes", "storage_shared=true")
    assert "Traceback" not in refused.err, line
    assert list(tmp_path.iterdir()) == []

    summary = tmp_path / "summary.json"
    done = run_cli(
        *args, "--set", "storage_shared=true", "--summary", str(summary),
        cwd=tmp_path, env=_env(cluster), timeout=600,
    )  # fmt: skip
    assert done.code == 0, done.describe()
    result = json.loads(summary.read_text())
    assert result["rows"] == ROWS
    workers = {n.node_id for n in cluster.worker_nodes}
    assert set(result["per_node"]) <= workers  # tasks on the worker nodes, none on the head
    manifest = json.loads((out / "_manifest.json").read_text())
    files = {f.rsplit("/", 1)[-1] for f in manifest["files"]}
    # the committed output alone: no probe token left beside it
    assert {p.name for p in out.iterdir()} == {*files, "_manifest.json", "_SUCCESS"}
