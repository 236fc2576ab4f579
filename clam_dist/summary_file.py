"""``--summary PATH`` of the batch commands: checked BEFORE the job, written after it.

A summary path that cannot be written must fail the command before any work (exit 2), not
after the output was committed: a scheduler would then see a failed job whose output is
complete. The check creates nothing (a probe file would be a file we did not need)."""

from __future__ import annotations

import os
import sys

from clam_dist.data.source import open_filesystem
from clam_dist.data.urls import absolute


class SummaryTarget:
    def __init__(self, url: str, storage_options: dict | None):
        self.url = url
        self.fs, self.path = open_filesystem(url, storage_options)

    def write(self, text: str) -> None:
        self.fs.pipe(self.path, text.encode())


def writable_target(url: str | None, storage_options: dict | None) -> SummaryTarget | None:
    """The summary target, or PermissionError naming it when it cannot be written."""
    if not url:
        return None
    url = absolute(url)
    target = SummaryTarget(url, storage_options)
    if "://" not in url:  # a local path: its folder must exist and be writable
        parent = os.path.dirname(url) or "."
        problem = None
        if os.path.isdir(url):
            problem = "is a directory"
        elif not os.path.isdir(parent):
            problem = f"its folder {parent} does not exist"
        elif not os.access(parent, os.W_OK) or (
            os.path.exists(url) and not os.access(url, os.W_OK)
        ):
            problem = "is not writable"
        if problem:
            raise PermissionError(f"--summary {url}: {problem}; nothing was run")
    return target


def write_after_commit(target: SummaryTarget, text: str, what: str) -> None:
    """Write the summary; a failure now (a store that changed its mind) is reported with
    what WAS done, and does not turn a committed job into a failed one."""
    try:
        target.write(text)
    except OSError as exc:
        print(
            f"warning: {what}, but its summary could not be written to {target.url}: {exc}",
            file=sys.stderr,
        )
