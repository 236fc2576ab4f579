"""Paths as the driver means them: a relative local path is made absolute where the
config is built, because Ray Train workers and Ray Data tasks run in other working
directories (a relative ``--data ./good`` would name a folder that is not there)."""

from __future__ import annotations

import os


def absolute(url: str | None) -> str | None:
    """``url`` unchanged when it is empty, a URL (``s3://``, ``memory://``, ...) or absolute;
    otherwise the absolute local path (``file://`` prefixes kept as given)."""
    if not url or "://" in url or os.path.isabs(url):
        return url
    return os.path.abspath(url)
