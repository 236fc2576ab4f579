"""One pipeline at a time per run directory.

Two pipelines on one run dir both ran every stage, each replacing the other's outputs
(with different k one failed with ``FileNotFoundError ... _staging``). The holder creates
``<run_dir>/.lock`` exclusively, whole (written aside, then hard-linked into place, which
fails like ``O_CREAT | O_EXCL`` when the name exists), with who it is; a second pipeline
is refused before any work, naming the holder. A lock whose holder is gone (a crash,
SIGKILL) is stale and taken over: on the same host, when its pid is not alive or is now
another process (a different start time in /proc: pids are reused). A lock of another
host cannot be checked from here, so it is never taken over. In object storage the
lock is an object created with a conditional PUT (If-None-Match: *).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from clam_dist.errors import InputError
from clam_dist.pipeline.run_store import RunStore

LOCK_NAME = ".lock"


class RunDirBusy(InputError):
    """Another pipeline holds the run directory (exit 2, before any work)."""


def _proc_start(pid: int) -> int | None:
    """The process's start time (clock ticks after boot; /proc/<pid>/stat field 22), or
    None where there is no /proc. With the boot id it tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])  # field 22 of the line, the 20th after the name


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _me() -> dict:
    pid = os.getpid()
    return {
        "host": socket.gethostname(),
        "pid": pid,
        "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "proc_start": _proc_start(pid),
        "boot_id": _boot_id(),
    }


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def is_stale(holder: dict) -> bool:
    """The holder is known to be gone: same host, and its pid is dead or is another
    process now (another start time, or the machine rebooted)."""
    if holder.get("host") != socket.gethostname():
        return False  # can't check another machine's processes: assume it is alive
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False  # not a lock we wrote: leave the judgement to a person
    if holder.get("boot_id") and _boot_id() and holder["boot_id"] != _boot_id():
        return True
    if not _alive(pid):
        return True
    start = holder.get("proc_start")
    return start is not None and _proc_start(pid) not in (None, start)


def _create(path: Path, me: dict) -> bool:
    """Exclusively create the lock holding ``me``, whole or not at all; False when it
    exists already. The record is written to a file of our own first and then linked
    into place (link, like O_EXCL, fails when the name exists): a holder killed between
    creating the lock and writing it would otherwise leave an empty lock nobody could
    judge. Where links are not supported, O_CREAT | O_EXCL, then the write."""
    text = json.dumps(me)
    own = path.with_name(f"{LOCK_NAME}.{os.getpid()}.tmp")
    try:
        _write_synced(own, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, text)
        try:
            os.link(own, path)
            return True
        except FileExistsError:
            return False
        except OSError:  # a filesystem without hard links
            pass
    finally:
        own.unlink(missing_ok=True)
    try:
        _write_synced(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, text)
    except FileExistsError:
        return False
    return True


def _write_synced(path: Path, flags: int, text: str) -> None:
    fd = os.open(path, flags, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _read(path: Path) -> tuple[str, dict | None]:
    """The lock's text and holder ({} when there is none; None when unreadable: a file
    that is not ours)."""
    try:
        text = path.read_bytes().decode(errors="replace")
    except FileNotFoundError:
        return "", {}
    return text, _parse(text)


def _take_over(path: Path, stale_text: str) -> bool:
    """Move the stale lock aside (one rename: of two pipelines taking over at once, one
    wins) and check it was the stale one we judged; a fresh lock grabbed by mistake is
    put back. True when the stale lock is gone."""
    aside = path.with_name(f"{LOCK_NAME}.stale-{os.getpid()}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return True  # another pipeline moved it first: try to create ours
    if aside.read_text() == stale_text:
        aside.unlink()
        return True
    with contextlib.suppress(FileExistsError):
        os.link(aside, path)  # the live holder's lock, back where it was
    aside.unlink()
    return False


def _busy(where: str, holder: dict | None, text: str) -> RunDirBusy:
    lock = f"{where}/{LOCK_NAME}"
    if holder is None:
        return RunDirBusy(
            f"run_dir {where} is locked ({lock} holds {text[:60]!r}, not a "
            "lock of ours); remove that file if no pipeline is running there"
        )
    return RunDirBusy(
        f"run_dir {where} is in use by another pipeline (host {holder.get('host')}, "
        f"pid {holder.get('pid')}, since {holder.get('since')}); wait for it or use "
        f"another --run-dir (remove {lock} only if that process is gone)"
    )


def _parse(text: str) -> dict | None:
    try:
        holder = json.loads(text)
    except ValueError:
        return None
    return holder if isinstance(holder, dict) else None


def _as_store(where: RunStore | Path) -> RunStore:
    return where if isinstance(where, RunStore) else RunStore(str(where))


def acquire(where: RunStore | Path) -> tuple[dict, dict | None]:
    """Take the run directory's lock: (our record, the stale holder taken over or None).
    Raises RunDirBusy when another live pipeline holds it."""
    store = _as_store(where)
    if not store.is_local:
        return _acquire_object(store)
    run_dir = store.local
    path = run_dir / LOCK_NAME
    me, taken_over = _me(), None
    for _ in range(5):  # a few rounds: a lock released or taken over while we looked
        if _create(path, me):
            return me, taken_over
        text, holder = _read(path)
        if holder == {}:
            continue  # released between our create and our read
        if holder is None or not is_stale(holder):
            raise _busy(str(run_dir), holder, text)
        if _take_over(path, text):
            taken_over = holder
    text, holder = _read(path)
    raise _busy(str(run_dir), holder or None, text)


def _acquire_object(store: RunStore) -> tuple[dict, dict | None]:
    """The lock as an object: created with a conditional PUT (If-None-Match), which of two
    pipelines only one wins. A stale holder's object is deleted only while it still holds
    the text we judged (a store has no atomic rename; the window is one GET)."""
    me, taken_over = _me(), None
    for _ in range(5):
        if store.create_exclusive(json.dumps(me), LOCK_NAME):
            return me, taken_over
        text = store.read_text(LOCK_NAME)
        if text is None:
            continue  # released between our create and our read
        holder = _parse(text)
        if holder is None or not is_stale(holder):
            raise _busy(store.url, holder, text)
        if store.read_text(LOCK_NAME) == text:
            store.delete(LOCK_NAME)
            taken_over = holder
    text = store.read_text(LOCK_NAME) or ""
    raise _busy(store.url, _parse(text), text)


def release(where: RunStore | Path, me: dict) -> None:
    """Remove the lock if it is still ours (a lock taken over from us stays)."""
    store = _as_store(where)
    if not store.is_local:
        if _parse(store.read_text(LOCK_NAME) or "") == me:
            store.delete(LOCK_NAME)
        return
    path = store.local / LOCK_NAME
    _, holder = _read(path)
    if holder == me:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def run_dir_lock(store: RunStore) -> Iterator[dict | None]:
    """Hold the lock for the block (released on success, failure and Ctrl-C; a killed
    process leaves it, stale, for the next run to take over). Yields the stale holder
    taken over, if any, for the caller's events."""
    me, taken_over = acquire(store)
    try:
        yield taken_over
    finally:
        release(store, me)
