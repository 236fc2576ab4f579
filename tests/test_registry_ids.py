"""Cluster ids across refreshes: the bounded optimal matching against a brute-force
reference, and the id bookkeeping (kept, new, retired, never reused)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from clam_dist.registry.ids import map_ids, match_bounds, optimal_pairs


def _brute_force(new, parent, bounds):
    """Every partial matching of pairs within bounds; the cost of the module's rule."""
    d = np.sqrt(((new[:, None, :] - parent[None, :, :]) ** 2).sum(-1))
    best, best_pairs = np.inf, None
    n_new, n_old = len(new), len(parent)
    for size in range(0, min(n_new, n_old) + 1):
        for rows in itertools.combinations(range(n_new), size):
            for cols in itertools.permutations(range(n_old), size):
                if any(d[r, c] > bounds[c] for r, c in zip(rows, cols)):
                    continue
                cost = sum(d[r, c] / bounds[c] for r, c in zip(rows, cols)) + (n_new - size)
                if cost < best - 1e-12:
                    best, best_pairs = cost, sorted(zip(rows, cols))
    return best_pairs


@pytest.mark.parametrize("seed", range(30))
def test_optimal_pairs_equal_a_brute_force_reference(seed):
    rng = np.random.default_rng(seed)
    n_old, n_new = rng.integers(1, 5), rng.integers(1, 5)
    parent = rng.normal(size=(n_old, 3))
    new = np.vstack([parent + rng.normal(scale=0.4, size=parent.shape), rng.normal(size=(4, 3))])
    new = new[rng.permutation(len(new))[:n_new]]
    bounds = match_bounds(parent, 0.6)
    assert sorted(optimal_pairs(new, parent, bounds)) == _brute_force(new, parent, bounds)


def test_unchanged_prototypes_keep_their_ids_and_new_ones_get_unused_ids():
    rng = np.random.default_rng(0)
    parent = rng.normal(scale=10, size=(6, 4))
    parent_ids = [0, 1, 2, 5, 7, 9]  # 3, 4, 6, 8 were used once and retired
    # rows 0-3 survive (slightly moved, shuffled), 4 and 5 vanish, two appear
    moved = parent[[3, 0, 2, 1]] + 0.01
    new = np.vstack([moved, rng.normal(scale=10, size=(2, 4)) + 100.0])
    m = map_ids(new, parent, parent_ids, next_id=10, match_bound=0.5)
    assert m.ids[:4] == [5, 0, 2, 1]
    assert m.ids[4:] == [10, 11] and m.new == [10, 11]
    assert sorted(m.retired) == [7, 9]
    assert m.next_id == 12
    assert m.matched == {5: 0, 0: 1, 2: 2, 1: 3}
    card = m.to_card()
    assert card["retired"] == m.retired and card["next_id"] == 12


def test_a_prototype_that_moved_past_its_bound_gets_a_new_id():
    parent = np.array([[0.0, 0.0], [10.0, 0.0]])
    new = np.array([[0.1, 0.0], [4.0, 0.0]])  # the second moved 6 (bound 0.5 x 10 = 5)
    m = map_ids(new, parent, [0, 1], next_id=2, match_bound=0.5)
    assert m.ids == [0, 2] and m.retired == [1]


def test_next_id_never_below_a_parent_id():
    m = map_ids(np.ones((1, 2)) * 50, np.zeros((1, 2)), [41], next_id=0, match_bound=0.5)
    assert m.ids == [42] and m.retired == [41]


def test_bad_parent_ids_are_refused():
    with pytest.raises(ValueError, match="2 parent ids for 3"):
        map_ids(np.zeros((1, 2)), np.zeros((3, 2)), [0, 1], 0, 0.5)
