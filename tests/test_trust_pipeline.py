"""The pipeline's run directory, judged from the user's seat (issue 24, B1, B9, B10):
every case runs `clam-dist pipeline` as a real subprocess (tests/cli_harness.py).

- B1: a finished stage is skipped only for the same input CONTENT: a Parquet file
  replaced by other rows of the same size, the same mtime and even the same footer is
  seen, and the re-run refused before any work.
- B9: one pipeline at a time per run dir (``<run_dir>/.lock``); a second one is refused
  in one line naming the holder; a killed holder's lock is taken over.
- B10: a URL given as the run dir is refused, never turned into a local folder "s3:".
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from cli_harness import checksums, cli_env, fails, ok, run_cli, start_cli

from clam_dist.data.urls import refuse_url
from clam_dist.data.writer import vectors_table, write_vectors
from clam_dist.datasets.synthetic import make_gaussian_mixture
from clam_dist.pipeline import lock
from clam_dist.pipeline.config import PipelineConfig, PipelineData
from clam_dist.pipeline.stages import Run

N, D, K = 1_500, 6, 3
# A small pipeline on given data: the in-memory trainer (no Ray Train); assign needs Ray.
ON_DATA = [
    "--set", "train.trainer=sample", "--set", f"model.n_clusters={K}",
    "--set", "optim.epochs=1", "--set", "eval_sample=300", "--set", "assign.concurrency=1",
]  # fmt: skip
# ... and on data it generates (tests/test_console.py's SMALL, with the sample trainer).
GENERATED = [
    "--set", "data.n=3000", "--set", "data.d=4", "--set", "data.k=3",
    "--set", "data.rows_per_file=1000", "--set", "model.n_clusters=3",
    "--set", "optim.epochs=1", "--set", "train.trainer=sample",
    "--set", "eval_sample=500", "--set", "assign.concurrency=1",
]  # fmt: skip


def wait_for_lock(running, run_dir: Path) -> dict:
    """Until the pipeline holds the run dir's lock; its record."""
    running.wait_until(lambda: (run_dir / ".lock").exists(), "the lock taken")
    return json.loads((run_dir / ".lock").read_text())  # whole: linked into place


def events(run_dir: Path) -> list[dict]:
    path = run_dir / "logs" / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- B1: stages are skipped only for the same input content -----------------------------


def write_plain(path: Path, x: np.ndarray, labels: np.ndarray, ids: np.ndarray) -> None:
    """One Parquet file without compression or dictionaries (as some writers make them):
    its size depends only on the row count, so other rows give a file of the same size."""
    table = vectors_table(x, ids=ids, labels=labels)
    pq.write_table(table, path, compression="none", use_dictionary=False)


def footer(path: Path) -> bytes:
    data = path.read_bytes()
    length = int.from_bytes(data[-8:-4], "little")
    return data[-8 - length : -8]


def plain_part(i: int, order: np.ndarray | None = None) -> tuple:
    """Rows 500*i ... 500*(i+1) of one mixture (x, labels, ids), in ``order`` if given."""
    x, y, _ = make_gaussian_mixture(N, D, K, separation=6.0, seed=3)
    rows = np.arange(i * 500, (i + 1) * 500)
    rows = rows if order is None else rows[order]
    return x[rows], y[rows], rows.astype(np.int64)


@pytest.fixture
def plain_data(tmp_path) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    for i in range(3):
        write_plain(root / f"part-{i:05d}.parquet", *plain_part(i))
    return root


def replace_keeping_size_mtime_and_footer(path: Path, i: int) -> None:
    """The same rows in another order: same size, same min/max statistics, so the same
    footer byte for byte, and the old mtime put back: only the content tells."""
    before, old_footer, old_table = path.stat(), footer(path), pq.read_table(path)
    write_plain(path, *plain_part(i, np.random.default_rng(0).permutation(500)))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert footer(path) == old_footer  # a footer fingerprint would not see it either
    assert pq.read_table(path) != old_table


def test_b1_input_replaced_with_same_size_and_mtime_is_refused(ray_address, plain_data, tmp_path):
    run_dir = tmp_path / "run"
    base = ["pipeline", "--run-dir", run_dir, "--set", f"data.url={plain_data}", *ON_DATA]
    ok(run_cli(*base, ray_address=ray_address))
    # The same data: every stage skipped (the content fingerprint is stable).
    ok(run_cli(*base, ray_address=ray_address))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert all(rec.get("skipped") for rec in summary["stages"].values())

    replace_keeping_size_mtime_and_footer(plain_data / "part-00001.parquet", 1)
    before = checksums(run_dir)
    r = run_cli(*base, ray_address=ray_address)
    line = fails(r, 2, "stage data", "data.files", "content changed", "part-00001.parquet")
    assert "--fresh" in line and "part-00000" not in line
    assert checksums(run_dir) == before  # refused before any work: nothing rewritten


def test_b1_object_store_input_is_fingerprinted_by_content(s3_server, tmp_path):
    """On an object store the fingerprint is the store's checksum (S3's ETag): a new
    upload of other bytes of the same size changes it."""
    url = s3_server.url("b1-data")
    opts = s3_server.storage_options
    x, y, _ = make_gaussian_mixture(400, D, K, seed=1)
    write_vectors(url, x, labels=y, rows_per_file=400, storage_options=opts)

    def files_fingerprint() -> dict[str, str]:
        data = PipelineData(url=url, storage_options=opts)
        return Run(PipelineConfig(run_dir=str(tmp_path / "run"), data=data)).input_files()

    first = files_fingerprint()
    assert files_fingerprint() == first  # stable while the object is unchanged
    write_vectors(url, x[::-1].copy(), labels=y[::-1].copy(), rows_per_file=400,
                  storage_options=opts)  # fmt: skip
    second = files_fingerprint()
    assert first.keys() == second.keys() and first != second


