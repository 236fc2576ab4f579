"""Centroid swaps: move k-means out of the local minima Lloyd cannot leave.

Lloyd converges to a local minimum; on data with many uneven clusters the typical one
has two centroids sharing one dense group while a neighbouring pair of groups shares one
centroid. No Lloyd pass fixes that: each centroid is already the mean of its rows.
scikit-learn's MiniBatchKMeans escapes it by re-seeding centroids that own few rows;
this module does the same with full statistics instead of a random draw:

- the cost of REMOVING centroid j: its rows move to their second-nearest centroid,
  sum_i in j (d2_second - d2_first) (an upper bound: Lloyd can only do better);
- the gain of SPLITTING cluster i: its sum of squares minus that of a 2-means of its own
  rows (a few local iterations on a few hundred rows: no data pass);
- swap greedily while gain > cost (the cheapest centroid moves to the second half of the
  most profitable split), run Lloyd again, and keep the result only if the inertia fell.

One round costs the Lloyd passes that follow it (Lloyd keeps each row's second-nearest
distance, so the plan needs no pass of its own); ``kmeans_fit`` runs the rounds on at
most 64 rows per centroid of its Lloyd sample, never on every row of a large data set.
Pure torch, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from clam_dist.models.am import NEAREST_BLOCK_ELEMS, offset_score_blocks

if TYPE_CHECKING:  # kmeans.py imports this module, so the type only for checkers
    from clam_dist.models.kmeans import KMeansResult

# Local 2-means iterations per split candidate: its rows are few and the split from the
# farthest-row seed settles in a handful of passes.
_SPLIT_ITERS = 6


@torch.no_grad()
def nearest_two(
    x: torch.Tensor,
    centers: torch.Tensor,
    x_sq: torch.Tensor,
    block_elems: int = NEAREST_BLOCK_ELEMS,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(squared distance to the nearest centre, to the second nearest (inf when k = 1),
    nearest index), each (n,), from one score GEMM per row block.

    A min, then the minimum's entry overwritten with inf and a second min, on the block
    in place (it is a scratch buffer): 2.3 ms per 1,024 x 4,096 block where topk(2)
    takes 3.1 and the GEMM 3.8, so a Lloyd pass that keeps the second distance costs
    ~25% more than one that does not."""
    n = x.shape[0]
    first, second = x.new_empty(n), x.new_full((n,), float("inf"))
    idx = torch.empty(n, dtype=torch.long, device=x.device)
    for r0, block in offset_score_blocks(x, centers, block_elems):
        r1 = r0 + block.shape[0]
        torch.min(block, dim=1, out=(first[r0:r1], idx[r0:r1]))
        if block.shape[1] > 1:
            block.scatter_(1, idx[r0:r1, None], float("inf"))
            torch.amin(block, dim=1, out=second[r0:r1])
    # ||x||^2 is constant over centres: added to the 2n results only. Clamp: cancellation.
    return first.add_(x_sq).clamp_(min=0.0), second.add_(x_sq).clamp_(min=0.0), idx


def _segment_argmax(values: torch.Tensor, segment: torch.Tensor, m: int) -> torch.Tensor:
    """Index of the largest value in each of m non-empty segments (first one on ties)."""
    top = values.new_full((m,), -float("inf")).scatter_reduce_(0, segment, values, "amax")
    hit = values == top[segment]
    first = torch.full((m,), values.shape[0], dtype=torch.long, device=values.device)
    where = torch.nonzero(hit).flatten()
    return first.scatter_reduce_(0, segment[hit], where, "amin")


