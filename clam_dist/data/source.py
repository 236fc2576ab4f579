"""Where the vectors live: a Parquet prefix (or file list) on any fsspec URL, and how to
read vectors, ids and labels out of its columns."""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import os
import posixpath
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property

import fsspec
import fsspec.config
import pyarrow as pa
import pyarrow.parquet as pq

from clam_dist.data.errors import DataError
from clam_dist.logs import redact as _redact

# Transient failures (connection refused, timeouts, 5xx) are retried this many times with
# exponential backoff from RETRY_DELAY_S; bad credentials and missing paths are not.
RETRY_ATTEMPTS = 3
RETRY_DELAY_S = 0.5
RETRY_MAX_DELAY_S = 8.0
# Footers are read concurrently: thousands of small ranged GETs are latency bound.
FOOTER_THREADS = 16


def redact(storage_options: dict | None) -> dict:
    """A copy of storage_options safe to log: secret values replaced by '***'."""
    return _redact(dict(storage_options or {}))


def normalize_storage_options(protocol: str, storage_options: dict | None) -> dict:
    """s3fs options from the friendly spellings the issue promises.

    ``endpoint_url`` and ``region`` move into ``client_kwargs`` and ``anonymous`` becomes
    ``anon``; everything else passes through untouched, so native s3fs dicts keep working.
    Keys and secrets left out are found by the standard AWS credential chain (env vars,
    ~/.aws, instance roles) inside botocore.
    """
    opts = dict(storage_options or {})
    if protocol not in ("s3", "s3a"):
        return opts
    client = dict(opts.pop("client_kwargs", None) or {})
    if "endpoint_url" in opts:
        client.setdefault("endpoint_url", opts.pop("endpoint_url"))
    for friendly in ("region", "region_name"):
        if friendly in opts:
            client.setdefault("region_name", opts.pop(friendly))
    if "anonymous" in opts:
        opts["anon"] = bool(opts.pop("anonymous"))
    if client:
        opts["client_kwargs"] = client
    return opts


def open_filesystem(url: str, storage_options: dict | None = None):
    """(fsspec filesystem, path inside it) for a URL or plain local path. An ``s3://`` URL
    for which no credentials can be found anywhere is refused here, naming the URL."""
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    options = normalize_storage_options(protocol, storage_options)
    if protocol in ("s3", "s3a"):
        check_s3_credentials(url, options)
    try:
        return fsspec.core.url_to_fs(url, **options)
    except ImportError as exc:  # e.g. gs:// without gcsfs
        raise DataError(f"{url}: the {protocol}:// filesystem is not installed ({exc})") from exc
    except ValueError as exc:  # unknown protocol
        raise DataError(f"{url}: cannot open this URL ({exc})") from exc


# s3fs options that bring their own credentials (or need none): botocore's default chain
# is not consulted for them.
_OWN_CREDENTIALS = ("key", "secret", "token", "username", "password", "anon", "session")
# Positive answers of the credential chain, per profile and AWS_* environment (a negative
# one is not kept: credentials may appear later in a long-lived process).
_credentials_seen: set[tuple[str | None, int]] = set()


def check_s3_credentials(url: str, options: dict) -> None:
    """Refuse ``url`` when its storage options carry no credentials and botocore's
    standard chain (environment, shared files, profile, container or instance role)
    finds none either: a one-line DataError naming the URL and the ways to give them,
    before any request. Without this, the first request fails deep inside s3fs with a
    botocore ``NoCredentialsError`` that says neither which URL nor what to do."""
    # fsspec's own configuration (~/.config/fsspec, FSSPEC_S3_* variables) supplies
    # defaults for every s3 filesystem, credentials included.
    protocol = url.split("://", 1)[0]
    options = {
        **fsspec.config.conf.get("s3", {}),
        **fsspec.config.conf.get(protocol, {}),
        **options,
    }
    client = options.get("client_kwargs") or {}
    config = options.get("config_kwargs") or {}
    if (
        any(options.get(k) for k in _OWN_CREDENTIALS)
        or "aws_access_key_id" in client
        or "signature_version" in config  # UNSIGNED: anonymous requests
    ):
        return
    if _chain_has_credentials(options.get("profile")):
        return
    raise DataError(
        f"{url}: no AWS credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
        "(or AWS_PROFILE, ~/.aws/credentials) in the environment, or give storage_options "
        "key and secret (anon: true for a public bucket)"
    )


