"""Structured logs for the jobs: one JSON object per line on stderr.

    {"ts": 1767225600.123, "level": "info", "job": "assign", "event": "assign_done", ...}

stderr, so stdout keeps what a job prints for people and for pipes (assign's summary
JSON, the pipeline's metric table); `ray job logs` and a log collector see both. Every
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
import re
import sys
import time
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


def log_event(event: str, *, level: str = "info", stream: TextIO | None = None, **fields) -> None:
    """Write one JSON line: ts, level, job, event, then ``fields`` (redacted)."""
    record = {"ts": round(time.time(), 3), "level": level, "job": _job, "event": event}
    record.update(redact({k: v for k, v in fields.items() if k not in record}))
    line = json.dumps(record, default=str, allow_nan=False)
    out = stream or sys.stderr
    out.write(line + "\n")
    out.flush()