# -- B9: one pipeline at a time per run dir --------------------------------------------


def test_b9_second_pipeline_on_a_busy_run_dir_is_refused(ray_address, tmp_path):
    run_dir = tmp_path / "run"
    first = start_cli("pipeline", "--run-dir", run_dir, *GENERATED, ray_address=ray_address)
    try:
        holder = wait_for_lock(first, run_dir)
        # Held still (SIGSTOP) while the second runs: the test needs no race to win.
        first.send(signal.SIGSTOP)
        assert holder["pid"] == first.proc.pid
        r = run_cli("pipeline", "--run-dir", run_dir, *GENERATED, "--set", "model.n_clusters=4")
        line = fails(r, 2, "in use by another pipeline", f"pid {first.proc.pid}")
        assert socket.gethostname() in line and holder["since"] in line
    finally:
        first.send(signal.SIGCONT)
    done = first.finish(timeout=300)
    ok(done)
    assert not (run_dir / ".lock").exists()  # released at the end
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "succeeded" and summary["stages"]["evaluate"]["metrics"]["k"] == 3


def test_b9_a_killed_pipelines_lock_is_taken_over(ray_address, tmp_path):
    run_dir = tmp_path / "run"
    first = start_cli("pipeline", "--run-dir", run_dir, *GENERATED, ray_address=ray_address)
    assert wait_for_lock(first, run_dir)["pid"] == first.proc.pid
    os.killpg(first.proc.pid, signal.SIGKILL)  # no finally runs: the lock stays behind
    first.finish()
    assert json.loads((run_dir / ".lock").read_text())["pid"] == first.proc.pid

    ok(run_cli("pipeline", "--run-dir", run_dir, *GENERATED, ray_address=ray_address))
    assert not (run_dir / ".lock").exists()
    taken = [e for e in events(run_dir) if e["event"] == "run_dir_lock_taken_over"]
    assert [e["previous_holder"]["pid"] for e in taken] == [first.proc.pid]


def test_b9_another_hosts_lock_is_refused_and_kept(tmp_path):
    """A holder on another machine cannot be checked from here: never taken over."""
    run_dir = tmp_path / "run"
    (run_dir / "stages").mkdir(parents=True)
    holder = {"host": "elsewhere.example", "pid": 4242, "since": "2024-05-01T10:00:00+0000"}
    (run_dir / ".lock").write_text(json.dumps(holder))
    r = run_cli("pipeline", "--run-dir", run_dir, *GENERATED)
    fails(r, 2, "host elsewhere.example", "pid 4242", "2024-05-01T10:00:00", ".lock")
    assert json.loads((run_dir / ".lock").read_text()) == holder


def test_b9_stale_means_the_holder_is_gone_or_is_another_process_now():
    me = lock._me()
    assert not lock.is_stale(me)  # this live process
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    assert lock.is_stale(dict(me, pid=int(gone.stdout)))  # exited: its pid is free
    if me["proc_start"] is not None:  # Linux: a reused pid has another start time
        assert lock.is_stale(dict(me, proc_start=me["proc_start"] - 1))
    assert not lock.is_stale(dict(me, host="elsewhere.example", pid=int(gone.stdout)))


def test_b9_a_lock_taken_over_from_us_is_not_removed_by_us(tmp_path):
    me, taken = lock.acquire(tmp_path)
    assert taken is None and json.loads((tmp_path / ".lock").read_text()) == me
    with pytest.raises(lock.RunDirBusy, match="in use by another pipeline"):
        lock.acquire(tmp_path)  # this process holds it: a second acquire is refused
    other = dict(me, since="later")
    (tmp_path / ".lock").write_text(json.dumps(other))  # someone else's now
    lock.release(tmp_path, me)
    assert json.loads((tmp_path / ".lock").read_text()) == other


# -- B10: a URL is never taken for a local run dir -------------------------------------


def _env_without_aws(**extra: str) -> dict[str, str]:
    """The CLI's environment with no AWS credentials anywhere botocore looks (nor the
    instance metadata service, which it would wait on)."""
    env = {k: v for k, v in cli_env(**extra).items() if not k.startswith("AWS_")}
    env.update(
        AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
        AWS_CONFIG_FILE="/nonexistent",
        AWS_EC2_METADATA_DISABLED="true",
    )
    return env


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--run-dir", "s3://bucket/run"], "no AWS credentials"),
        (["--set", "run_dir=s3://bucket/run"], "no AWS credentials"),
        (["--run-dir", "memory://run"], "lives in this process only"),
    ],
)
def test_b10_a_url_run_dir_is_never_a_local_folder(args, needle, tmp_path):
    """A run dir URL is object storage (tests/test_multinode.py runs the whole pipeline
    into s3://): one it cannot reach is refused, exit 2, before any work, and nothing
    local appears (it once became a folder named "s3:")."""
    r = run_cli("pipeline", *args, *GENERATED, cwd=tmp_path, env=_env_without_aws())
    url = args[1].removeprefix("run_dir=")
    fails(r, 2, url, needle)
    assert list(tmp_path.iterdir()) == []  # no "s3:" folder, nothing at all


def test_refuse_url_keeps_local_paths_and_file_urls():
    assert refuse_url("runs/demo", "--run-dir") == "runs/demo"
    assert refuse_url("/abs/run", "--run-dir") == "/abs/run"
    assert refuse_url("file:///abs/run", "--run-dir") == "/abs/run"
    assert refuse_url("C:\\runs", "--run-dir") == "C:\\runs"  # a drive letter, not a scheme
    with pytest.raises(ValueError, match="--report-dir s3://b/r: URLs"):
        refuse_url("s3://b/r", "--report-dir")
