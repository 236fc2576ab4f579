"""Paths as the driver means them: a relative local path is made absolute where the
config is built, because Ray Train workers and Ray Data tasks run in other working
directories (a relative ``--data ./good`` would name a folder that is not there)."""

from __future__ import annotations

import os
import re

from clam_dist.config import ConfigError


def absolute(url: str | None) -> str | None:
    """``url`` unchanged when it is empty, a URL (``s3://``, ``memory://``, ...) or absolute;
    otherwise the absolute local path (``file://`` prefixes kept as given)."""
    if not url or "://" in url or os.path.isabs(url):
        return url
    return os.path.abspath(url)


# "scheme://" at the start of a value: s3://, gs://, memory://, hdfs://, ... (a Windows
# drive letter "C:\" has no "//" and a one-letter scheme is not taken for one).
_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]+)://")


def scheme_of(value: str) -> str | None:
    """The URL scheme of ``value`` in lower case ("s3", "file", ...), None for a path."""
    found = _SCHEME.match(value)
    return found["scheme"].lower() if found else None


def is_local_url(url: str) -> bool:
    """Whether ``url`` names this machine's disk: a plain path (no scheme) or ``file://``.
    Anything else (``s3://``, ``gs://``, ``memory://``, ...) goes through fsspec."""
    return scheme_of(url) in (None, "file")


def refuse_url(value: str, option: str) -> str:
    """``value`` as a local path, for an option that takes only a local folder or file.

    A URL given to such an option would otherwise be taken for a relative path: ``s3://b/run``
    became a local folder ``s3:/b/run`` in the working directory and the job "succeeded"
    with nothing in the bucket. Any ``scheme://`` is refused (ConfigError, exit 2, before
    any work), except ``file://``, whose path is returned."""
    found = _SCHEME.match(value)
    if not found:
        return value
    if found["scheme"].lower() == "file":
        return value[len(found.group(0)) :] or "/"
    raise ConfigError(
        f"{option} {value}: URLs ({found['scheme']}://) are not supported here, "
        f"{option} must be a local path for now"
    )
