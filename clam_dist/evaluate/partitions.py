"""Drift over partitions: the share of rows above the training energy's 99th percentile
in each committed assignment output made with the same model, read from the manifests
the assignment commit wrote (no pass over the rows)."""

from __future__ import annotations

from clam_dist.assign.commit import OutputPrefix
from clam_dist.data.errors import DataError


def drift_by_partition(
    assignments: list[str], model: str, storage_options: dict | None = None
) -> list[dict]:
    """One dict per output (in the given order): assignments, partition, rows, share_above
    (None when the model had no energy threshold). An output assigned with another model
    is refused by name: mixing models would make the shares incomparable."""
    out = []
    for url in assignments:
        manifest = OutputPrefix(url, storage_options).manifest()
        if manifest.get("model") not in (None, model):
            raise DataError(
                f"{url} was assigned with model {manifest['model']}, not {model}: drift over "
                "partitions compares outputs of one model"
            )
        drift = manifest.get("drift") if isinstance(manifest.get("drift"), dict) else {}
        out.append(
            {
                "assignments": url,
                "partition": manifest.get("partition"),
                "rows": manifest.get("rows"),
                "share_above": drift.get("share_above"),
                "energy_p99": drift.get("energy_p99"),
            }
        )
    return out
