"""Only transient failures are retried (connection errors, timeouts, throttling, HTTP 5xx),
with exponential backoff and a bound; anything else is raised at once with its own
message. And: two files of different vector widths fail with one error naming both, for
every consumer."""

from __future__ import annotations

import errno

import numpy as np
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from clam_dist.data import source as source_module
from clam_dist.data.errors import DataError
from clam_dist.data.source import VectorSource, _retrying, is_transient
from clam_dist.data.writer import write_vectors


@pytest.fixture
def sleeps(monkeypatch):
    """The backoff delays asked for, instead of sleeping them."""
    delays: list[float] = []
    monkeypatch.setattr(source_module.time, "sleep", delays.append)
    return delays


def _flaky(failures: list[BaseException], result="ok"):
    calls = []

    def fn():
        calls.append(1)
        if len(calls) <= len(failures):
            raise failures[len(calls) - 1]
        return result

    return fn, calls


def _client_error(code: str, status: int) -> ClientError:
    response = {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {}}
    response["ResponseMetadata"]["HTTPStatusCode"] = status
    return ClientError(response, "GetObject")


def _wrapped(cause: BaseException) -> OSError:
    """What s3fs raises for a service error it has no mapping for."""
    err = OSError(errno.EIO, str(cause))
    err.__cause__ = cause
    return err


def test_transient_errors_are_retried_with_backoff_then_succeed(sleeps):
    import aiohttp

    failures = [
        ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed"),
        TimeoutError("read timed out"),
        EndpointConnectionError(endpoint_url="http://127.0.0.1:9"),
        aiohttp.ServerDisconnectedError(),
        _wrapped(_client_error("SlowDown", 503)),
    ]
    fn, calls = _flaky(failures)
    assert _retrying("reading x", fn, retries=6, delay_s=0.5, max_delay_s=100) == "ok"
    assert len(calls) == 6
    assert sleeps == [0.5, 1.0, 2.0, 4.0, 8.0]


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("bad batch size"),
        TypeError("unsupported operand"),
        KeyError("x"),
        IsADirectoryError("is a folder"),
        _client_error("NoSuchBucket", 404),
        _wrapped(_client_error("InvalidRange", 416)),
        OSError(errno.EINVAL, "invalid argument"),
    ],
)
def test_non_transient_errors_are_raised_at_once_unchanged(sleeps, exc):
    fn, calls = _flaky([exc] * 5)
    with pytest.raises(type(exc)) as err:
        _retrying("reading x", fn, retries=5)
    assert err.value is exc and len(calls) == 1 and sleeps == []
    assert "endpoint unreachable" not in str(err.value)


def test_missing_and_denied_are_data_errors_at_once(sleeps):
    fn, calls = _flaky([FileNotFoundError("s3://b/k")] * 3)
    with pytest.raises(DataError, match=r"^listing s3://b: not found \(s3://b/k\)$"):
        _retrying("listing s3://b", fn)
    assert len(calls) == 1
    fn, calls = _flaky([PermissionError("InvalidAccessKeyId")] * 3)
    with pytest.raises(DataError, match=r"listing s3://b: access denied \(InvalidAccessKeyId\)"):
        _retrying("listing s3://b", fn)
    assert len(calls) == 1 and sleeps == []


def test_retries_are_bounded_and_keep_the_original_message(sleeps):
    fn, calls = _flaky([TimeoutError("socket read timed out after 20 s")] * 10)
    with pytest.raises(
        DataError,
        match=r"^opening p.parquet: failed after 4 attempts \(endpoint unreachable\?\): "
        r"TimeoutError: socket read timed out after 20 s$",
    ) as err:
        _retrying("opening p.parquet", fn, retries=4, delay_s=1.0, max_delay_s=1.5)
    assert len(calls) == 4 and sleeps == [1.0, 1.5, 1.5]  # capped backoff, no sleep at the end
    assert isinstance(err.value.__cause__, TimeoutError)


def test_classification():
    assert is_transient(_client_error("InternalError", 500))
    assert is_transient(_client_error("Whatever", 502))
    assert is_transient(_client_error("Throttling", 400))
    assert is_transient(OSError(errno.ECONNRESET, "reset by peer"))
    assert not is_transient(_client_error("AccessDenied", 403))
    assert not is_transient(_wrapped(FileNotFoundError("gone")))
    assert not is_transient(RuntimeError("bug"))
    # an error raised WHILE handling a network error is not itself a network error
    try:
        try:
            raise ConnectionResetError("reset")
        except ConnectionResetError:
            raise ValueError("bug in the handler")  # noqa: B904
    except ValueError as exc:
        assert not is_transient(exc)


def test_a_bug_in_a_listing_is_not_blamed_on_the_endpoint(tmp_path, monkeypatch, sleeps):
    write_vectors(str(tmp_path / "d"), np.zeros((4, 2)))
    calls = []

    def broken_find(self, path, **kw):
        calls.append(path)
        raise AttributeError("'NoneType' object has no attribute 'rstrip'")

    monkeypatch.setattr(type(VectorSource(str(tmp_path / "d")).filesystem()), "find", broken_find)
    with pytest.raises(AttributeError, match="no attribute 'rstrip'"):
        VectorSource(str(tmp_path / "d")).files()
    assert len(calls) == 1 and sleeps == []


@pytest.fixture
def mixed_widths(tmp_path):
    write_vectors(str(tmp_path / "m"), np.zeros((30, 4)), prefix="a")
    write_vectors(str(tmp_path / "m"), np.ones((20, 5)), prefix="b")
    return VectorSource(str(tmp_path / "m"))


WIDTHS = r"b-00000.parquet: vectors have width 5, but .*a-00000.parquet has 4"


def test_mixed_widths_fail_once_naming_both_files_for_every_consumer(mixed_widths, sleeps):
    from clam_dist.data.stats import feature_stats, sample_rows
    from clam_dist.data.stream import iter_batches
    from clam_dist.train.step import LaneStream

    with pytest.raises(DataError, match=WIDTHS):
        mixed_widths.dim()
    with pytest.raises(DataError, match=WIDTHS):
        list(iter_batches(mixed_widths))
    with pytest.raises(DataError, match=WIDTHS):
        LaneStream(mixed_widths, 0, 2, 0, 0)
    with pytest.raises(DataError, match=WIDTHS):
        feature_stats(mixed_widths, scheduler="sync")
    with pytest.raises(DataError, match=WIDTHS):
        sample_rows(mixed_widths, 5, scheduler="sync")


def test_mixed_widths_in_feature_columns_name_both_files(tmp_path):
    write_vectors(str(tmp_path / "c"), np.zeros((3, 2)), prefix="a", vector_layout="columns")
    write_vectors(str(tmp_path / "c"), np.zeros((3, 3)), prefix="b", vector_layout="columns")
    with pytest.raises(DataError, match=r"b-00000.parquet: vectors have width 3, but .*a-00000"):
        VectorSource(str(tmp_path / "c"), feature_columns="f*").dim()
