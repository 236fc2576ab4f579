"""Errors as a person at a terminal should see them: one line, the right exit code.

Exit codes of every command: 0 success; 1 the job ran and failed (a worker error, bad
rows found while reading, a failed commit); 2 bad input or config found BEFORE any work
(a config field, a missing column, a model that does not fit the data, an output prefix
that is not ours). Errors raised inside Ray workers arrive wrapped (RayTaskError,
UserCodeException, ...): :func:`root_cause` digs out the project's own exception, whose
message names the file, column, rows or shape.

Storage that cannot be used at all is a setup error, exit 2, like a missing file, in
every command (``inspect`` included):

- no credentials anywhere in the AWS chain for an ``s3://`` URL (data/source.py refuses
  it when the filesystem is opened, naming the URL and how to give them; a botocore
  ``NoCredentialsError`` that still gets through is treated the same);
- an endpoint that cannot be CONNECTED to (connection refused, unknown host, connect
  timeout, a proxy that refuses), after the retries data/source.py and botocore make. What
  is left then is a wrong endpoint URL or port, a server that is not running or no route
  to it: running the same command again unchanged fails the same way.

A connection that was made and then lost or timed out in the middle of a request (reset,
read timeout, HTTP 5xx) may be transient: exit 1, as is anything a command reports as a
:class:`JobError` (the job had started).
"""

from __future__ import annotations

import re

from clam_dist.logs import redact


class InputError(ValueError):
    """Bad input found by a check before any work (exit code 2)."""


class JobError(RuntimeError):
    """The job started and failed; ``details`` keeps the full (remote) traceback text,
    shown with ``-v``."""

    def __init__(self, message: str, details: str | None = None):
        super().__init__(message)
        self.details = details


def _input_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "fix your input or config" when raised before work starts.
    Imported lazily: the CLI must not pay for them on --help."""
    from clam_dist.artifacts import ArtifactError
    from clam_dist.assign.commit import (
        ForeignOutputError,
        IncompleteOutputError,
        OutputExistsError,
    )
    from clam_dist.config import ConfigError
    from clam_dist.data.errors import DataError

    return (
        InputError,
        ConfigError,
        ArtifactError,
        DataError,
        ForeignOutputError,
        OutputExistsError,
        IncompleteOutputError,
        PermissionError,
        FileNotFoundError,
    )


def _ours(exc: BaseException) -> bool:
    return type(exc).__module__.startswith("clam_dist")


def root_cause(exc: BaseException) -> BaseException:
    """The innermost exception of clam-dist's own in a chain of wrappers (Ray's
    ``RayTaskError.cause``, ``__cause__``, ``__context__``); ``exc`` when there is none."""
    seen: set[int] = set()
    best, node = exc, exc
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        if _ours(node) and not isinstance(node, JobError):
            best = node
        node = _wrapped(node)
    return best


def _wrapped(node: BaseException) -> BaseException | None:
    """The exception ``node`` wraps: Ray core's ``cause``, Ray Train's per-rank
    ``worker_failures`` (the lowest rank) or ``controller_failure``, else Python's chain."""
    for attr in ("cause", "controller_failure"):
        inner = getattr(node, attr, None)
        if isinstance(inner, BaseException):
            return inner
    failures = getattr(node, "worker_failures", None)
    if isinstance(failures, dict) and failures:
        inner = failures[min(failures)]
        if isinstance(inner, BaseException):
            return inner
    return node.__cause__ or node.__context__


# "clam_dist.data.errors.DataError: <message>" as a remote traceback prints it.
_REMOTE_OURS = re.compile(r"^clam_dist(?:\.\w+)*\.(?P<type>\w+): (?P<message>.+)$", re.M)
# Any "SomeError: message" line of a remote traceback (the last one is the original).
_REMOTE_ANY = re.compile(r"^(?:\w+\.)*(?P<type>\w*(?:Error|Exception)): (?P<message>.+)$", re.M)


