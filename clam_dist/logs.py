"""Structured logs for the jobs: one JSON object per line.

    {"ts": 1767225600.123, "level": "info", "job": "assign", "event": "assign_done", ...}

Where the lines go is chosen by the CLI (``job_sinks``): to a file once a command knows
where its outputs live (the pipeline: ``<run_dir>/logs/events.jsonl``; any command:
``--log-file PATH``), and to stderr only with ``--log-format json``, so a person reads a
progress view and a summary, not records. Outside the CLI (a library caller, a test) the
lines go to stderr as before. stdout keeps what a job prints for people and pipes. Every
field is passed through ``redact`` first: values under secret-looking keys (storage
options' key/secret/token, passwords, credentials) become "***" at any depth, and
``scheme://user:password@`` in strings loses its user part (as does ``'secret': '...'``
in a dict rendered into a message), so a config dict or
storage_options may be logged as they are. Non-finite floats are written as null (NaN is
not JSON) and numpy scalars as numbers, so every line parses with any JSON reader.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

# Exact key names (lower case) whose values are credentials: s3fs' key/secret/token,
# botocore's and pyarrow's spellings.
SECRET_KEYS = (
    "key",
    "secret",
    "token",
    "password",
    "aws_secret_access_key",
    "aws_session_token",
    "secret_key",
    "session_token",
    "access_key",
)
# Key fragments that mark a credential whatever the backend calls it
# (gcsfs ``token``/``credentials``, adlfs ``account_key``/``sas_token``/``client_secret``).
_SECRET_FRAGMENTS = (
    "secret",
    "password",
    "passwd",
    "token",
    "credential",
    "account_key",
    "private_key",
)
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")
# A dict rendered into a message (an exception's text): 'secret': 'value' -> 'secret': '***'
_QUOTED_KEY = re.compile(r"""(?P<k>(['"])(?P<name>\w+)\2\s*:\s*)(?P<q>['"])[^'"]*(?P=q)""")
MASK = "***"

_job: str | None = None


def is_secret_key(name: object) -> bool:
    if not isinstance(name, str):
        return False
    low = name.lower()
    return low in SECRET_KEYS or any(part in low for part in _SECRET_FRAGMENTS)


def redact(obj: Any) -> Any:
    """A copy of ``obj`` that is safe to log or write to a summary (see the module doc)."""
    if isinstance(obj, dict):
        return {k: (MASK if is_secret_key(k) else redact(v)) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [redact(v) for v in obj]
    if isinstance(obj, str):
        obj = _URL_USERINFO.sub(lambda m: f"{m.group('scheme')}{MASK}@", obj)
        return _QUOTED_KEY.sub(
            lambda m: (
                f"{m.group('k')}{m.group('q')}{MASK}{m.group('q')}"
                if is_secret_key(m.group("name"))
                else m.group(0)
            ),
            obj,
        )
    if hasattr(obj, "dtype") and hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()  # numpy scalar
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


_verbose = False


def set_verbose(verbose: bool) -> None:
    """-v: tracebacks on errors and Ray's own INFO logs on the driver."""
    global _verbose
    _verbose = verbose


def verbose() -> bool:
    return _verbose


def quiet_ray() -> None:
    """Ray's, Ray Data's and Ray Train's driver loggers at WARNING (their INFO progress
    blocks would drown our one line per stage); -v keeps them. Their full logs stay in
    Ray's session folder. Call after ``import ray.data``: importing it configures them."""
    if _verbose:
        return
    import logging

    import ray.data  # noqa: F401 - its import configures the loggers set below

    for name in ("ray", "ray.data", "ray.train", "ray.tune"):
        logger = logging.getLogger(name)
        if logger.level < logging.WARNING:  # only ever quieter, never louder
            logger.setLevel(logging.WARNING)


@contextlib.contextmanager
def ray_data_errors_reported_by_us():
    """While we run a Ray Data job whose failure we re-raise as one line, Ray Data's own
    ERROR record of it (the whole remote traceback) is held back; -v shows it."""
    import logging

    logger = logging.getLogger("ray.data")
    level = logger.level
    if not _verbose:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def set_job(name: str | None) -> None:
    """Name the job every later record carries (the CLI sets the command's name)."""
    global _job
    _job = name


class _Sinks:
    """Where records go. ``buffer`` holds the records written before a command knew its
    event file (job_start, config checks), so the file still starts with job_start."""

    def __init__(self, stderr: bool = True, managed: bool = False):
        self.stderr = stderr
        self.managed = managed  # the CLI routes (and ends the routing after job_done)
        self.user_file: str | None = None  # --log-file: every record, beside the command's
        self.file: str | None = None
        self.buffer: list[str] = []


_sinks = _Sinks()


@contextlib.contextmanager
def job_sinks(*, log_format: str = "text", log_file: str | None = None) -> Iterator[None]:
    """The CLI's routing for one command: stderr only for ``log_format == "json"``; the
    command's own file (``set_event_file``), which starts with the records held until it
    was known; ``log_file`` (--log-file) from the first record. Restores the library
    default (stderr) afterwards."""
    global _sinks
    previous = _sinks
    _sinks = _Sinks(stderr=log_format == "json", managed=True)
    if log_file:
        log_file = os.path.abspath(log_file)
        try:
            os.makedirs(os.path.dirname(log_file), exist_ok=True)
            _append(log_file, [])
            _sinks.user_file = log_file
        except OSError as exc:  # the job still runs; its records go where else they would
            print(f"warning: --log-file {log_file}: {exc}", file=sys.stderr)
    try:
        yield
    finally:
        _sinks = previous


def in_job() -> bool:
    """True while the CLI routes records (it then ends the routing, not the command)."""
    return _sinks.managed


def set_event_file(path: str | os.PathLike | None) -> str | None:
    """Append every later record to ``path`` (a local file; its folder is created), after
    the records held so far. Returns the previous path. (--log-file's file gets every
    record as well.)"""
    previous = _sinks.file
    if path is None:
        _sinks.file = None
        return previous
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    _sinks.file = path
    held, _sinks.buffer = _sinks.buffer, []
    if held and _sinks.managed:  # outside the CLI the held records already went to stderr
        _append(path, held)
    return previous


def _append(path: str, lines: list[str]) -> None:
    # Opened per write: a dozen records per job, and no handle outlives a command (a
    # library caller never has to close anything).
    with open(path, "a", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)


def log_event(event: str, *, level: str = "info", stream: TextIO | None = None, **fields) -> None:
    """Write one JSON line (ts, level, job, event, then ``fields``, redacted) to ``stream``
    when given, else where the sinks say."""
    record = {"ts": round(time.time(), 3), "level": level, "job": _job, "event": event}
    record.update(redact({k: v for k, v in fields.items() if k not in record}))
    line = json.dumps(record, default=str, allow_nan=False)
    if stream is not None:
        stream.write(line + "\n")
        stream.flush()
        return
    if _sinks.stderr:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    for path in (_sinks.file, _sinks.user_file):
        if path is not None:
            # a full or vanished log disk must not fail the job it records
            with contextlib.suppress(OSError):
                _append(path, [line])
    if _sinks.file is None and _sinks.managed:
        _sinks.buffer.append(line)
