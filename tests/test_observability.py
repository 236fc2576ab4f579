"""Structured logs and per-stage timings: every job log line is JSON, credentials given in
storage_options never reach a log line or a summary file, and each job's summary JSON
carries seconds per stage."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest

from clam_dist.logs import log_event, redact, set_job

SECRET = "sk-DO-NOT-LOG-7f3a9c"
KEY_ID = "AKIA-DO-NOT-LOG-1234"


def _records(text: str) -> list[dict]:
    """The JSON log records in a captured stream; any line that starts like a record
    must parse (other lines are Ray's or a progress bar's)."""
    lines = [line for line in text.splitlines() if line.startswith("{")]
    return [json.loads(line) for line in lines]


def test_log_lines_are_json_and_never_carry_secrets():
    out = io.StringIO()
    set_job("unit")
    try:
        log_event(
            "read",
            stream=out,
            storage_options={
                "key": KEY_ID,
                "secret": SECRET,
                "client_kwargs": {
                    "endpoint_url": "http://127.0.0.1:9",
                    "aws_secret_access_key": SECRET,
                },
                "account_key": SECRET,  # adlfs
                "credentials": {"private_key": SECRET},  # gcsfs service-account dict
            },
            url=f"https://user:{SECRET}@example.com/data",
            configs=[{"token": SECRET}],
            error=f"cannot open: { ({'key': KEY_ID, 'secret': SECRET, 'anon': 'no'}) }",
            score=float("nan"),
            best=np.float32(0.5),
            rows=np.int64(7),
        )
        log_event("done", stream=out, level="error", seconds=1.5)
    finally:
        set_job(None)
    text = out.getvalue()
    assert SECRET not in text and KEY_ID not in text
    lines = text.splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)  # strict JSON: no NaN
    assert first["event"] == "read" and first["job"] == "unit" and first["level"] == "info"
    assert first["storage_options"]["client_kwargs"] == {
        "endpoint_url": "http://127.0.0.1:9",
        "aws_secret_access_key": "***",
    }
    assert first["storage_options"]["key"] == "***" and first["url"].startswith("https://***@")
    assert first["error"] == "cannot open: {'key': '***', 'secret': '***', 'anon': 'no'}"
    assert first["score"] is None and first["best"] == 0.5 and first["rows"] == 7
    assert second["level"] == "error" and math.isfinite(second["ts"])
    # redact() leaves a safe value alone and never changes its argument
    opts = {"secret": SECRET, "anon": False}
    assert redact(opts) == {"secret": "***", "anon": False} and opts["secret"] == SECRET


@pytest.mark.ray
def test_pipeline_and_evaluate_jobs_log_json_time_stages_and_hide_credentials(
    ray_local, s3_server, tmp_path, capsys
):
    """The pipeline job (data on the local S3 server, credentials in its config) and the
    evaluate job on its outputs: JSON log records from start to end, per-stage timings in
    summary.json / the evaluate summary, and the secret nowhere in logs or files."""
    from clam_dist.cli import main
    from clam_dist.data.writer import write_vectors
    from clam_dist.datasets.synthetic import make_gaussian_mixture

    x, y, _ = make_gaussian_mixture(1500, 4, 3, separation=6.0, seed=1)
    url = s3_server.url("obs/in")
    write_vectors(url, x, labels=y, rows_per_file=500, storage_options=s3_server.storage_options)
    creds = [
        f"data.storage_options.key={KEY_ID}",
        f"data.storage_options.secret={SECRET}",
        f"data.storage_options.client_kwargs.endpoint_url={s3_server.endpoint_url}",
    ]
    run_dir = tmp_path / "run"
    small = [
        f"data.url={url}", "train.trainer=sample", "model.n_clusters=3", "optim.epochs=1",
        "data.init_sample=500", "eval_sample=300", "assign.concurrency=1",
    ]  # fmt: skip
    # --log-format json: the records on stderr too (by default only in logs/events.jsonl)
    argv = ["pipeline", "--run-dir", str(run_dir), "--log-format", "json"]
    for item in small + creds:
        argv += ["--set", item]
    capsys.readouterr()
    assert main(argv) == 0
    captured = capsys.readouterr()
    records = _records(captured.err)
    events = [r["event"] for r in records]
    assert events[0] == "job_start" and events[-1] == "job_done", events
    assert records[-1]["exit_code"] == 0 and records[-1]["job"] == "pipeline"
    assert [r["stage"] for r in records if r["event"] == "stage_done"] == [
        "data",
        "train",
        "assign",
        "evaluate",
    ]
    assert {"pipeline_start", "assign_start", "assign_done", "pipeline_done"} <= set(events)
    start = next(r for r in records if r["event"] == "pipeline_start")
    assert start["config"]["data"]["storage_options"]["secret"] == "***"

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "succeeded"
    assert set(summary["timings_s"]) >= {"data", "train", "assign", "evaluate"}
    assert set(summary["stages"]["assign"]["timings_s"]) >= {
        "checks",
        "assign_write",
        "drift",
        "commit",
    }
    assert set(summary["stages"]["evaluate"]["timings_s"]) == {
        "checks",
        "sample",
        "stream_pass",
        "sample_metrics",
        "report",
    }
    assert all(v >= 0 for v in summary["timings_s"].values())

    # The evaluate job on the same outputs, credentials from --set, summary with timings.
    ev_summary = tmp_path / "evaluate.json"
    ev_argv = [
        "evaluate", "--input", url, "--assignments", str(run_dir / "assignments"),
        "--model", str(run_dir / "model"), "--report-dir", str(tmp_path / "report"),
        "--sample-size", "300", "--endpoint-url", s3_server.endpoint_url,
        "--set", f"storage_options.key={KEY_ID}", "--set", f"storage_options.secret={SECRET}",
        "--summary", str(ev_summary), "--log-format", "json",
    ]  # fmt: skip
    assert main(ev_argv) == 0
    ev_captured = capsys.readouterr()
    ev_records = _records(ev_captured.err)
    assert [r["event"] for r in ev_records] == [
        "job_start",
        "evaluate_start",
        "evaluate_done",
        "job_done",
    ]
    assert all(r["job"] == "evaluate" for r in ev_records)
    ev = json.loads(ev_summary.read_text())
    assert ev["metrics"]["rows"] == 1500
    assert set(ev["timings_s"]) == {"checks", "sample", "stream_pass", "sample_metrics", "report"}

    written = [p.read_text() for p in run_dir.rglob("*.json")] + [ev_summary.read_text()]
    for text in [captured.out, captured.err, ev_captured.out, ev_captured.err, *written]:
        assert SECRET not in text and KEY_ID not in text
