"""Where a pipeline run lives: a local folder or any fsspec URL (``s3://``, ``gs://``, ...).

On a cluster of several nodes the run directory must be visible from every node (the
driver writes markers, Ray Train writes checkpoints from the workers' nodes, Ray Data
writes part files from whichever node runs a task), so it is usually object storage.
Every small record of a run (stage markers, the train-attempt record, summary.json, the
lock) goes through this one class: written whole or not at all (a local file aside and
renamed into place; an object in one PUT, which a store makes visible whole), read back
as ``None`` when absent.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from pathlib import Path

from clam_dist.data.urls import is_local_url, refuse_url


class RunStore:
    def __init__(self, location: str, storage_options: dict | None = None):
        self.is_local = is_local_url(location)
        if self.is_local:
            # Absolute: Ray Train workers and Ray Data tasks run in other working folders.
            self.local = Path(refuse_url(location, "run_dir")).resolve()
            self.url = str(self.local)
            self.storage_options: dict | None = None
            import fsspec

            self.fs = fsspec.filesystem("file")
            self.root = self.url
        else:
            from clam_dist.data.source import open_filesystem

            self.url = location.rstrip("/")
            self.storage_options = storage_options
            self.fs, root = open_filesystem(self.url, storage_options)
            self.root = root.rstrip("/")

    def __str__(self) -> str:
        return self.url

    @property
    def name(self) -> str:
        """The run's folder name (the last part of its path or URL)."""
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    def url_of(self, *parts: str) -> str:
        """The URL (or absolute local path) of ``parts`` under the run."""
        return "/".join([self.url, *parts])

    def _path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def _fresh(self) -> None:
        # s3fs keeps listings per filesystem instance (shared by every caller with the
        # same options): Ray Train and Ray Data write from other processes, so a listing
        # cached here would miss their files.
        if not self.is_local:
            self.fs.invalidate_cache()

    def exists(self, *parts: str) -> bool:
        self._fresh()
        return bool(self.fs.exists(self._path(*parts)))

    def is_file(self, *parts: str) -> bool:
        self._fresh()
        return bool(self.fs.isfile(self._path(*parts)))

    def entries(self, *parts: str) -> list[str]:
        """Names directly under ``parts`` (empty when there is nothing there)."""
        self._fresh()
        where = self._path(*parts)
        try:
            listed = self.fs.ls(where, detail=False)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted({p.rstrip("/").rsplit("/", 1)[-1] for p in listed if p.rstrip("/") != where})

    def read_text(self, *parts: str) -> str | None:
        try:
            with self.fs.open(self._path(*parts), "rb") as f:
                return f.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return None

    def read_json(self, *parts: str) -> dict | None:
        text = self.read_text(*parts)
        return None if text is None else json.loads(text)

    def write_text(self, text: str, *parts: str) -> None:
        """Whole or not at all (see the module's docstring)."""
        if self.is_local:
            path = self.local.joinpath(*parts)
            path.parent.mkdir(parents=True, exist_ok=True)
            # A temporary name of this writer's own: two processes writing one file at
            # once (racing alias setters) must not move each other's temporary away.
            tmp = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
            try:
                tmp.write_text(text)
                tmp.replace(path)
            finally:
                tmp.unlink(missing_ok=True)
        else:
            self.fs.pipe_file(self._path(*parts), text.encode())

    def write_json(self, record: dict, *parts: str, default=None) -> None:
        self.write_text(json.dumps(record, indent=2, default=default), *parts)

    def create_exclusive(self, text: str, *parts: str) -> bool:
        """Create ``parts`` holding ``text`` unless it exists (False then), whole or not at
        all, so two writers cannot both create it. Object stores: a conditional PUT
        (If-None-Match). A local folder: the text is written to a file of our own beside
        it, then hard-linked to the name (a link, like O_EXCL, fails when the name exists)."""
        if self.is_local:
            return self._create_local(text, self.local.joinpath(*parts))
        try:
            self.fs.pipe_file(self._path(*parts), text.encode(), mode="create")
        except FileExistsError:
            return False
        return True

    @staticmethod
    def _create_local(text: str, path: Path) -> bool:
        path.parent.mkdir(parents=True, exist_ok=True)
        aside = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
        try:
            fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(aside, path)
                return True
            except FileExistsError:
                return False
            except OSError:  # a filesystem without hard links: O_EXCL, then the write
                pass
        finally:
            aside.unlink(missing_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return True

    def delete(self, *parts: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._path(*parts))

    def make(self) -> None:
        """Create the run folder with its ``stages/`` (what marks a run dir as ours). An
        object store has no folders: a small object under ``stages/`` marks it, so a run
        that crashed before its first stage finished is still recognised as ours."""
        if self.is_local:
            (self.local / "stages").mkdir(parents=True, exist_ok=True)
        elif not self.exists("stages", "_created"):
            self.write_text(time.strftime("%Y-%m-%dT%H:%M:%S%z"), "stages", "_created")

    def upload(self, local_file: Path, *parts: str) -> None:
        """Copy a local file into the run (one PUT: the object is replaced whole)."""
        if self.is_local:
            raise ValueError("a local run folder is written in place, not uploaded to")
        self.fs.put_file(str(local_file), self._path(*parts))
