"""The assignment CLI as a user runs it (a subprocess with its own local Ray): no Ray
core-worker ERROR about actor constructor arguments, and a worker process killed
mid-job is replaced by one that loads the model from its URL again."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from clam_dist import ClAM
from clam_dist.artifacts import save_artifact
from clam_dist.assign.commit import read_assignments
from clam_dist.assign.worker import DIE_ONCE_ENV
from clam_dist.data.writer import write_vectors
from clam_dist.datasets.synthetic import make_gaussian_mixture

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[1]
N = 3_000
CONSTRUCTOR_ERROR = "constructor arguments in the object store"


def _assign(tmp_path, extra_env: dict) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), **extra_env}
    env.pop("RAY_ADDRESS", None)  # a fresh local Ray, as a user's first run
    cmd = [sys.executable, "-m", "clam_dist", "assign", "--input", str(tmp_path / "in")]
    cmd += ["--output", str(tmp_path / "out"), "--model", str(tmp_path / "model")]
    cmd += ["--batch-size", "500", "--concurrency", "2"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)


def test_cli_run_logs_no_constructor_error_and_survives_a_killed_worker(tmp_path):
    x, _, _ = make_gaussian_mixture(N, 5, 4, seed=1)
    model = ClAM(n_clusters=4, epochs=1, batch_size=200, random_state=0).fit(x[:500])
    write_vectors(str(tmp_path / "in"), x, rows_per_file=1_000)
    save_artifact(model.to_artifact(), str(tmp_path / "model"))
    marker = tmp_path / "died"

    proc = _assign(tmp_path, {DIE_ONCE_ENV: str(marker)})
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert marker.exists(), "the injected worker death did not happen"
    assert CONSTRUCTOR_ERROR not in log, log[-3000:]
    table = read_assignments(str(tmp_path / "out"))
    assert table.num_rows == N
    labels = dict(zip(table.column("id").to_pylist(), table.column("cluster").to_pylist()))
    assert len(labels) == N
