"""Crash-safe output prefixes: stage, verify, then commit with a marker written last.

Object stores have no atomic rename of a directory, so the protocol is the commit:
1. outputs are written under ``<prefix>/_staging/<attempt>/``;
2. the row count is verified against the input's;
3. staged files move to ``<prefix>/part-NNNNN.parquet``, then ``_manifest.json``, then
   ``_SUCCESS`` (last). A prefix without ``_SUCCESS`` is incomplete, whatever it holds.
A re-run clears an uncommitted prefix (staging and any half-moved parts) before writing,
so retries never append duplicates.
"""

from __future__ import annotations

import json
import time
import uuid

import pyarrow.parquet as pq

from clam_dist.data.source import open_filesystem

SUCCESS = "_SUCCESS"
MANIFEST = "_manifest.json"
STAGING = "_staging"


def _is_ours(relative: str) -> bool:
    """Files the staging/commit protocol writes (relative to the output prefix)."""
    name = relative.split("/")[-1]
    return (
        relative.startswith(f"{STAGING}/")
        or name in (SUCCESS, MANIFEST)
        or name.startswith(".write-probe-")
        or (relative.startswith("part-") and relative.endswith(".parquet") and "/" not in relative)
    )


class OutputExistsError(FileExistsError):
    """The output prefix already holds a committed result."""


class IncompleteOutputError(ValueError):
    """A prefix without _SUCCESS: an interrupted or still-running job."""


class OutputPrefix:
    def __init__(self, url: str, storage_options: dict | None = None):
        self.url = url.rstrip("/")
        self.storage_options = storage_options
        self.fs, self.path = open_filesystem(self.url, storage_options)
        self.path = self.path.rstrip("/")

    def is_committed(self) -> bool:
        return self.fs.exists(f"{self.path}/{SUCCESS}")

    def prepare(self, overwrite: bool) -> str:
        """Check writability, refuse a committed result unless overwrite, clear leftovers;
        returns the staging URL of this attempt."""
        if self.is_committed() and not overwrite:
            raise OutputExistsError(
                f"{self.url} already holds a committed result ({SUCCESS} present); pass --overwrite"
            )
        if self.is_committed():  # overwrite: un-commit first so a crash leaves "incomplete"
            self.fs.rm(f"{self.path}/{SUCCESS}")
        # Clear leftovers of an earlier attempt (staging, half-moved parts), but only files
        # this protocol writes: a prefix holding anything else is someone's data.
        leftovers = self.fs.find(self.path)
        foreign = [p for p in leftovers if not _is_ours(p[len(self.path) :].lstrip("/"))]
        if foreign:
            raise FileExistsError(
                f"{self.url} holds {len(foreign)} file(s) not written by clam-dist "
                f"(e.g. {foreign[0]}); refusing to delete them: choose another output prefix"
            )
        if leftovers:
            self.fs.rm(leftovers)
        if self.fs.exists(f"{self.path}/{STAGING}"):
            self.fs.rm(f"{self.path}/{STAGING}", recursive=True)
        try:
            self.fs.makedirs(self.path, exist_ok=True)
            probe = f"{self.path}/.write-probe-{uuid.uuid4().hex}"
            self.fs.pipe(probe, b"")
            self.fs.rm(probe)
        except OSError as exc:
            raise PermissionError(f"output {self.url} is not writable: {exc}") from exc
        attempt = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
        return f"{self.url}/{STAGING}/{attempt}"

    def staged_files(self, staging_url: str) -> list[str]:
        _, spath = open_filesystem(staging_url, self.storage_options)
        if not self.fs.exists(spath):
            return []
        return sorted(p for p in self.fs.find(spath) if p.endswith(".parquet"))

    def count_rows(self, files: list[str]) -> int:
        return sum(pq.ParquetFile(self.fs.open(f, "rb")).metadata.num_rows for f in files)

    def commit(self, staging_url: str, expected_rows: int, manifest: dict) -> dict:
        """Verify the staged row count, move files into place, write manifest and _SUCCESS."""
        staged = self.staged_files(staging_url)
        rows = self.count_rows(staged)
        if rows != expected_rows:
            raise RuntimeError(
                f"refusing to commit {self.url}: staged {rows} rows in {len(staged)} files, expected {expected_rows}"
            )
        final = []
        for i, src in enumerate(staged):
            dst = f"{self.path}/part-{i:05d}.parquet"
            self.fs.mv(src, dst)
            final.append(dst.rsplit("/", 1)[-1])
        if self.fs.exists(f"{self.path}/{STAGING}"):  # object stores have no empty dirs
            self.fs.rm(f"{self.path}/{STAGING}", recursive=True)
        manifest = dict(
            manifest,
            files=final,
            rows=rows,
            committed_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        self.fs.pipe(f"{self.path}/{MANIFEST}", json.dumps(manifest, indent=2).encode())
        self.fs.pipe(f"{self.path}/{SUCCESS}", b"")
        return manifest

    def manifest(self) -> dict:
        if not self.is_committed():
            raise IncompleteOutputError(
                f"{self.url} has no {SUCCESS}: the job that writes it did not finish"
            )
        return json.loads(self.fs.cat(f"{self.path}/{MANIFEST}"))

    def committed_files(self) -> list[str]:
        return [f"{self.path}/{name}" for name in self.manifest()["files"]]
