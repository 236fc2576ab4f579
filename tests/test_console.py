"""What a person sees from `clam-dist pipeline`: a progress view per stage and a summary
table on stdout, in a terminal (pseudo-terminal) and in a pipe; the JSON event records in
<run_dir>/logs/events.jsonl, never on stdout, and on stderr only with --log-format json."""

from __future__ import annotations

import io
import json
import os
import pty
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from clam_dist.logs import job_sinks, log_event, set_event_file
from clam_dist.progress import Console

REPO = Path(__file__).resolve().parents[1]
SMALL = [
    "--set", "data.n=3000", "--set", "data.d=4", "--set", "data.k=3",
    "--set", "data.rows_per_file=1000", "--set", "model.n_clusters=3",
    "--set", "optim.epochs=1", "--set", "train.num_workers=1", "--set", "num_cpus=2",
    "--set", "eval_sample=500", "--set", "assign.concurrency=1",
]  # fmt: skip
EVENTS = ["job_start", "pipeline_start", "pipeline_done", "job_done"]


def _env() -> dict:
    # This checkout's clam_dist, not an installed one, also in Ray's worker processes.
    return dict(os.environ, PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0")


def _argv(run_dir: Path, *more: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "clam_dist.cli",
        "pipeline",
        "--run-dir",
        str(run_dir),
        *SMALL,
        *more,
    ]


# -- no Ray: the view and the routing on their own ------------------------------------


def test_plain_view_prints_start_periodic_and_end_lines():
    out = io.StringIO()
    console = Console(out=out, every_s=0.5, tty=False)
    console.stage_start("train", None, unit="steps")
    console.update(done=10, total=40, epoch=0, loss=0.5, **{"rows/s": 1234.0})
    time.sleep(1.2)
    console.stage_end("train", 1.2, done=40)
    lines = out.getvalue().splitlines()
    assert lines[0] == "[train] started"
    periodic = [line for line in lines[1:-1] if "steps 10/40 (25%)" in line]
    assert periodic and "loss 0.5000" in periodic[0] and "1,234 rows/s" in periodic[0]
    assert "ETA" in periodic[0]
    assert lines[-1].startswith("[train] done in 1.2s 40 steps")


def test_cli_routing_holds_records_until_the_event_file_and_keeps_stderr_clean(tmp_path, capsys):
    path = tmp_path / "logs" / "events.jsonl"
    with job_sinks(log_format="text"):
        log_event("job_start")
        set_event_file(path)  # what run_pipeline does once the run dir is known
        log_event("stage_done", stage="data")
    log_event("outside")  # a library caller: stderr, as before
    err = capsys.readouterr().err
    assert [json.loads(line)["event"] for line in err.splitlines()] == ["outside"]
    events = [json.loads(line)["event"] for line in path.read_text().splitlines()]
    assert events == ["job_start", "stage_done"]
    with job_sinks(log_format="json", log_file=str(tmp_path / "mine.jsonl")):
        log_event("job_start")
        set_event_file(path)  # --log-file gets every record, the command's file too
        log_event("job_done")
    assert '"job_done"' in capsys.readouterr().err
    mine = [
        json.loads(line)["event"] for line in (tmp_path / "mine.jsonl").read_text().splitlines()
    ]
    assert mine == ["job_start", "job_done"]
    assert path.read_text().count("job_done") == 1


# -- the real command, once per mode ----------------------------------------------------


@pytest.fixture(scope="module")
def piped(tmp_path_factory):
    """Ray Train trainer, stdout and stderr pipes, a progress line every 2 s."""
    run_dir = tmp_path_factory.mktemp("console") / "run"
    proc = subprocess.run(
        _argv(run_dir, "--progress-every", "2"),
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=500,
    )  # fmt: skip
    return proc, run_dir


@pytest.fixture(scope="module")
def terminal(tmp_path_factory):
    """stdout a pseudo-terminal (stderr a pipe); in-memory trainer to keep it short."""
    run_dir = tmp_path_factory.mktemp("console_tty") / "run"
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        _argv(run_dir, "--set", "train.trainer=sample"),
        cwd=REPO, env=_env(), stdout=slave, stderr=subprocess.PIPE,
    )  # fmt: skip
    os.close(slave)  # the child holds it; reads end with EIO once it exits
    chunks: list[bytes] = []

    def drain() -> None:  # read while it runs: a full pty would block the child
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        err = proc.communicate(timeout=500)[1].decode()
    finally:
        reader.join(timeout=10)
        os.close(master)
    return proc.returncode, b"".join(chunks).decode(errors="replace"), err, run_dir


@pytest.mark.ray
@pytest.mark.slow
def test_piped_run_prints_plain_progress_and_a_summary_table_only(piped):
    proc, run_dir = piped
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    lines = out.splitlines()
    # no JSON record and no Ray INFO line reaches stdout (or stderr without --log-format)
    assert not [line for line in lines if line.lstrip().startswith("{")]
    assert not [line for line in lines if " INFO " in line or "Started a local Ray" in line]
    assert not [line for line in proc.stderr.splitlines() if line.startswith('{"ts"')]
    # Ray's core-worker ERROR about actor constructor arguments is gone for a real reason
    # (assignment tasks load the model from its URL), on either stream
    assert "constructor arguments" not in out + proc.stderr
    assert not [line for line in (out + proc.stderr).splitlines() if " E " in line[:40]]
    for stage in ("data", "train", "assign", "evaluate"):
        assert f"[{stage}] started" in out and f"[{stage}] done in " in out, out
    assert out.count("Ray logs: ") == 1
    assert "[data] done in" in out and "3,000 rows" in out
    train = [line for line in lines if line.startswith("[train] ") and "steps" in line]
    assert train and "loss" in train[-1]  # Ray Train's reports reached the driver
    # the summary table
    assert "clam-dist pipeline           succeeded (exit 0)" in out
    assert "silhouette" in out and "(sample of 500)" in out and "nmi" in out
    assert "stage evaluate" in out and f"summary: {run_dir}/summary.json  status: succeeded" in out
    assert f"events:      {run_dir}/logs/events.jsonl" in out

    records = [
        json.loads(line) for line in (run_dir / "logs" / "events.jsonl").read_text().splitlines()
    ]
    events = [r["event"] for r in records]
    assert events[0] == "job_start" and events[-1] == "job_done" and set(EVENTS) <= set(events)
    assert [r["stage"] for r in records if r["event"] == "stage_done"] == [
        "data", "train", "assign", "evaluate",
    ]  # fmt: skip
    summary = json.loads((run_dir / "summary.json").read_text())
    ov = summary["overview"]
    assert summary["status"] == "succeeded" and ov["exit_code"] == 0
    assert ov["rows"] == 3000 and ov["k"] == 3 and ov["silhouette_sample_size"] == 500
    assert set(ov["stage_seconds"]) == {"data", "train", "assign", "evaluate"}
    assert ov["paths"]["events"] == str(run_dir / "logs" / "events.jsonl")
    assert ov["drift_share"] is not None


@pytest.mark.ray
@pytest.mark.slow
def test_terminal_run_draws_bars_and_the_summary(terminal):
    code, out, err, run_dir = terminal
    assert code == 0, out[-3000:] + err[-3000:]
    assert "\r" in out  # bars redrawn in place
    for stage in ("data", "train", "assign", "evaluate"):
        assert stage in out
    assert "rows/s" in out and "100%" in out
    assert '{"ts"' not in out and '{"ts"' not in err
    assert "succeeded (exit 0)" in out and "status: succeeded" in out
    assert (run_dir / "logs" / "events.jsonl").exists()
