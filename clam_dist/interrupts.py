"""SIGINT and SIGTERM as a person (or a scheduler) means them: stop, clean up, say so.

The first SIGINT (Ctrl-C) or SIGTERM raises :class:`Interrupted` in the main thread; the
command's own ``finally`` blocks then run (staging removed, locks released, Ray shut
down), and the CLI prints one line and exits 130 (SIGINT) or 143 (SIGTERM), the shell's
convention of 128 + the signal number.

Why our own handler: ``ray.init`` installs a SIGTERM handler that calls ``sys.exit(15)``
and Ray's C++ core adds a failure handler that prints a stack dump before chaining to it,
so an un-handled SIGTERM ends with Ray's dump and exit 15 or 134. :func:`catch_signals`
is therefore called again right after Ray starts (``clam_dist.ray_session``).

A library (Ray Train's controller loop, a thread pool) may catch the KeyboardInterrupt
and raise something else, or return; the received signal is remembered, so the CLI still
reports the interruption and its exit code.
"""

from __future__ import annotations

import os
import signal
import threading

# 128 + signal number: what a shell reports for a process ended by that signal.
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class Interrupted(KeyboardInterrupt):
    """The command was asked to stop by ``signum`` (SIGINT or SIGTERM)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_received: list[int] = []


def received() -> int | None:
    """The first signal received during this command, if any."""
    return _received[0] if _received else None


def reset() -> None:
    _received.clear()


def _handle(signum: int, frame) -> None:
    _received.append(signum)
    if len(_received) == 1:
        raise Interrupted(signum)
    if len(_received) >= 3:  # asked three times: stop cleaning up and leave at once
        os._exit(EXIT_CODES.get(_received[0], 1))
    # the second signal is absorbed: cleanup (staging, lock, Ray) is running


def catch_signals() -> None:
    """Route SIGINT and SIGTERM to :func:`_handle` (main thread only: Python allows
    signal handlers nowhere else; elsewhere this is a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in EXIT_CODES:
        signal.signal(signum, _handle)


def exit_code(signum: int) -> int:
    return EXIT_CODES.get(signum, 1)


# What survives an interruption, per command: the second half of the one line.
_AFTERMATH = {
    "train": "resumable: run the same command again to resume from the last checkpoint",
    "pipeline": "resumable: run the same command again (finished stages are kept)",
    "tune": "resumable: trials already finished are in the experiment folder",
}
_NOTHING = "nothing committed: the previous result (if any) is unchanged"


def describe(command: str, signum: int) -> str:
    name = signal.Signals(signum).name
    return f"interrupted: {command} stopped by {name}; {_AFTERMATH.get(command, _NOTHING)}"
