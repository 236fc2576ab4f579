"""What a person sees from `clam-dist pipeline`, run as a real subprocess through
tests/cli_harness.py: a progress view per stage and a summary table on stdout, in a pipe
(stdout and stderr two pipes) and in a terminal (stdout and stderr one pseudo-terminal);
nothing of Ray's on either stream; the JSON event records in <run_dir>/logs/events.jsonl,
never on stdout, and on stderr only with --log-format json. The routing of those records
is also unit-tested in-process (``job_sinks``). Both real runs start their own local Ray,
as a new user's `clam-dist pipeline` does."""

from __future__ import annotations

import io
import json
import time

import pytest
from cli_harness import run_cli

from clam_dist.logs import job_sinks, log_event, set_event_file
from clam_dist.progress import Console

SMALL = [
    "--set", "data.n=3000", "--set", "data.d=4", "--set", "data.k=3",
    "--set", "data.rows_per_file=1000", "--set", "model.n_clusters=3",
    "--set", "optim.epochs=1", "--set", "train.num_workers=1", "--set", "num_cpus=2",
    "--set", "eval_sample=500", "--set", "assign.concurrency=1",
]  # fmt: skip
EVENTS = ["job_start", "pipeline_start", "pipeline_done", "job_done"]


def _pipeline(run_dir, *more: str) -> list:
    return ["pipeline", "--run-dir", run_dir, *SMALL, *more]


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
    return run_cli(*_pipeline(run_dir, "--progress-every", "2"), timeout=500), run_dir


@pytest.fixture(scope="module")
def terminal(tmp_path_factory):
    """stdout and stderr one pseudo-terminal; in-memory trainer to keep it short."""
    run_dir = tmp_path_factory.mktemp("console_tty") / "run"
    r = run_cli(*_pipeline(run_dir, "--set", "train.trainer=sample"), tty=True, timeout=500)
    return r, run_dir


@pytest.mark.ray
@pytest.mark.slow
def test_piped_run_prints_plain_progress_and_a_summary_table_only(piped):
    r, run_dir = piped
    assert r.code == 0, r.describe()
    r.no_ray_lines()
    out = r.out
    lines = out.splitlines()
    # no JSON record and no Ray INFO line reaches stdout (or stderr without --log-format)
    assert not [line for line in lines if line.lstrip().startswith("{")]
    assert not [line for line in lines if " INFO " in line or "Started a local Ray" in line]
    assert not [line for line in r.err.splitlines() if line.startswith('{"ts"')]
    # Ray's core-worker ERROR about actor constructor arguments is gone for a real reason
    # (assignment tasks load the model from its URL), on either stream
    assert "constructor arguments" not in out + r.err
    assert not [line for line in (out + r.err).splitlines() if " E " in line[:40]]
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
    events = [rec["event"] for rec in records]
    assert events[0] == "job_start" and events[-1] == "job_done" and set(EVENTS) <= set(events)
    assert [rec["stage"] for rec in records if rec["event"] == "stage_done"] == [
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
    r, run_dir = terminal
    assert r.code == 0, r.describe()
    r.no_ray_lines()
    out, err = r.out, r.err  # one pty: out holds stderr too, err is empty
    assert "\r" in out  # bars redrawn in place
    for stage in ("data", "train", "assign", "evaluate"):
        assert stage in out
    assert "rows/s" in out and "100%" in out
    assert '{"ts"' not in out and '{"ts"' not in err
    assert "succeeded (exit 0)" in out and "status: succeeded" in out
    assert (run_dir / "logs" / "events.jsonl").exists()
