"""Crash-safe output prefixes: stage, verify, then commit with a marker written last.

Object stores have no atomic rename of a directory, so the protocol is the commit:

1. outputs are written under ``<prefix>/_staging/<attempt>/``;
2. the staged row count is verified against the input's;
3. staged files move to ``<prefix>/part-NNNNN.parquet``, then ``_manifest.json`` (files,
   row counts, model, input) is written, then ``_SUCCESS`` LAST.

A prefix without ``_SUCCESS`` is incomplete, whatever it holds, and readers refuse it
(:func:`read_assignments`). A re-run deletes an uncommitted prefix's leftovers (staging,
half-moved parts, a manifest) before writing, so retries never append duplicates.

Only files this protocol writes are ever deleted: a prefix holding anything else (someone
else's data, a mistyped ``--output``) is refused rather than cleared.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from clam_dist.data.source import open_filesystem

SUCCESS = "_SUCCESS"
MANIFEST = "_manifest.json"
STAGING = "_staging"
PART_RE = re.compile(r"part-\d{5}\.parquet")
PROBE_PREFIX = ".write-probe-"


class OutputExistsError(FileExistsError):
    """The output prefix already holds a committed result."""


class IncompleteOutputError(ValueError):
    """A prefix without _SUCCESS: an interrupted or still-running job."""


class ForeignOutputError(ValueError):
    """The output prefix holds files this job did not write; it is never cleared."""


class CommitError(RuntimeError):
    """The staged output does not match the input (row count); nothing was committed."""


def _ours(relative: str) -> bool:
    """Is this file (path relative to the prefix) one the commit protocol writes?"""
    if relative.startswith(STAGING + "/"):
        return True
    if "/" in relative:
        return False
    return (
        relative in (SUCCESS, MANIFEST)
        or bool(PART_RE.fullmatch(relative))
        or relative.startswith(PROBE_PREFIX)
    )


class OutputPrefix:
    """One output prefix (any fsspec URL) and the stage / verify / commit protocol on it."""

    def __init__(self, url: str, storage_options: dict | None = None):
        self.url = url.rstrip("/")
        self.storage_options = storage_options
        self.fs, path = open_filesystem(self.url, storage_options)
        self.path = path.rstrip("/")

    # -- state -------------------------------------------------------------------------

    def is_committed(self) -> bool:
        return self.fs.exists(f"{self.path}/{SUCCESS}")

    def _listing(self) -> list[str]:
        """Files under the prefix, relative to it ([] when it does not exist)."""
        if not self.fs.exists(self.path):
            return []
        if self.fs.isfile(self.path):
            raise ForeignOutputError(f"output {self.url} is a file, expected a prefix/folder")
        root = self.path + "/"
        return sorted(p[len(root) :] for p in self.fs.find(self.path) if p.startswith(root))

    # -- protocol ----------------------------------------------------------------------

    def prepare(self, overwrite: bool) -> str:
        """Refuse a committed result unless ``overwrite``, clear an earlier attempt's
        leftovers, check the prefix is writable; return this attempt's staging URL."""
        files = self._listing()
        foreign = [f for f in files if not _ours(f)]
        if foreign:
            shown = ", ".join(foreign[:5]) + (
                f" (+{len(foreign) - 5} more)" if len(foreign) > 5 else ""
            )
            raise ForeignOutputError(
                f"output {self.url} holds {len(foreign)} file(s) that clam-dist assign did not "
                f"write ({shown}); refusing to write there. Choose an empty or dedicated prefix."
            )
        if SUCCESS in files:
            if not overwrite:
                raise OutputExistsError(
                    f"{self.url} already holds a committed result ({SUCCESS} present); "
                    "pass --overwrite (overwrite=true) to replace it"
                )
            # Un-commit FIRST: a crash from here on leaves an 'incomplete' prefix, never a
            # committed one mixing old and new parts.
            self.fs.rm(f"{self.path}/{SUCCESS}")
            files.remove(SUCCESS)
        if files:  # an earlier attempt's staging / half-moved parts / manifest
            self.fs.rm([f"{self.path}/{f}" for f in files])
        if self.fs.exists(f"{self.path}/{STAGING}"):  # local FS: empty folders remain
            self.fs.rm(f"{self.path}/{STAGING}", recursive=True)
        try:
            self.fs.makedirs(self.path, exist_ok=True)
            probe = f"{self.path}/{PROBE_PREFIX}{uuid.uuid4().hex}"
            self.fs.pipe(probe, b"")
            self.fs.rm(probe)
        except OSError as exc:
            raise PermissionError(f"output {self.url} is not writable: {exc}") from exc
        attempt = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
        return f"{self.url}/{STAGING}/{attempt}"

    def staging_path(self, staging_url: str) -> str:
        return open_filesystem(staging_url, self.storage_options)[1].rstrip("/")

    def staged_files(self, staging_url: str) -> list[str]:
        spath = self.staging_path(staging_url)
        if not self.fs.exists(spath):
            return []
        return sorted(p for p in self.fs.find(spath) if p.endswith(".parquet"))

    def file_rows(self, files: list[str]) -> list[int]:
        """Row counts from the Parquet footers (no data read)."""
        counts = []
        for f in files:
            with self.fs.open(f, "rb") as handle:
                counts.append(pq.ParquetFile(handle).metadata.num_rows)
        return counts

    def commit(self, staging_url: str, expected_rows: int, manifest: dict) -> dict:
        """Verify the staged row count, move files into place, write manifest, then _SUCCESS."""
        staged = self.staged_files(staging_url)
        counts = self.file_rows(staged)
        rows = sum(counts)
        if rows != expected_rows:
            raise CommitError(
                f"refusing to commit {self.url}: staged {rows} rows in {len(staged)} files, "
                f"but the input has {expected_rows} rows"
            )
        final = []
        for i, src in enumerate(staged):
            name = f"part-{i:05d}.parquet"
            self.fs.mv(src, f"{self.path}/{name}")
            final.append(name)
        if self.fs.exists(f"{self.path}/{STAGING}"):
            self.fs.rm(f"{self.path}/{STAGING}", recursive=True)
        manifest = dict(
            manifest,
            files=final,
            file_rows=counts,
            rows=rows,
            committed_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        self.fs.pipe(f"{self.path}/{MANIFEST}", json.dumps(manifest, indent=2).encode())
        self.fs.pipe(f"{self.path}/{SUCCESS}", b"")  # the commit point
        return manifest

    # -- readers -----------------------------------------------------------------------

    def manifest(self) -> dict:
        if not self.is_committed():
            raise IncompleteOutputError(
                f"{self.url} has no {SUCCESS}: not a committed result (the job that writes it "
                "did not finish, or this is not an assignment output)"
            )
        return json.loads(self.fs.cat(f"{self.path}/{MANIFEST}"))

    def committed_files(self) -> list[str]:
        return [f"{self.path}/{name}" for name in self.manifest()["files"]]


def read_assignments(
    url: str, storage_options: dict | None = None, columns: list[str] | None = None
) -> pa.Table:
    """The whole committed assignment table (small outputs, tests); refuses a prefix
    without _SUCCESS. Use :func:`iter_assignments` to stream a large one."""
    prefix = OutputPrefix(url, storage_options)
    files = prefix.committed_files()
    tables = []
    for f in files:
        with prefix.fs.open(f, "rb") as handle:
            tables.append(pq.read_table(handle, columns=columns))
    return pa.concat_tables(tables) if tables else pa.table({})


def iter_assignments(
    url: str,
    storage_options: dict | None = None,
    columns: list[str] | None = None,
    batch_rows: int = 262_144,
) -> Iterator[pa.RecordBatch]:
    """Stream a committed assignment output in bounded record batches (one row group at a
    time); refuses a prefix without _SUCCESS."""
    prefix = OutputPrefix(url, storage_options)
    for f in prefix.committed_files():
        with prefix.fs.open(f, "rb") as handle:
            pf = pq.ParquetFile(handle)
            for i in range(pf.num_row_groups):
                yield from pf.iter_batches(batch_size=batch_rows, row_groups=[i], columns=columns)
