"""One-line error summaries for errors that arrive from Ray workers as text only."""

from __future__ import annotations

from clam_dist.data.errors import DataError
from clam_dist.errors import InputError, JobError, exit_code, root_cause, summary_line

REMOTE = (
    "\x1b[36mray::MapWorker(MapBatches(_read_files)->MapBatches(ClusterAssigner)).submit()"
    "\x1b[39m (pid=1, ip=192.0.2.2)\n"
    "Traceback (most recent call last):\n"
    '  File "x.py", line 3, in f\n'
    "    raise ValueError(...)\n"
    "{inner}\n"
    "\n"
    "The above exception was the direct cause of the following exception:\n"
    "\n"
    "ray.exceptions.UserCodeException: \x1b[36mray::MapWorker\x1b[39m failed\n"
)


class RemoteText(Exception):
    """Stands in for a RayTaskError whose original exception object did not survive."""


def test_a_remote_foreign_error_is_summarised_by_its_own_line():
    exc = RemoteText(REMOTE.format(inner="ValueError: input has shape (10000,), expected (n, 6)"))
    assert summary_line(exc) == "ValueError: input has shape (10000,), expected (n, 6)"


def test_a_remote_error_of_ours_wins_over_later_wrappers():
    inner = "clam_dist.data.errors.DataError: a.parquet: column 'x' has width 4, b.parquet 6"
    line = summary_line(RemoteText(REMOTE.format(inner=inner)))
    assert line == "DataError: a.parquet: column 'x' has width 4, b.parquet 6"


def test_ray_wrappers_alone_fall_back_to_the_first_line_without_colour_codes():
    exc = RemoteText("\x1b[36mray::Task\x1b[39m died\nray.exceptions.RayTaskError: boom")
    assert summary_line(exc) == "RemoteText: ray::Task died"


def test_the_root_cause_of_a_chain_is_ours_and_decides_the_exit_code():
    try:
        try:
            raise DataError("f.parquet: 3 rows with NaN")
        except DataError as inner:
            raise RuntimeError("wrapper") from inner
    except RuntimeError as outer:
        assert isinstance(root_cause(outer), DataError)
        assert exit_code(outer) == 2
        assert summary_line(outer) == "DataError: f.parquet: 3 rows with NaN"
    assert exit_code(JobError("failed")) == 1 and exit_code(InputError("bad")) == 2
    assert exit_code(RuntimeError("x")) == 1


def _raised_from(inner: BaseException) -> RuntimeError:
    """``inner`` wrapped the way a library re-raises it (``raise ... from``)."""
    try:
        try:
            raise inner
        except BaseException as exc:
            raise RuntimeError("while opening s3://b/x") from exc
    except RuntimeError as outer:
        return outer


def test_storage_that_cannot_be_used_at_all_is_exit_2_with_what_to_do():
    """The rule of clam_dist/errors.py: no credentials, or an endpoint that cannot be
    connected to, is a setup error (2), also when it arrives wrapped; a connection lost
    in the middle of a request may be transient (1)."""
    from botocore.exceptions import (
        ConnectionClosedError,
        EndpointConnectionError,
        NoCredentialsError,
        ReadTimeoutError,
    )

    from clam_dist.errors import describe

    refused = EndpointConnectionError(endpoint_url="http://127.0.0.1:9/b/x")
    for exc in (NoCredentialsError(), refused, ConnectionRefusedError(111, "refused")):
        assert exit_code(exc) == 2, exc
        assert exit_code(_raised_from(exc)) == 2, exc
    line = describe("make-dataset", _raised_from(NoCredentialsError()))
    assert line.startswith("make-dataset failed: NoCredentialsError"), line
    assert "AWS_ACCESS_KEY_ID" in line and "storage_options key and secret" in line
    line = describe("assign", refused)
    assert "127.0.0.1:9" in line and "check the endpoint URL" in line, line
    lost = (
        ReadTimeoutError(endpoint_url="http://127.0.0.1:9/b/x"),
        ConnectionClosedError(endpoint_url="http://127.0.0.1:9/b/x"),
    )
    for exc in lost:
        assert exit_code(exc) == 1, exc
    # a job that had started stays a job failure (1), whatever stopped it
    assert exit_code(_job_error_from(refused)) == 1


def _job_error_from(inner: BaseException) -> JobError:
    try:
        try:
            raise inner
        except BaseException as exc:
            raise JobError("assign failed after 3 batches") from exc
    except JobError as outer:
        return outer
