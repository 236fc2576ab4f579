"""Crash-safe output prefixes that only ever delete what they recorded writing.

Object stores have no atomic rename of a directory, so the protocol is the commit. Every
file it writes is RECORDED before it is written, and only recorded files are ever removed:

1. ``prepare``: a new attempt writes its record ``<prefix>/_staging/<attempt>/_attempt.json``
   first (this also proves the prefix writable); the job's files go under that folder.
2. ``commit``: the staged row count is verified against the input's; the record is
   rewritten with the final names it is about to create and the files of the result it
   replaces; staged files move to ``<prefix>/part-....parquet``; ``_manifest.json`` (files,
   row counts, attempt) is written; ``_SUCCESS`` is written (first commit) or kept
   (overwrite); the replaced result's files are removed; the attempt's folder goes last.

A prefix without ``_SUCCESS`` and a manifest is incomplete, whatever it holds, and readers
refuse it (:func:`read_assignments`). Readers follow the manifest, never a listing, so
during an overwrite they see the old result until the new manifest replaces it, then the
new one: a failed ``--overwrite`` leaves the previous result committed and intact.

What counts as ours: ``_SUCCESS`` and ``_manifest.json`` (when the manifest is one we wrote),
the files a committed manifest lists, and an attempt folder with its record together with
the final names that record announced. Anything else in the prefix (someone's data, a
mistyped ``--output``, files named like ours but never recorded) is refused with its name
and never touched. A re-run rolls an interrupted attempt back (or finishes one whose
manifest was already written), so retries never append duplicates.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from clam_dist.config import ConfigError
from clam_dist.data.buckets import require_bucket
from clam_dist.data.source import open_filesystem

SUCCESS = "_SUCCESS"
MANIFEST = "_manifest.json"
STAGING = "_staging"
ATTEMPT_RECORD = "_attempt.json"
# A name a manifest or a record may list: one path segment, not hidden, not a parent.
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._=-]*")


# Characters that a name filled into a path must not hold: separators and control chars.
_NOT_IN_SEGMENT = re.compile(r"[/\\\x00-\x1f\x7f]")


def require_segment(value: str, what: str) -> str:
    """``value`` if it is one path segment (a name filled into a path, such as a
    scheduler's ``--partition date=2026-05-01``), else ConfigError naming ``what``: no
    separators, no ``.``/``..``, not empty, no control characters. Anything else could
    put the output beside or above the prefix the user meant."""
    if value in ("", ".", "..") or _NOT_IN_SEGMENT.search(value):
        raise ConfigError(
            f"{what}: {value!r} is not one path segment (no '/', '\\', '.', '..', "
            "control characters or empty value), e.g. date=2026-05-01"
        )
    return value


class OutputExistsError(FileExistsError):
    """The output prefix already holds a committed result."""


class IncompleteOutputError(ValueError):
    """A prefix without _SUCCESS: an interrupted or still-running job."""


class ForeignOutputError(ValueError):
    """The output prefix holds files this job did not write; it is never cleared."""


class CommitError(RuntimeError):
    """The staged output does not match the input (row count); nothing was committed."""


@dataclass
class _Inventory:
    """What a prefix holds, sorted into ours (and why) and foreign."""

    manifest: dict | None  # a manifest we wrote, or None
    committed: bool  # _SUCCESS present beside that manifest
    attempts: dict[str, dict]  # attempt id -> its record
    foreign: list[str]  # relative paths nobody recorded


def _names(value) -> list[str]:
    """The entries of a recorded list that are plain file names (anything else ignored)."""
    if not isinstance(value, list):
        return []
    return [v for v in value if isinstance(v, str) and _SAFE_NAME.fullmatch(v)]


def _parse_json(raw: bytes) -> dict | None:
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


class OutputPrefix:
    """One output prefix (any fsspec URL) and the stage / verify / commit protocol on it.

    ``writer`` names the command in refusals ("files that clam-dist assign did not write").
    """

    def __init__(
        self, url: str, storage_options: dict | None = None, writer: str = "clam-dist assign"
    ):
        self.url = url.rstrip("/")
        self.storage_options = storage_options
        self.writer = writer
        self.fs, path = open_filesystem(self.url, storage_options)
        self.path = path.rstrip("/")
        self._created_prefix = False

    # -- state -------------------------------------------------------------------------

    def is_committed(self) -> bool:
        return self.fs.exists(f"{self.path}/{SUCCESS}") and self._read_manifest() is not None

    def _listing(self) -> list[str]:
        """Files under the prefix, relative to it ([] when it does not exist)."""
        if not self.fs.exists(self.path):
            return []
        if self.fs.isfile(self.path):
            raise ForeignOutputError(f"output {self.url} is a file, expected a prefix/folder")
        root = self.path + "/"
        return sorted(p[len(root) :] for p in self.fs.find(self.path) if p.startswith(root))

    def _read_json(self, relative: str) -> dict | None:
        try:
            return _parse_json(self.fs.cat(f"{self.path}/{relative}"))
        except FileNotFoundError:
            return None

    def _read_manifest(self) -> dict | None:
        """The manifest, if it is one this protocol wrote (files + rows), else None."""
        manifest = self._read_json(MANIFEST)
        if manifest is None or not isinstance(manifest.get("rows"), int):
            return None
        # Another command's result (a data set made by make-dataset) is not ours to
        # replace; manifests from before the writer field were assignment outputs.
        if manifest.get("writer", "clam-dist assign") != self.writer:
            return None
        if _names(manifest.get("files")) != manifest.get("files"):
            return None
        return manifest

    def _inventory(self) -> _Inventory:
        files = self._listing()
        manifest = self._read_manifest() if MANIFEST in files else None
        attempts: dict[str, dict] = {}
        for f in files:
            parts = f.split("/")
            if len(parts) == 3 and parts[0] == STAGING and parts[2] == ATTEMPT_RECORD:
                record = self._read_json(f)
                if (
                    record is not None
                    and record.get("attempt") == parts[1]
                    and record.get("writer") == self.writer
                ):
                    attempts[parts[1]] = record
        ours = set()
        if manifest is not None:
            ours |= {MANIFEST, SUCCESS, *_names(manifest.get("files"))}
            ours |= set(_names(manifest.get("extra_files")))
        for record in attempts.values():
            ours |= set(_names(record.get("planned"))) | set(_names(record.get("replaces")))
            if record.get("planned"):  # an attempt that got as far as its commit
                ours |= {MANIFEST, SUCCESS}
        foreign = []
        for f in files:
            parts = f.split("/")
            in_attempt = len(parts) >= 3 and parts[0] == STAGING and parts[1] in attempts
            if not in_attempt and f not in ours:
                foreign.append(f)
        return _Inventory(manifest, manifest is not None and SUCCESS in files, attempts, foreign)

    def _refuse_foreign(self, foreign: list[str]) -> None:
        shown = ", ".join(foreign[:5]) + (
            f" (+{len(foreign) - 5} more)" if len(foreign) > 5 else ""
        )
        raise ForeignOutputError(
            f"output {self.url} holds {len(foreign)} file(s) that {self.writer} did not "
            f"write ({shown}); refusing to write there. Choose an empty or dedicated prefix."
        )

    # -- protocol ----------------------------------------------------------------------

    def check(self, overwrite: bool) -> None:
        """Refuse, changing nothing, what :meth:`prepare` would refuse: a bucket that does
        not exist (never created), files of another origin, and (unless ``overwrite``) a
        committed result. Cheap, so commands call it before any work starts."""
        self._checked_inventory(overwrite)

    def _checked_inventory(self, overwrite: bool) -> _Inventory:
        require_bucket(self.url, self.storage_options)
        inv = self._inventory()
        if inv.foreign:
            self._refuse_foreign(inv.foreign)
        # Settling an interrupted attempt never changes whether a result is committed
        # (see _settle), so this answer holds for prepare too.
        if inv.committed and not overwrite:
            raise OutputExistsError(
                f"{self.url} already holds a committed result ({SUCCESS} present); "
                "pass --overwrite (overwrite=true) to replace it"
            )
        return inv

    def prepare(self, overwrite: bool) -> str:
        """Refuse what :meth:`check` refuses, settle any interrupted attempt, record this
        attempt (which proves the prefix writable), and return its staging URL. A
        committed result is NOT touched here: an overwrite replaces it only in
        :meth:`commit`, after the new result was verified."""
        inv = self._checked_inventory(overwrite)
        existed = self.fs.exists(self.path)
        for attempt, record in inv.attempts.items():
            self._settle(attempt, record)
        attempt = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
        record = {
            "writer": self.writer,
            "attempt": attempt,
            "created_at": _now(),
            "planned": [],
            "replaces": [],
        }
        try:
            self.fs.makedirs(f"{self.path}/{STAGING}/{attempt}", exist_ok=True)
            self._write_record(attempt, record)
        except OSError as exc:
            raise PermissionError(f"output {self.url} is not writable: {exc}") from exc
        self._created_prefix = not existed
        return f"{self.url}/{STAGING}/{attempt}"

    def _write_record(self, attempt: str, record: dict) -> None:
        self.fs.pipe(
            f"{self.path}/{STAGING}/{attempt}/{ATTEMPT_RECORD}", json.dumps(record).encode()
        )

    def _settle(self, attempt: str, record: dict) -> None:
        """An earlier attempt that did not finish: complete it if its manifest is the
        current one and committed (only the clean-up was left), otherwise roll it back.
        Either way only files its record names (and its own folder) are removed."""
        manifest = self._read_manifest()
        done = (
            manifest is not None
            and manifest.get("attempt") == attempt
            and self.fs.exists(f"{self.path}/{SUCCESS}")
        )
        # The live result's files are never removed; this attempt's own unfinished
        # manifest protects nothing.
        live = (
            manifest
            if manifest is not None and (done or manifest.get("attempt") != attempt)
            else None
        )
        keep = set(_names(live.get("files")) + _names(live.get("extra_files"))) if live else set()
        if done:
            doomed = [f for f in _names(record.get("replaces")) if f not in keep]
        else:
            doomed = [f for f in _names(record.get("planned")) if f not in keep]
            if manifest is not None and manifest.get("attempt") == attempt:
                doomed.append(MANIFEST)  # written, but _SUCCESS never followed
        self._remove([f"{self.path}/{f}" for f in doomed])
        self._remove_attempt(attempt)

    def _remove(self, paths: list[str]) -> None:
        existing = [p for p in paths if self.fs.exists(p)]
        if existing:
            self.fs.rm(existing)

    def _remove_attempt(self, attempt: str) -> None:
        folder = f"{self.path}/{STAGING}/{attempt}"
        if self.fs.exists(folder):
            self.fs.rm(folder, recursive=True)
        self._remove_empty_dir(f"{self.path}/{STAGING}")

    def _remove_empty_dir(self, path: str) -> None:
        """Local disks keep empty folders (object stores have none): drop ours when empty."""
        try:
            if self.fs.exists(path) and self.fs.isdir(path) and not self.fs.ls(path):
                self.fs.rmdir(path)
        except OSError:
            pass  # not empty after all, or a store without folders: nothing to tidy

    def abort(self, staging_url: str) -> None:
        """A failed attempt: remove its staging folder (recorded, so ours) and, when this
        attempt created the prefix, the then-empty prefix. A committed result stays."""
        attempt = staging_url.rstrip("/").rsplit("/", 1)[-1]
        record = self._read_json(f"{STAGING}/{attempt}/{ATTEMPT_RECORD}")
        if (
            record is None
            or record.get("attempt") != attempt
            or record.get("writer") != self.writer
        ):
            return  # not ours to remove
        self._settle(attempt, record)
        if self._created_prefix:
            self._remove_empty_dir(self.path)

    def sweep(self, staging_url: str) -> None:
        """After :meth:`abort`: remove what a writer it could not stop still put in this
        attempt's folder (only this attempt writes there: the name is its own), then the
        prefix when this attempt created it and it is empty again."""
        self._remove_attempt(staging_url.rstrip("/").rsplit("/", 1)[-1])
        if self._created_prefix:
            self._remove_empty_dir(self.path)

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

    def commit(
        self,
        staging_url: str,
        expected_rows: int,
        manifest: dict,
        extra_files: list[str] | None = None,
        max_rows: bool = False,
    ) -> dict:
        """Verify the staged row count, record the final names, move files into place,
        write the manifest, then ``_SUCCESS``; finally remove the replaced result.

        ``extra_files``: staged non-Parquet files (plain names) moved beside the parts and
        listed in the manifest. ``max_rows``: the input count is an upper bound (rows
        were dropped on purpose) instead of an exact count.
        """
        attempt = staging_url.rstrip("/").rsplit("/", 1)[-1]
        spath = self.staging_path(staging_url)
        staged = self.staged_files(staging_url)
        counts = self.file_rows(staged)
        rows = sum(counts)
        wrong = rows > expected_rows if max_rows else rows != expected_rows
        if wrong:
            raise CommitError(
                f"refusing to commit {self.url}: staged {rows} rows in {len(staged)} files, "
                f"but the input has {expected_rows} rows"
            )
        extras = [e for e in _names(extra_files or []) if self.fs.exists(f"{spath}/{e}")]
        old = self._read_manifest() if self.is_committed() else None
        old_files = (_names(old.get("files")) + _names(old.get("extra_files"))) if old else []
        taken = set(self._listing())
        final = [f"part-{i:05d}.parquet" for i in range(len(staged))]
        if any(f in taken for f in final):  # an overwrite: never reuse a live name
            final = [f"part-{attempt}-{i:05d}.parquet" for i in range(len(staged))]
        record = {
            "writer": self.writer,
            "attempt": attempt,
            "created_at": _now(),
            "planned": final + extras,
            "replaces": old_files,
        }
        self._write_record(attempt, record)  # recorded BEFORE any of them is written
        for src, name in zip(staged, final):
            self.fs.mv(src, f"{self.path}/{name}")
        for name in extras:
            self.fs.mv(f"{spath}/{name}", f"{self.path}/{name}")
        manifest = dict(
            manifest,
            writer=self.writer,
            attempt=attempt,
            files=final,
            extra_files=extras,
            file_rows=counts,
            rows=rows,
            committed_at=_now(),
        )
        self._publish(MANIFEST, json.dumps(manifest, indent=2).encode(), attempt)
        if not self.fs.exists(f"{self.path}/{SUCCESS}"):
            self.fs.pipe(f"{self.path}/{SUCCESS}", b"")  # the commit point
        self._settle(attempt, record)  # removes the replaced files and the staging folder
        return manifest

    def _publish(self, name: str, data: bytes, attempt: str) -> None:
        """Replace ``name`` so that readers see the old or the new bytes, never a part:
        object stores publish an object when its upload completes; on a local disk a
        temporary file in the attempt's (recorded) folder is renamed into place."""
        target = f"{self.path}/{name}"
        local = "file" in (
            self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        )
        if not local:
            self.fs.pipe(target, data)
            return
        tmp = f"{self.path}/{STAGING}/{attempt}/.{name}.tmp"
        self.fs.pipe(tmp, data)
        self.fs.mv(tmp, target)

    # -- readers -----------------------------------------------------------------------

    def manifest(self) -> dict:
        manifest = self._read_manifest()
        if manifest is None or not self.fs.exists(f"{self.path}/{SUCCESS}"):
            raise IncompleteOutputError(
                f"{self.url} has no {SUCCESS}: not a committed result (the job that writes it "
                "did not finish, or this is not an assignment output)"
            )
        return manifest

    def committed_files(self) -> list[str]:
        return [f"{self.path}/{name}" for name in self.manifest()["files"]]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


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