def _chain_has_credentials(profile: str | None) -> bool:
    """Whether botocore's default credential chain resolves to any credentials. Unsure
    (botocore missing, a broken profile or config): True, so that s3fs reports the
    problem in its own words rather than this check guessing."""
    # A hash of the AWS_* variables: the cache must not hold the secrets themselves.
    key = (profile, hash(tuple(sorted((k, v) for k, v in os.environ.items() if k[:4] == "AWS_"))))
    if key in _credentials_seen:
        return True
    try:
        import botocore.exceptions
        import botocore.session
    except ImportError:
        return True
    try:
        found = botocore.session.Session(profile=profile).get_credentials() is not None
    except botocore.exceptions.BotoCoreError:
        return True
    if found:
        _credentials_seen.add(key)
    return found


# OSError errnos of a network hiccup (the peer, route or socket), not of a bad request.
_TRANSIENT_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "ECONNREFUSED",
        "ECONNRESET",
        "ECONNABORTED",
        "ETIMEDOUT",
        "EHOSTUNREACH",
        "ENETUNREACH",
        "ENETDOWN",
        "EHOSTDOWN",
        "EPIPE",
        "EAGAIN",
        "EBUSY",
    )
    if hasattr(errno, name)
)
# Error codes object stores answer when they want the client to slow down or come back.
_THROTTLE_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequests",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "InternalError",
        "ServiceUnavailable",
        "503",
        "500",
    }
)
# Client libraries' own network error classes, by module and name so that neither botocore
# nor aiohttp has to be importable for local files.
_TRANSIENT_CLASSES = frozenset(
    {
        ("botocore.exceptions", "ConnectionError"),  # EndpointConnectionError, timeouts, ...
        ("botocore.exceptions", "HTTPClientError"),
        ("aiohttp.client_exceptions", "ClientConnectionError"),
        ("aiohttp.client_exceptions", "ClientPayloadError"),
        ("aiohttp.client_exceptions", "ServerTimeoutError"),
        ("urllib3.exceptions", "ProtocolError"),
        ("urllib3.exceptions", "TimeoutError"),
    }
)


