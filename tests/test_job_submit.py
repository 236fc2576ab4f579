"""Jobs run under `ray job submit` on a real local cluster (`ray start --head` on 127.0.0.1).

The cluster is this module's own: a dedicated --temp-dir, free ports, its own auth token, and
its own process session. Teardown signals only that session; `ray stop` is never used because
it kills every Ray process on the machine, including other test runs' clusters.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]

# The job under test: switch to another entrypoint by editing this one line.
JOB = "jobs/pipeline.py"
SMALL_PIPELINE = [
    "--set", "data.n=3000", "--set", "data.d=4", "--set", "data.k=3",
    "--set", "data.rows_per_file=1000", "--set", "model.n_clusters=3",
    "--set", "train.trainer=sample", "--set", "optim.epochs=2", "--set", "data.init_sample=1000",
    "--set", "eval_sample=500", "--set", "assign.concurrency=1",
]  # fmt: skip


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class LocalCluster:
    def __init__(self):
        # Short path: Ray's Unix sockets live under it (108-byte limit).
        self.temp_dir = tempfile.mkdtemp(prefix="rj", dir="/tmp")
        gcs, dash, client, agent, agent_grpc, metrics, env_agent = _free_ports(7)
        self.address = f"http://127.0.0.1:{dash}"
        self.env = dict(
            os.environ,
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN=secrets.token_hex(32),  # this cluster's own; never the user's
            RAY_USAGE_STATS_ENABLED="0",
        )
        self.env.pop("RAY_ADDRESS", None)
        cmd = [
            "ray", "start", "--head", "--block",
            "--node-ip-address=127.0.0.1", f"--port={gcs}",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--include-dashboard=true",
            f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
            f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
            f"--runtime-env-agent-port={env_agent}",
            "--num-cpus=2", f"--object-store-memory={256 * 2**20}",
            f"--temp-dir={self.temp_dir}", "--disable-usage-stats",
        ]  # fmt: skip
        self.log = open(Path(self.temp_dir) / "ray_start.log", "w")  # noqa: SIM115 (lives with the cluster)
        # Its own session: teardown can signal exactly this cluster's processes.
        self.proc = subprocess.Popen(
            cmd, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def ray(self, *args: str, timeout: float = 300, cwd: Path = REPO):
        return subprocess.run(
            ["ray", *args],
            env=self.env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited: {self.read_log()}")
            if self.ray("job", "list", "--address", self.address, timeout=60).returncode == 0:
                return
            time.sleep(2)
        raise TimeoutError(f"Jobs API not up after {timeout}s: {self.read_log()}")

    def read_log(self) -> str:
        return (Path(self.temp_dir) / "ray_start.log").read_text()[-4000:]

    def stop(self) -> None:
        # SIGTERM to the --block process makes it stop its own node's processes; then make
        # sure nothing of this session is left.
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    c = LocalCluster()
    try:
        c.wait_ready()
        yield c
    finally:
        c.stop()


def _submit(cluster: LocalCluster, submission_id: str, args: list[str]):
    return cluster.ray(
        "job", "submit", "--address", cluster.address, "--submission-id", submission_id,
        "--working-dir", ".", "--runtime-env", "infra/runtime_env.yaml",
        "--", "python", JOB, *args,
    )  # fmt: skip


def _status(cluster: LocalCluster, submission_id: str) -> str:
    out = cluster.ray("job", "status", "--address", cluster.address, submission_id, timeout=60)
    return (out.stdout + out.stderr).upper()


def test_pipeline_job_submitted_to_a_real_cluster(cluster, tmp_path):
    run_dir = tmp_path / "run"
    t0 = time.monotonic()
    out = _submit(cluster, "clam-pipeline-ok", ["--run-dir", str(run_dir), *SMALL_PIPELINE])
    took = time.monotonic() - t0
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "SUCCEEDED" in _status(cluster, "clam-pipeline-ok")
    logs = cluster.ray("job", "logs", "--address", cluster.address, "clam-pipeline-ok").stdout
    assert "status: succeeded" in logs and "stage evaluate" in logs, logs[-2000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "succeeded"
    assert set(summary["stages"]) == {"data", "train", "assign", "evaluate"}
    assert all(s["seconds"] >= 0 for s in summary["stages"].values())
    assert summary["stages"]["assign"]["rows"] == 3000
    assert (run_dir / "assignments" / "_SUCCESS").exists()
    print(f"pipeline job round trip {took:.1f}s")


def test_job_with_invalid_config_fails_before_any_work(cluster, tmp_path):
    run_dir = tmp_path / "bad"
    out = _submit(
        cluster, "clam-pipeline-bad", ["--run-dir", str(run_dir), "--set", "model.n_clusters=many"]
    )
    assert out.returncode != 0
    assert "FAILED" in _status(cluster, "clam-pipeline-bad")
    logs = cluster.ray("job", "logs", "--address", cluster.address, "clam-pipeline-bad").stdout
    assert "config error: model.n_clusters: expected an integer, got 'many'" in logs, logs[-2000:]
    assert not run_dir.exists()  # nothing started, nothing half-written


def test_runtime_env_with_missing_working_dir_is_refused(cluster, tmp_path):
    env = tmp_path / "env.yaml"
    env.write_text("working_dir: ./no_such_dir\n")
    out = cluster.ray(
        "job", "submit", "--address", cluster.address, "--runtime-env", str(env),
        "--", "python", JOB, "--help",
    )  # fmt: skip
    assert out.returncode != 0
    assert "no_such_dir" in out.stdout + out.stderr


def test_cron_submit_script_refuses_a_bad_config_before_submitting(cluster, tmp_path):
    env = dict(cluster.env, RAY_ADDRESS=cluster.address, CLAM_DIST_RUN_DIR=str(tmp_path / "r"))
    out = subprocess.run(
        [str(REPO / "infra/cron/submit_pipeline.sh"), "--set", "model.n_clusters=many"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert "config error: model.n_clusters" in out.stderr
    assert "submission_id" not in out.stdout  # never reached `ray job submit`
