"""What of a config may be persisted: storage options reduced to their non-secret fields.

Logs and messages MASK credentials (``clam_dist.logs.redact``); files that outlive a run
(model artifacts, checkpoints, manifests, summaries, stage markers) go further and keep
only the storage fields that say WHERE data lives, never how to get in. An artifact is
meant to be shared, so a masked key name is as much as it may say; and any value under a
key we do not know is dropped rather than guessed safe.
"""

from __future__ import annotations

from typing import Any

from clam_dist.logs import redact

# fsspec / s3fs / botocore fields that locate a store and carry no credential.
_PUBLIC_TOP = ("endpoint_url", "region", "region_name", "anon", "anonymous", "use_ssl")
_PUBLIC_CLIENT = ("endpoint_url", "region_name")


def public_storage_options(storage_options: dict | None) -> dict | None:
    """The endpoint, region and anonymity of ``storage_options``; nothing else."""
    if not storage_options:
        return storage_options
    out: dict[str, Any] = {k: storage_options[k] for k in _PUBLIC_TOP if k in storage_options}
    client = storage_options.get("client_kwargs")
    if isinstance(client, dict):
        kept = {k: client[k] for k in _PUBLIC_CLIENT if k in client}
        if kept:
            out["client_kwargs"] = kept
    # An endpoint may embed user:password@; redact strips that part from strings.
    return redact(out)


def persistable(obj: Any) -> Any:
    """A copy of a config mapping fit to write to disk: every ``storage_options`` value at
    any depth reduced by :func:`public_storage_options`, other secret-looking keys masked."""
    if isinstance(obj, dict):
        return {
            k: public_storage_options(v) if k == "storage_options" else persistable(v)
            for k, v in obj.items()
        }
    if isinstance(obj, list | tuple):
        return [persistable(v) for v in obj]
    return redact(obj)
