"""Cluster ids that stay put across refreshes.

A refreshed model's prototypes are matched to its parent's by an optimal matching on
prototype distance with a bound: a pair counts only when the distance is within the
parent prototype's bound (``match_bound`` x its distance to its nearest other parent
prototype: it moved less than that far towards a neighbour). Among all matchings of
pairs within bounds the one chosen minimises the sum of distance/bound over matched pairs
plus 1 per unmatched new prototype, so matching more pairs always wins over matching
fewer, and among as many pairs the closer ones win. Matched prototypes keep the parent's
id; the others get ids never used before; parent ids left unmatched are retired and never
reused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

# Cost of a pair that is out of bounds: never chosen while "unmatched" (cost 1) is open.
_OUT_OF_BOUNDS = 1e6


@dataclass
class IdMapping:
    ids: list[int]  # id of each new prototype, in the new model's order
    matched: dict[int, int] = field(default_factory=dict)  # parent id -> the same id's new row
    new: list[int] = field(default_factory=list)  # ids given out for the first time
    retired: list[int] = field(default_factory=list)  # parent ids that did not survive
    next_id: int = 0  # the next id never used
    distances: dict[int, float] = field(default_factory=dict)  # matched id -> distance moved

    def to_card(self) -> dict:
        return {
            "matched": {str(k): v for k, v in self.matched.items()},
            "new": list(self.new),
            "retired": list(self.retired),
            "next_id": self.next_id,
            "moved": {str(k): round(v, 6) for k, v in self.distances.items()},
        }


def match_bounds(parent: np.ndarray, match_bound: float) -> np.ndarray:
    """Each parent prototype's bound: ``match_bound`` x its distance to the nearest other
    parent prototype (a single prototype: its distance to the origin, or 1)."""
    parent = np.asarray(parent, np.float64)
    if len(parent) < 2:
        return np.full(len(parent), match_bound * max(float(np.linalg.norm(parent)), 1.0))
    d = _distances(parent, parent)
    np.fill_diagonal(d, np.inf)
    return match_bound * d.min(axis=1)


def optimal_pairs(new: np.ndarray, parent: np.ndarray, bounds: np.ndarray) -> list[tuple[int, int]]:
    """(new row, parent row) pairs of the optimal bounded matching (module docstring)."""
    n_new, n_old = len(new), len(parent)
    if n_new == 0 or n_old == 0:
        return []
    ratio = _distances(new, parent) / np.maximum(bounds, 1e-12)[None, :]
    cost = np.where(ratio <= 1.0, ratio, _OUT_OF_BOUNDS)
    # One "stay unmatched" column per new prototype, at cost 1, only on its own row.
    unmatched = np.full((n_new, n_new), _OUT_OF_BOUNDS)
    np.fill_diagonal(unmatched, 1.0)
    rows, cols = linear_sum_assignment(np.hstack([cost, unmatched]))
    return [(int(r), int(c)) for r, c in zip(rows, cols) if c < n_old and ratio[r, c] <= 1.0]


def map_ids(
    new: np.ndarray,
    parent: np.ndarray,
    parent_ids: list[int],
    next_id: int,
    match_bound: float,
) -> IdMapping:
    """Ids for the prototypes ``new`` of a model refreshed from ``parent`` (whose rows
    carry ``parent_ids``); ``next_id``: the lowest id never used by any version."""
    if len(parent_ids) != len(parent):
        raise ValueError(f"{len(parent_ids)} parent ids for {len(parent)} parent prototypes")
    next_id = max([next_id, *(i + 1 for i in parent_ids)])
    pairs = optimal_pairs(new, parent, match_bounds(parent, match_bound))
    ids: list[int | None] = [None] * len(new)
    mapping = IdMapping(ids=[])
    dist = _distances(new, parent) if pairs else None
    for r, c in pairs:
        ids[r] = int(parent_ids[c])
        mapping.matched[int(parent_ids[c])] = r
        mapping.distances[int(parent_ids[c])] = float(dist[r, c])
    for r in range(len(new)):
        if ids[r] is None:
            ids[r] = next_id
            mapping.new.append(next_id)
            next_id += 1
    kept = {parent_ids[c] for _, c in pairs}
    mapping.retired = [int(i) for i in parent_ids if i not in kept]
    mapping.ids = [int(i) for i in ids]
    mapping.next_id = next_id
    return mapping


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(sq, 0.0))
