"""Buckets belong to the user: an output in a bucket that does not exist is refused, never
created.

s3fs creates a missing bucket as a side effect of ``makedirs`` (and of ``mkdir`` with
``create_parents``), so a mistyped ``s3://nobukcet/out`` used to become a new bucket in the
user's account, billed and public-by-policy for all we know. Every command that writes to
an object store calls :func:`require_bucket` before its first write.
"""

from __future__ import annotations

from clam_dist.data.errors import DataError
from clam_dist.data.source import is_transient, open_filesystem

# Protocols whose first path segment is a bucket (or container) that only its owner creates.
BUCKET_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})


class BucketNotFoundError(DataError):
    """The bucket an output names does not exist (exit 2: the user's to create)."""


def _protocol(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else "file"


def has_buckets(url: str) -> bool:
    """Whether ``url`` lives in an object store whose first segment is a bucket."""
    return _protocol(url) in BUCKET_PROTOCOLS


def fs_has_buckets(fs) -> bool:
    """The same question asked of an open fsspec filesystem."""
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return any(p in BUCKET_PROTOCOLS for p in protocols)


def require_bucket(url: str, storage_options: dict | None = None) -> None:
    """Raise BucketNotFoundError when ``url``'s bucket does not exist; nothing for local
    paths and stores without buckets. One cheap request, never cached.

    A 403 means the bucket exists but this identity may not look at it (a write-only
    policy is common for outputs): that passes, and the write itself says whether it may
    write. An unreachable endpoint is a DataError naming it."""
    if not has_buckets(url):
        return
    fs, path = open_filesystem(url, storage_options)
    bucket = path.strip("/").split("/", 1)[0]
    if not bucket:
        raise DataError(f"{url}: names no bucket")
    try:
        _probe(fs, bucket)
    except FileNotFoundError as exc:
        raise BucketNotFoundError(
            f"{url}: bucket {bucket!r} does not exist; create it first "
            "(clam-dist never creates buckets)"
        ) from exc
    except PermissionError:
        return
    except Exception as exc:
        if is_transient(exc):
            raise DataError(
                f"{url}: cannot reach the object store to check bucket {bucket!r} "
                f"(endpoint unreachable?): {type(exc).__name__}: {exc}"
            ) from exc
        raise


def _probe(fs, bucket: str) -> None:
    """Ask the store about ``bucket``: FileNotFoundError when it is missing."""
    call_s3 = getattr(fs, "call_s3", None)
    if callable(call_s3):
        # HeadBucket itself: s3fs's exists() answers False for a 403 as for a 404 (and for
        # a network error), and may answer from its listing cache.
        call_s3("head_bucket", Bucket=bucket)
        return
    fs.invalidate_cache(bucket)
    fs.info(bucket)