@torch.no_grad()
def split_in_two(
    rows: torch.Tensor, segment: torch.Tensor, centers: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """2-means of m clusters at once: rows (r, d) of cluster ``segment`` (r,) in [0, m),
    each cluster's centre in ``centers`` (m, d). Returns (sum of squares after the split
    (m,) float64, centres a (m, d), centres b (m, d)).

    All m clusters move together (one op per iteration over every row, not m small ops:
    tiny ops cost more in thread hand-offs than in arithmetic). Seeded deterministically
    with the row farthest from the centre and the row farthest from that one (the
    cluster's longest extent), so a cluster spanning two groups splits between them."""
    m = centers.shape[0]
    a = rows[_segment_argmax(((rows - centers[segment]) ** 2).sum(1), segment, m)]
    b = rows[_segment_argmax(((rows - a[segment]) ** 2).sum(1), segment, m)]
    for step in range(_SPLIT_ITERS + 1):
        to_a = ((rows - a[segment]) ** 2).sum(1)
        to_b = ((rows - b[segment]) ** 2).sum(1)
        if step == _SPLIT_ITERS:
            break
        side = segment * 2 + (to_b < to_a).long()
        sums = rows.new_zeros((2 * m, rows.shape[1])).index_add_(0, side, rows)
        counts = torch.bincount(side, minlength=2 * m).to(rows.dtype)[:, None]
        # A side that got no rows keeps its seed: its cluster's rows all coincide.
        means = torch.where(
            counts > 0, sums / counts.clamp_min(1), torch.stack([a, b], 1).reshape(2 * m, -1)
        )
        a, b = means[0::2], means[1::2]
    after = torch.zeros(m, dtype=torch.float64, device=rows.device)
    after.index_add_(0, segment, torch.minimum(to_a, to_b).double())
    return after, a, b


def plan_swaps(
    x: torch.Tensor, result: KMeansResult, x_sq: torch.Tensor, max_swaps: int
) -> tuple[torch.Tensor, int, float]:
    """New centres with up to ``max_swaps`` centroids of the Lloyd result ``result`` moved
    from the cheapest removals to the most profitable splits; returns (centres, swaps
    made, estimated inertia gain). Reads the result's nearest and second-nearest
    distances when Lloyd kept them (``keep_second``), else makes one pass for them."""
    centers = result.centers
    k = centers.shape[0]
    if result.second_sq is not None and result.labels is not None:
        d_first, d_second, labels = result.nearest_sq, result.second_sq, result.labels
    else:
        d_first, d_second, labels = nearest_two(x, centers, x_sq)
    sse = torch.zeros(k, dtype=torch.float64).index_add_(0, labels, d_first.double())
    cost = torch.zeros(k, dtype=torch.float64).index_add_(0, labels, (d_second - d_first).double())
    counts = torch.bincount(labels, minlength=k)
    # Split candidates: the clusters with the largest sums of squares (twice as many as
    # swaps, so that clusters which are one tight group and gain little can be passed over).
    by_sse = torch.argsort(sse, descending=True)
    candidates = by_sse[counts[by_sse] >= 2][: 2 * max_swaps]
    if candidates.numel() == 0:
        return centers, 0, 0.0
    slot = torch.full((k,), -1, dtype=torch.long)
    slot[candidates] = torch.arange(candidates.numel())
    member = slot[labels] >= 0
    after, split_a, split_b = split_in_two(x[member], slot[labels[member]], centers[candidates])
    gains = sse[candidates] - after
    donors = torch.argsort(cost).tolist()
    new_centers, used, made, total = centers.clone(), set(), 0, 0.0
    donor_pos = 0
    for pos in torch.argsort(gains, descending=True).tolist():
        j = int(candidates[pos])
        if made >= max_swaps:
            break
        if j in used:
            continue
        while donor_pos < k and (donors[donor_pos] in used or donors[donor_pos] == j):
            donor_pos += 1
        if donor_pos >= k:
            break
        donor = donors[donor_pos]
        if float(gains[pos]) <= float(cost[donor]):
            break  # gains fall and costs rise from here on: no profitable swap is left
        new_centers[j], new_centers[donor] = split_a[pos], split_b[pos]
        used.update((j, donor))
        made += 1
        total += float(gains[pos]) - float(cost[donor])
    return new_centers, made, total


def refine_by_swaps(
    x: torch.Tensor,
    start: KMeansResult,
    run_lloyd: Callable[[torch.Tensor], KMeansResult],
    x_sq: torch.Tensor,
    rounds: int,
    swap_fraction: float,
    tol: float,
) -> KMeansResult:
    """Rounds of ``plan_swaps`` + Lloyd (``run_lloyd(centres)``, best with
    ``keep_second``) from the converged result ``start``; a round's result is kept only
    if its inertia is lower. Stops early when no profitable swap is left or a round gains
    less than ``tol`` relative. Returns the best result (``start`` itself if no round
    helped)."""
    best = start
    k = start.centers.shape[0]
    if k < 2:
        return best  # nothing to move a centroid to
    max_swaps = max(1, int(swap_fraction * k))
    for _ in range(rounds):
        proposal, made, _ = plan_swaps(x, best, x_sq, max_swaps)
        if made == 0:
            break
        result = run_lloyd(proposal)
        if result.inertia >= best.inertia:
            break
        improvement = (best.inertia - result.inertia) / best.inertia
        result.n_iter += best.n_iter
        best = result
        if improvement < tol:
            break
    return best
