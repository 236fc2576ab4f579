"""Run `clam-dist` as a person meets it: a real subprocess (`python -m clam_dist ...`),
stdout and stderr read at the file-descriptor level, so Ray's own loggers, worker output
and C++ stack dumps are seen exactly as a shell would show them.

Two modes:
- piped (default): stdout and stderr are two pipes, as in a script or a scheduler;
- ``tty=True``: stdout and stderr are one pseudo-terminal, as in an interactive shell
  (so ``out`` holds both; ``err`` is empty).

``start_cli`` returns the running process for tests that send it a signal.
"""

from __future__ import annotations

import hashlib
import json
import os
import pty
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cli_env(ray_address: str | None = None, **extra: str) -> dict[str, str]:
    """This checkout's clam_dist (also in Ray's worker processes), no usage stats, and
    either a given Ray cluster or none (a local Ray is then started by the command)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    if ray_address:
        env["RAY_ADDRESS"] = ray_address
    env.update(extra)
    return env


@dataclass
class CliResult:
    argv: list[str]
    code: int
    out: str
    err: str

    def human_lines(self, text: str | None = None) -> list[str]:
        """Non-empty lines a person reads (JSON-line event records left out)."""
        text = self.err if text is None else text
        return [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("{")]

    def events(self) -> list[dict]:
        return [json.loads(ln) for ln in self.err.splitlines() if ln.startswith("{")]

    def one_line(self, *needles: str) -> str:
        """The failure is exactly one line on stderr with each needle, and stdout is empty."""
        lines = self.human_lines()
        assert len(lines) == 1, self.describe()
        assert self.out == "", self.describe()
        assert "Traceback" not in self.err, self.describe()
        for needle in needles:
            assert needle in lines[0], self.describe()
        return lines[0]

    def no_ray_lines(self) -> None:
        """Nothing of Ray's own on either stream (its loggers, workers, stack dumps)."""
        for text in (self.out, self.err):
            for marker in RAY_MARKERS:
                assert marker not in text, f"{marker!r} seen\n{self.describe()}"

    def describe(self) -> str:
        return (
            f"$ {' '.join(self.argv)}\nexit {self.code}\n--- stdout ---\n{self.out[-4000:]}"
            f"\n--- stderr ---\n{self.err[-4000:]}"
        )


# What Ray prints when it is not kept quiet (INFO/WARNING loggers, worker prefixes,
# tracebacks of its actors, the C++ core's check failures).
RAY_MARKERS = (
    "Started a local Ray instance",
    "Connecting to existing Ray cluster",
    "(RayTrainWorker",
    "(TrainController",
    "(PlacementGroupCleaner",
    "(pid=",
    "Exception occurred in Ray Data or Ray Core",
    "*** SIGTERM received",
    "*** Aborted at",
    "Traceback (most recent call last)",
    "[Ray Data]",
    "INFO worker.py",
    "WARNING worker.py",
)


def _argv(args: tuple) -> list[str]:
    return [sys.executable, "-m", "clam_dist", *(str(a) for a in args)]


def run_cli(
    *args,
    cwd: str | os.PathLike | None = None,
    env: dict[str, str] | None = None,
    ray_address: str | None = None,
    tty: bool = False,
    timeout: float = 300,
) -> CliResult:
    """Run ``clam-dist ARGS`` to its end and return what a person saw."""
    argv = _argv(args)
    env = env if env is not None else cli_env(ray_address)
    cwd = str(cwd) if cwd is not None else str(REPO)
    if not tty:
        proc = subprocess.run(
            argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        return CliResult(argv, proc.returncode, proc.stdout, proc.stderr)
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        argv, cwd=cwd, env=env, stdout=slave, stderr=slave, stdin=subprocess.DEVNULL
    )
    os.close(slave)
    chunks = _drain_in_background(master)
    try:
        code = proc.wait(timeout=timeout)
    finally:
        chunks.thread.join(timeout=10)
        os.close(master)
    text = b"".join(chunks.data).decode(errors="replace").replace("\r\n", "\n")
    return CliResult(argv, code, text, "")


class _Chunks:
    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.thread: threading.Thread


def _drain_in_background(fd: int) -> _Chunks:
    """Read a pty while the child runs (a full pty would block it); EIO ends it."""
    chunks = _Chunks()

    def drain() -> None:
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                return
            if not data:
                return
            chunks.data.append(data)

    chunks.thread = threading.Thread(target=drain, daemon=True)
    chunks.thread.start()
    return chunks


class RunningCli:
    """A `clam-dist` process still running, for tests that interrupt it."""

    def __init__(self, argv: list[str], proc: subprocess.Popen):
        self.argv, self.proc = argv, proc

    def send(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def interrupt(self) -> None:
        """Ctrl-C as a terminal delivers it: SIGINT to the whole process group."""
        os.killpg(self.proc.pid, signal.SIGINT)

    def wait_for(self, path: Path, timeout: float = 120) -> None:
        """Until ``path`` exists (a sign of progress), or fail with what it printed."""
        self.wait_until(path.exists, str(path), timeout)

    def wait_until(self, ready: Callable[[], bool], what: str, timeout: float = 120) -> None:
        """Until ``ready()`` (e.g. a first checkpoint on disk); fail with what the process
        printed if it ends first or ``what`` never happens within ``timeout`` seconds."""
        end = time.monotonic() + timeout
        while not ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"ended before {what}\n{self.finish().describe()}")
            if time.monotonic() > end:
                raise AssertionError(f"{what} never happened\n{self.finish().describe()}")
            time.sleep(0.1)

    def finish(self, timeout: float = 120) -> CliResult:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            out, err = self.proc.communicate()
        return CliResult(self.argv, self.proc.returncode, out, err)


def start_cli(
    *args,
    cwd: str | os.PathLike | None = None,
    env: dict[str, str] | None = None,
    ray_address: str | None = None,
) -> RunningCli:
    """Start ``clam-dist ARGS`` in its own process group (pipes for stdout and stderr)."""
    argv = _argv(args)
    proc = subprocess.Popen(
        argv,
        cwd=str(cwd) if cwd is not None else str(REPO),
        env=env if env is not None else cli_env(ray_address),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    return RunningCli(argv, proc)


def checksums(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, by relative path (empty if it does not exist)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def ok(r: CliResult) -> CliResult:
    """A success: exit 0 and nothing of Ray's on either stream."""
    assert r.code == 0, r.describe()
    r.no_ray_lines()
    return r


def fails(r: CliResult, code: int, *needles: str) -> str:
    """A failure: ``code``, one line on stderr holding every needle, nothing on stdout,
    no traceback and nothing of Ray's; returns the line."""
    assert r.code == code, r.describe()
    line = r.one_line(*needles)
    r.no_ray_lines()
    return line


def no_ray_env(**extra: str) -> dict[str, str]:
    """RAY_ADDRESS at a loopback port where nothing listens: a command that reaches for
    Ray fails to connect, so a refusal of ours proves the check came first."""
    from clam_dist.data.local_s3 import free_port

    return cli_env(ray_address=f"127.0.0.1:{free_port()}", **extra)
