"""Has a partition drifted from the champion? Read from the committed assignments (one
pass over their ``cluster`` and ``energy`` columns): the share of rows whose energy is
above the champion's training 99th percentile, and the share of rows whose nearest
cluster changed its share of rows by more than ``drift.size_change``; a row counts once
when both say so. ``drift.share`` above ``drift.threshold`` refreshes the model."""

from __future__ import annotations

from collections import Counter

import numpy as np

from clam_dist.assign.commit import iter_assignments
from clam_dist.registry.config import DriftSection


def cluster_counts(output_url: str, storage_options: dict | None, energy_p99: float | None):
    """(rows per cluster id, rows above the energy threshold per cluster id)."""
    rows: Counter[int] = Counter()
    above: Counter[int] = Counter()
    columns = ["cluster"] + (["energy"] if energy_p99 is not None else [])
    for batch in iter_assignments(output_url, storage_options, columns=columns):
        cluster = batch.column(0).to_numpy()
        ids, counts = np.unique(cluster, return_counts=True)
        rows.update(dict(zip(ids.tolist(), counts.tolist())))
        if energy_p99 is not None:
            hot = cluster[batch.column(1).to_numpy() > energy_p99]
            ids, counts = np.unique(hot, return_counts=True)
            above.update(dict(zip(ids.tolist(), counts.tolist())))
    return dict(rows), dict(above)


def measure(
    rows: dict[int, int],
    above: dict[int, int],
    trained_shares: dict[str, float],
    settings: DriftSection,
    energy_p99: float | None,
) -> dict:
    """The drift record of a partition (see the module doc)."""
    total = sum(rows.values())
    k = max(1, len(trained_shares))
    floor = 1.0 / (4 * k)
    changed = []
    for cid in sorted(set(rows) | {int(c) for c in trained_shares}):
        now = rows.get(cid, 0) / max(1, total)
        then = trained_shares.get(str(cid), 0.0)
        if abs(now - then) > settings.size_change * max(then, floor):
            changed.append(cid)
    in_changed = sum(rows.get(c, 0) for c in changed)
    flagged = in_changed + sum(n for c, n in above.items() if c not in set(changed))
    share = flagged / total if total else 0.0
    return {
        "share": share,
        "threshold": settings.threshold,
        "drifted": share > settings.threshold,
        "energy_share_above": sum(above.values()) / total if total else 0.0,
        "energy_p99": energy_p99,
        "size_change_share": in_changed / total if total else 0.0,
        "changed_clusters": changed,
        "rows": total,
    }