def summary_line(exc: BaseException) -> str:
    """``<Type>: <message>`` of the error that matters: our own exception in the chain,
    or, when Ray delivered only its text (a class UDF's error can arrive as a
    ``RayTaskError(UserCodeException)`` without the original object), the last line of
    the remote traceback that names one of ours."""
    root = root_cause(exc)
    if _ours(root):
        return f"{type(root).__name__}: {first_line(root)}"
    text = str(exc)
    found = _REMOTE_OURS.findall(text) or [
        hit for hit in _REMOTE_ANY.findall(_strip_ansi(text)) if hit[0] not in _RAY_WRAPPERS
    ]
    if found:
        kind, message = found[-1]
        return f"{kind}: {redact(message.strip())}"
    return f"{type(root).__name__}: {first_line(root)}"


# Ray's wrappers, never the error that matters.
_RAY_WRAPPERS = {"RayTaskError", "RayActorError", "UserCodeException", "TaskCancelledError"}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def first_line(exc: BaseException) -> str:
    """The message's first line, credentials masked (a Ray error's text goes on with the
    remote traceback; ours fit one line)."""
    text = _strip_ansi(str(exc)).strip()
    return redact(text.splitlines()[0] if text else type(exc).__name__)


# Storage errors that mean "fix the setup" (see the module doc), by (module, class name)
# so that neither botocore nor aiohttp has to be imported to classify an error.
_NO_CREDENTIALS = frozenset(
    {
        ("botocore.exceptions", "NoCredentialsError"),
        ("botocore.exceptions", "PartialCredentialsError"),
    }
)
_CANNOT_CONNECT = frozenset(
    {
        ("botocore.exceptions", "EndpointConnectionError"),
        ("botocore.exceptions", "ConnectTimeoutError"),
        ("botocore.exceptions", "ProxyConnectionError"),
        ("aiohttp.client_exceptions", "ClientConnectorError"),
        ("builtins", "ConnectionRefusedError"),
        ("socket", "gaierror"),
    }
)


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception it wraps (see :func:`_wrapped`), outermost first."""
    seen: set[int] = set()
    found: list[BaseException] = []
    node: BaseException | None = exc
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        found.append(node)
        node = _wrapped(node)
    return found


def _is_one_of(exc: BaseException, kinds: frozenset[tuple[str, str]]) -> bool:
    return any((k.__module__, k.__name__) in kinds for k in type(exc).__mro__)


def storage_setup_error(exc: BaseException) -> tuple[str, BaseException] | None:
    """(``"credentials"`` or ``"unreachable"``, the error that says so) when ``exc`` or
    what it wraps says the storage cannot be used at all (see the module doc), else None."""
    for node in _chain(exc):
        if _is_one_of(node, _NO_CREDENTIALS):
            return "credentials", node
        if _is_one_of(node, _CANNOT_CONNECT):
            return "unreachable", node
    return None


def exit_code(exc: BaseException) -> int:
    if isinstance(exc, KeyboardInterrupt):
        return 130
    if isinstance(exc, JobError):
        return 1
    if isinstance(root_cause(exc), _input_error_types()) or storage_setup_error(exc):
        return 2
    return 1


def describe(command: str, exc: BaseException) -> str:
    """One line for stderr: ``config error: <field>: <problem>`` or
    ``<command> failed: <Type>: <message>``."""
    from clam_dist.config import ConfigError

    if isinstance(exc, JobError):  # its message already names the root cause
        return f"{command} failed: {first_line(exc)}"
    root = root_cause(exc)
    if isinstance(root, ConfigError):
        return f"config error: {first_line(root)}"
    storage = None if _ours(root) else storage_setup_error(exc)
    if storage is not None:  # the storage's own error: it names the endpoint
        kind, node = storage
        return (
            f"{command} failed: {type(node).__name__}: {first_line(node)}; {_STORAGE_HINTS[kind]}"
        )
    return f"{command} failed: {type(root).__name__}: {first_line(root)}"


# What to do about a storage setup error whose message does not say (a botocore or aiohttp
# error that reached us without a URL; ours already say it).
_STORAGE_HINTS = {
    "credentials": (
        "give credentials through the environment (AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE), ~/.aws/credentials, or storage_options "
        "key and secret (anon: true for a public bucket)"
    ),
    "unreachable": (
        "check the endpoint URL (endpoint_url, --endpoint-url) and that the server is "
        "running and reachable from here"
    ),
}