def _http_status(exc: BaseException) -> int | None:
    """The HTTP status of a botocore ClientError / aiohttp ClientResponseError, if any."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return int(status) if status else None
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


def _one_is_transient(exc: BaseException) -> bool:
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, DataError)):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return True
    if any((k.__module__, k.__name__) in _TRANSIENT_CLASSES for k in type(exc).__mro__):
        return True
    status = _http_status(exc)
    if status is not None and (status >= 500 or status == 429):
        return True
    response = getattr(exc, "response", None)
    code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
    return code in _THROTTLE_CODES


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: a connection error, timeout, throttling or HTTP 5xx, here or in
    the exceptions it wraps (s3fs re-raises botocore errors as OSError(EIO) with the
    original as the cause). A missing file, denied access or a programming error is not."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        if isinstance(e, (FileNotFoundError, PermissionError, DataError)):
            return False
        if _one_is_transient(e):
            return True
        seen.add(id(e))
        e = e.__cause__  # explicit wrapping only: an error raised while handling another
    return False


def is_local(fs) -> bool:
    """Whether an fsspec filesystem is the local disk."""
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def _retrying(
    what: str,
    fn,
    retries: int | None = None,
    delay_s: float | None = None,
    max_delay_s: float | None = None,
):
    """Call fn; retry ONLY transient errors (see is_transient), at most ``retries`` calls,
    sleeping delay_s, 2*delay_s, ... (capped at max_delay_s) between them. Anything else
    is raised at once: a missing path or denied access as a DataError naming ``what``, any
    other error unchanged (a bug must not be retried and then blamed on the endpoint)."""
    retries = RETRY_ATTEMPTS if retries is None else retries
    delay_s = RETRY_DELAY_S if delay_s is None else delay_s
    max_delay_s = RETRY_MAX_DELAY_S if max_delay_s is None else max_delay_s
    last: BaseException | None = None
    for attempt in range(retries):
        try:
            return fn()
        except PermissionError as exc:
            # s3fs maps 403 / InvalidAccessKeyId / SignatureDoesNotMatch to PermissionError.
            raise DataError(
                f"{what}: access denied ({exc}); check the credentials (key/secret, "
                "AWS_* environment, profile) and the bucket policy"
            ) from exc
        except FileNotFoundError as exc:
            raise DataError(f"{what}: not found ({exc})") from exc
        except Exception as exc:
            if not is_transient(exc):
                raise
            last = exc
            if attempt + 1 < retries:
                time.sleep(min(max_delay_s, delay_s * (2**attempt)))
    raise DataError(
        f"{what}: failed after {retries} attempts (endpoint unreachable?): "
        f"{type(last).__name__}: {last}"
    ) from last


PARQUET_SUFFIXES = (".parquet", ".parq", ".pq")


def _hidden(relative_path: str) -> bool:
    """_SUCCESS, _staging/, .tmp files: never data (Spark, Hadoop and our writers use them)."""
    return any(part.startswith(("_", ".")) for part in relative_path.split("/"))


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

    @classmethod
    def from_config(cls, url: str | list[str], section, **overrides) -> VectorSource:
        """The source a config describes: its ``sections.SourceColumns`` fields (train,
        pipeline, assign, evaluate and tune configs are all built on that section)."""
        from clam_dist.sections import SourceColumns, values_of

        return cls(url, **{**values_of(SourceColumns, section), **overrides})

    def filesystem(self):
        first = self.url[0] if isinstance(self.url, list) else self.url
        return open_filesystem(first, self.storage_options)[0]

    def describe(self) -> str:
        """The source for messages and logs: secrets redacted, long file lists shortened."""
        url = self.url
        if isinstance(url, list) and len(url) > 3:
            url = f"[{url[0]!r}, ... {len(url) - 2} more ..., {url[-1]!r}]"
        return f"{url} (storage_options={redact(self.storage_options)})"

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
                root = path.rstrip("/") + "/"
                return [
                    p
                    for p in fs.find(path)
                    if p.endswith(PARQUET_SUFFIXES) and not _hidden(p[len(root) :])
                ]

            found.extend(_retrying(f"listing {url}", listing))
        files = sorted(set(found))
        if not files:
            raise DataError(f"{self.describe()}: no Parquet files found")
        return tuple(files)

    @cached_property
    def _root(self) -> str:
        """The folder the user named (a prefix itself, a file's folder; for several URLs,
        their common folder). Generated ids are paths relative to it, so they depend only
        on the URL given, not on which files happen to exist today."""
        urls = self.url if isinstance(self.url, list) else [self.url]
        folders = []
        for url in urls:
            path = open_filesystem(url, self.storage_options)[1].rstrip("/")
            folders.append(posixpath.dirname(path) if path in self._files else path)
        return folders[0] if len(folders) == 1 else posixpath.commonpath(folders)

    def file_key(self, path: str) -> str:
        """The file's name relative to the dataset root, e.g. ``date=2024-01-01/part-0.parquet``.

        Generated ids are ``<file_key>:<row>``: stable across runs and machines (they do not
        contain the bucket, endpoint or a temp dir) and unique even when partition folders
        reuse file names.
        """
        root = self._root
        return path[len(root) + 1 :] if root and path.startswith(root + "/") else path

    @contextlib.contextmanager
    def parquet_file(self, path: str) -> Iterator[pq.ParquetFile]:
        """An open ParquetFile whose file handle (and any read-ahead cache of an object
        store) is closed on exit, so reading many files keeps memory flat."""
        fs = self.filesystem()
        # A local file is read by Arrow's own file reader: through a Python file object
        # every read takes the GIL and a copy, which cost ~25% of the decode rate and kept
        # two decoding threads from overlapping (jobs/bench_read.py). For object stores
        # fsspec's default read-ahead cache stays on: measured side by side against the
        # local S3 server it read 1.2-2.2x faster than cache_type="none" (fewer, larger
        # GETs) for ~190 MB more peak memory, which stays flat either way.
        local = is_local(fs)
        handle = None if local else _retrying(f"opening {path}", lambda: fs.open(path, "rb"))
        try:
            try:
                pf = pq.ParquetFile(path if local else handle, pre_buffer=True)
            except PermissionError as exc:
                raise DataError(f"{path}: access denied reading the footer ({exc})") from exc
            except FileNotFoundError:
                raise
            except (pa.ArrowInvalid, OSError) as exc:
                raise DataError(
                    f"{path}: not a readable Parquet file (corrupt or truncated?): {exc}"
                ) from exc
            try:
                yield pf
            finally:
                pf.close()
        finally:
            if handle is not None:
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
            # Each entry is a name or a glob ('f*'), expanded in schema order; a config
            # list ['f*'] and a flag 'f*' mean the same.
            patterns = (
                [self.feature_columns]
                if isinstance(self.feature_columns, str)
                else list(self.feature_columns)
            )
            cols, missing = [], []
            for pattern in patterns:
                hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
                if not hits:
                    missing.append(pattern)
                cols.extend(h for h in hits if h not in cols)
            if missing:
                raise DataError(
                    f"{where}: feature column(s) {missing} not found (no column matches); "
                    f"columns: {names}"
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
        if len(lists) > 1:
            raise DataError(
                f"{where}: several list columns {lists} could hold the vectors; "
                "choose one with vector_column"
            )
        cols = [n for n in names if n not in skip and _is_numeric(schema.field(n).type)]
        if not cols:
            raise DataError(
                f"{where}: no vector column found (no float-list or numeric columns); columns: {names}"
            )
        return None, cols

    def dim(self) -> int:
        """Vector width. Every file's footer is checked first (concurrently, cached), so a
        dataset mixing widths fails here, for every consumer, naming both files."""
        widths = self.file_widths()
        known = {f: w for f, w in widths.items() if w is not None}
        if known:
            return next(iter(known.values()))
        return self._first_row_width

    @cached_property
    def _first_row_width(self) -> int:
        """Width of the first row of a variable-length list column: read once per source
        (a whole row group is decoded for it, and a job asks dim() several times)."""
        first = self.files()[0]
        vec, _ = self.resolve_columns(self._schema_of(first), first)
        with self.parquet_file(first) as pf:
            col = pf.read_row_group(0, columns=[vec]).column(0) if pf.num_row_groups else None
        if col is None or len(col) == 0:
            raise DataError(f"{first}: empty file, cannot infer the vector width")
        return len(col[0].as_py())

    def file_widths(self) -> dict[str, int | None]:
        """Vector width per file from its schema (None for variable-length list columns,
        whose widths are checked as rows are read). Raises naming two files that differ."""
        widths = {f: info[1] for f, info in self._footer_info}
        first: tuple[str, int] | None = None
        for f, w in widths.items():
            if w is None:
                continue
            if first is None:
                first = (f, w)
            elif w != first[1]:
                raise DataError(
                    f"{f}: vectors have width {w}, but {first[0]} has {first[1]} "
                    "(every file of one input must hold vectors of the same width)"
                )
        return widths

    def _schema_of(self, file: str) -> pa.Schema:
        return dict(self._footer_info)[file][2]

    def num_rows(self) -> int:
        """Total rows from Parquet footers (no data read)."""
        return sum(self.file_row_counts().values())

    def file_row_counts(self) -> dict[str, int]:
        """Rows per file from the footers, read concurrently (latency-bound on S3)."""
        return {f: sum(info[0]) for f, info in self._footer_info}

    def row_group_rows(self) -> dict[str, tuple[int, ...]]:
        """Rows of each row group, per file, from the footers (no data read)."""
        return {f: info[0] for f, info in self._footer_info}

    def _width_of(self, schema: pa.Schema, file: str) -> int | None:
        vec, cols = self.resolve_columns(schema, file)
        if vec is None:
            return len(cols)
        t = schema.field(vec).type
        return t.list_size if pa.types.is_fixed_size_list(t) else None

    @cached_property
    def _footer_info(self) -> tuple[tuple[str, tuple], ...]:
        """(file, (row-group row counts, width or None, arrow schema)) per file."""
        files = self.files()

        def one(f: str):
            meta = self._footer(f)
            schema = meta.schema.to_arrow_schema()
            rgs = tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
            return (rgs, self._width_of(schema, f), schema)

        with ThreadPoolExecutor(min(FOOTER_THREADS, len(files))) as pool:
            infos = list(pool.map(one, files))
        return tuple(zip(files, infos))
