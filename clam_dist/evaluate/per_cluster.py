"""Per-cluster statistics streamed over a committed assignment output, O(k) memory:
size, mean distance to the assigned prototype, mean energy, and the ids of the ``nearest``
rows closest to their prototype (by the committed ``distance`` column)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


class ClusterTable:
    def __init__(self, k: int, nearest: int = 3) -> None:
        self.k, self.nearest = k, nearest
        self.sizes = np.zeros(k, dtype=np.int64)
        self.distance_sum = np.zeros(k, dtype=np.float64)
        self.energy_sum = np.zeros(k, dtype=np.float64)
        self.energy_rows = np.zeros(k, dtype=np.int64)
        # The current best rows, as flat arrays (at most ``nearest`` per cluster).
        self._cluster = np.zeros(0, dtype=np.int64)
        self._distance = np.zeros(0, dtype=np.float64)
        self._ids = np.zeros(0, dtype=object)
        # Distance a new row must beat to enter its cluster's list (inf while not full).
        self._bar = np.full(k, np.inf)

    def update(
        self,
        clusters: np.ndarray,
        distances: np.ndarray,
        ids: np.ndarray | pa.Array,
        energies: np.ndarray | None = None,
    ) -> None:
        clusters = np.asarray(clusters, dtype=np.int64)
        distances = np.asarray(distances, dtype=np.float64)
        self.sizes += np.bincount(clusters, minlength=self.k)
        self.distance_sum += np.bincount(clusters, weights=distances, minlength=self.k)
        if energies is not None:
            e = np.asarray(energies, dtype=np.float64)
            self.energy_sum += np.bincount(clusters, weights=e, minlength=self.k)
            self.energy_rows += np.bincount(clusters, minlength=self.k)
        # Only rows that beat their cluster's current bar can enter: after the first
        # batches that is a small fraction, so the sort below stays small.
        keep = distances < self._bar[clusters]
        if not keep.any():
            return
        cluster = np.concatenate([self._cluster, clusters[keep]])
        distance = np.concatenate([self._distance, distances[keep]])
        if isinstance(ids, (pa.Array, pa.ChunkedArray)):
            # Convert only the few rows that enter (string ids become Python objects).
            kept = ids.filter(pa.array(keep)).to_numpy(zero_copy_only=False)
        else:
            kept = np.asarray(ids)[keep]
        row_ids = np.concatenate([self._ids, np.asarray(kept, dtype=object)])
        order = np.lexsort((distance, cluster))  # by cluster, then distance
        cluster, distance, row_ids = cluster[order], distance[order], row_ids[order]
        first = np.searchsorted(cluster, cluster, side="left")
        top = (np.arange(cluster.size) - first) < self.nearest
        self._cluster, self._distance, self._ids = cluster[top], distance[top], row_ids[top]
        counts = np.bincount(self._cluster, minlength=self.k)
        last = np.searchsorted(self._cluster, np.arange(self.k), side="right") - 1
        full = counts >= self.nearest
        self._bar = np.where(full, self._distance[np.maximum(last, 0)], np.inf)

    def rows(self) -> list[dict]:
        """One dict per cluster: cluster, size, mean_distance, mean_energy (None without
        energies), nearest_ids (JSON-ready Python values)."""
        out = []
        starts = np.searchsorted(self._cluster, np.arange(self.k + 1), side="left")
        for c in range(self.k):
            n = int(self.sizes[c])
            ids = self._ids[starts[c] : starts[c + 1]]
            out.append(
                {
                    "cluster": c,
                    "size": n,
                    "mean_distance": float(self.distance_sum[c] / n) if n else None,
                    "mean_energy": (
                        float(self.energy_sum[c] / self.energy_rows[c])
                        if self.energy_rows[c]
                        else None
                    ),
                    "nearest_ids": [v.item() if hasattr(v, "item") else v for v in ids],
                }
            )
        return out
