"""Errors as a person at a terminal should see them: one line, the right exit code.

Exit codes of every command: 0 success; 1 the job ran and failed (a worker error, bad
rows found while reading, a failed commit); 2 bad input or config found BEFORE any work
(a config field, a missing column, a model that does not fit the data, an output prefix
that is not ours). Errors raised inside Ray workers arrive wrapped (RayTaskError,
UserCodeException, ...): :func:`root_cause` digs out the project's own exception, whose
message names the file, column, rows or shape.
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


def exit_code(exc: BaseException) -> int:
    if isinstance(exc, KeyboardInterrupt):
        return 130
    if isinstance(exc, JobError):
        return 1
    return 2 if isinstance(root_cause(exc), _input_error_types()) else 1


def describe(command: str, exc: BaseException) -> str:
    """One line for stderr: ``config error: <field>: <problem>`` or
    ``<command> failed: <Type>: <message>``."""
    from clam_dist.config import ConfigError

    if isinstance(exc, JobError):  # its message already names the root cause
        return f"{command} failed: {first_line(exc)}"
    root = root_cause(exc)
    if isinstance(root, ConfigError):
        return f"config error: {first_line(root)}"
    return f"{command} failed: {type(root).__name__}: {first_line(root)}"
