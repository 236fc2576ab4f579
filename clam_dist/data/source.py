"""Where the vectors live: a Parquet prefix (or file list) on any fsspec URL, and how to
read vectors, ids and labels out of its columns."""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from clam_dist.data.errors import DataError

SECRET_KEYS = ("key", "secret", "token", "password", "aws_secret_access_key", "aws_session_token")


def redact(storage_options: dict | None) -> dict:
    """A copy of storage_options safe to log: secret values replaced by '***'."""

    def walk(obj):
        if isinstance(obj, dict):
            return {k: ("***" if k.lower() in SECRET_KEYS else walk(v)) for k, v in obj.items()}
        return obj

    return walk(dict(storage_options or {}))


def open_filesystem(url: str, storage_options: dict | None = None):
    """(fsspec filesystem, path) for a URL."""
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    return fs, path


def _retrying(what: str, fn, retries: int = 3, delay_s: float = 0.5):
    """Call fn with bounded retries; credential and missing-path errors are not retried."""
    last = None
    for attempt in range(retries):
        try:
            return fn()
        except (FileNotFoundError, PermissionError, DataError, pa.ArrowException):
            raise
        except Exception as exc:  # connection refused, timeouts, 5xx: botocore/aiohttp/OSError
            last = exc
            time.sleep(delay_s * (2**attempt))
    raise DataError(
        f"{what}: failed after {retries} attempts (endpoint unreachable?): {last}"
    ) from last


def _is_float_list(t: pa.DataType) -> bool:
    return (
        pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t)
    ) and (pa.types.is_floating(t.value_type) or pa.types.is_integer(t.value_type))


def _is_numeric(t: pa.DataType) -> bool:
    return pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_decimal(t)


@dataclass(frozen=True)
class VectorSource:
    """Sharded Parquet holding vectors.

    Vectors are either ONE list/fixed-size-list column (``vector_column``) or several
    numeric columns (``feature_columns``: names, or one glob such as ``"f*"``). With
    neither, a single float-list column is used if there is one, else every numeric
    column except the id and label columns.
    """

    url: str | list[str]
    vector_column: str | None = None
    feature_columns: list[str] | str | None = None
    id_column: str | None = None
    label_column: str | None = None
    storage_options: dict | None = None
    nan_policy: str = "error"  # "error" | "drop"

    def __post_init__(self) -> None:
        if self.vector_column is not None and self.feature_columns is not None:
            raise DataError("give vector_column OR feature_columns, not both")
        if self.nan_policy not in ("error", "drop"):
            raise DataError(f"nan_policy must be 'error' or 'drop', got {self.nan_policy!r}")

    def with_options(self, **changes) -> VectorSource:
        return dataclasses.replace(self, **changes)

    def filesystem(self):
        first = self.url[0] if isinstance(self.url, list) else self.url
        return open_filesystem(first, self.storage_options)[0]

    def describe(self) -> str:
        return f"{self.url} (storage_options={redact(self.storage_options)})"

    def files(self) -> list[str]:
        """Sorted Parquet files (paths inside the filesystem). Error if there are none."""
        return list(self._files)

    @cached_property
    def _files(self) -> tuple[str, ...]:
        urls = self.url if isinstance(self.url, list) else [self.url]
        fs = self.filesystem()
        found: list[str] = []
        for url in urls:
            _, path = open_filesystem(url, self.storage_options)

            def listing(path=path, url=url):
                if fs.isfile(path):
                    return [path]
                if not fs.exists(path):
                    raise DataError(f"{url}: no such file or prefix")
                return [p for p in fs.find(path) if p.endswith((".parquet", ".parq", ".pq"))]

            found.extend(_retrying(f"listing {url}", listing))
        # Hidden/underscore files (_SUCCESS, _staging) are never data.
        files = sorted(
            {f for f in found if not any(part.startswith(("_", ".")) for part in f.split("/")[-1:])}
        )
        if not files:
            raise DataError(f"{self.describe()}: no Parquet files found")
        return tuple(files)

    @contextlib.contextmanager
    def parquet_file(self, path: str) -> Iterator[pq.ParquetFile]:
        """An open ParquetFile whose file handle (and any read-ahead cache of an object
        store) is closed on exit, so reading many files keeps memory flat."""
        fs = self.filesystem()
        handle = _retrying(f"opening {path}", lambda: fs.open(path, "rb"))
        try:
            try:
                pf = pq.ParquetFile(handle)
            except (pa.ArrowInvalid, OSError) as exc:
                raise DataError(
                    f"{path}: not a readable Parquet file (corrupt or truncated?): {exc}"
                ) from exc
            yield pf
        finally:
            handle.close()

    def _footer(self, path: str) -> pq.FileMetaData:
        with self.parquet_file(path) as pf:
            return pf.metadata

    @cached_property
    def schema(self) -> pa.Schema:
        return self._footer(self.files()[0]).schema.to_arrow_schema()

    def resolve_columns(
        self, schema: pa.Schema | None = None, file: str | None = None
    ) -> tuple[str | None, list[str]]:
        """(vector list column or None, feature columns or []) for a file's schema."""
        schema = schema or self.schema
        where = file or self.files()[0]
        names = schema.names
        if self.vector_column is not None:
            if self.vector_column not in names:
                raise DataError(
                    f"{where}: vector column {self.vector_column!r} not found; columns: {names}"
                )
            if not _is_float_list(schema.field(self.vector_column).type):
                raise DataError(
                    f"{where}: column {self.vector_column!r} has type {schema.field(self.vector_column).type}, "
                    "expected a list of numbers"
                )
            return self.vector_column, []
        if self.feature_columns is not None:
            if isinstance(self.feature_columns, str):
                cols = [n for n in names if fnmatch.fnmatch(n, self.feature_columns)]
                if not cols:
                    raise DataError(
                        f"{where}: no column matches {self.feature_columns!r}; columns: {names}"
                    )
            else:
                cols = list(self.feature_columns)
                missing = [c for c in cols if c not in names]
                if missing:
                    raise DataError(
                        f"{where}: feature column(s) {missing} not found; columns: {names}"
                    )
            bad = [c for c in cols if not _is_numeric(schema.field(c).type)]
            if bad:
                types = {c: str(schema.field(c).type) for c in bad}
                raise DataError(f"{where}: non-numeric feature column(s) {types}")
            return None, cols
        skip = {self.id_column, self.label_column, "id", "label"}
        lists = [n for n in names if _is_float_list(schema.field(n).type) and n not in skip]
        if len(lists) == 1:
            return lists[0], []
        cols = [n for n in names if n not in skip and _is_numeric(schema.field(n).type)]
        if not cols:
            raise DataError(
                f"{where}: no vector column found (no float-list or numeric columns); columns: {names}"
            )
        return None, cols

    def dim(self) -> int:
        """Vector width, from the first file (every file is checked when read)."""
        vec, cols = self.resolve_columns()
        if vec is None:
            return len(cols)
        t = self.schema.field(vec).type
        if pa.types.is_fixed_size_list(t):
            return t.list_size
        with self.parquet_file(self.files()[0]) as pf:
            first = pf.read_row_group(0, columns=[vec]).column(0) if pf.num_row_groups else None
        if first is None or len(first) == 0:
            raise DataError(f"{self.files()[0]}: empty file, cannot infer the vector width")
        return len(first[0].as_py())

    def num_rows(self) -> int:
        """Total rows from Parquet footers (no data read)."""
        return sum(self.file_row_counts().values())

    def file_row_counts(self) -> dict[str, int]:
        return {f: self._footer(f).num_rows for f in self.files()}
