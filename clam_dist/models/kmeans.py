"""k-means baselines in torch, on the same chunked distance kernel as the AM dynamics.

k-means++ (greedy, as scikit-learn), k-means|| (Bahmani et al.) for large k at scale,
Lloyd's algorithm, and mini-batch k-means with per-centre learning rates. The mini-batch
update is split into ``batch_sums_counts`` (local, per worker) and ``apply_sums_counts``
(after an all-reduce) so the distributed trainer reuses exactly this math.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from clam_dist.models.am import Metric, nearest_prototypes, normalize_rows, squared_distances

# Rows per block when scoring k-means++ candidates (bounded memory for any n).
_PP_ROW_CHUNK = 65_536


@dataclass
class KMeansResult:
    centers: torch.Tensor  # (k, d)
    labels: torch.Tensor  # (n,)
    inertia: float
    n_iter: int


def _sq_dist_to_nearest(x: torch.Tensor, centers: torch.Tensor, metric: Metric) -> torch.Tensor:
    d2, _ = nearest_prototypes(x, centers, metric, top=1)
    return d2[:, 0]


@torch.no_grad()
def kmeans_plus_plus(
    x: torch.Tensor,
    k: int,
    generator: torch.Generator | None = None,
    n_local_trials: int | None = None,
    metric: Metric = "euclidean",
) -> torch.Tensor:
    """Greedy k-means++ seeding: each new centre is the best of several D^2-sampled trials."""
    n = x.shape[0]
    if k < 1 or k > n:
        raise ValueError(f"k-means++ needs 1 <= k <= n_samples, got k={k}, n_samples={n}")
    if metric == "spherical":
        x = normalize_rows(x)
    trials = n_local_trials or 2 + int(math.log(k))
    first = int(torch.randint(n, (1,), generator=generator).item())
    centers = [x[first]]
    closest = _sq_dist_to_nearest(x, x[first : first + 1], "euclidean")
    for _ in range(1, k):
        total = closest.sum()
        if total <= 0:
            # All points coincide with a centre: any remaining point is as good as another.
            idx = torch.randint(n, (trials,), generator=generator)
        else:
            idx = torch.multinomial(closest / total, trials, replacement=True, generator=generator)
        cand = x[idx]
        # Potential of each candidate = sum of min(closest, dist to candidate); rows are
        # chunked so memory stays O(chunk x trials) whatever n is.
        pots = torch.zeros(trials, dtype=torch.float64)
        for r0 in range(0, n, _PP_ROW_CHUNK):
            d2 = squared_distances(x[r0 : r0 + _PP_ROW_CHUNK], cand)
            pots += torch.minimum(closest[r0 : r0 + _PP_ROW_CHUNK, None], d2).sum(0).double()
        best = int(pots.argmin())
        closest = torch.minimum(closest, squared_distances(x, cand[best : best + 1])[:, 0])
        centers.append(cand[best])
    return torch.stack(centers).clone()


@torch.no_grad()
def kmeans_parallel_init(
    x: torch.Tensor,
    k: int,
    rounds: int = 5,
    oversampling: float = 2.0,
    generator: torch.Generator | None = None,
    metric: Metric = "euclidean",
) -> torch.Tensor:
    """k-means|| : a few rounds that each sample ~oversampling*k points with prob ~ D^2,
    then weighted k-means++ on the (small) candidate set. Fewer sequential passes than
    k-means++ when k is large; at scale each round is one pass over the data."""
    n = x.shape[0]
    if k < 1 or k > n:
        raise ValueError(f"k-means|| needs 1 <= k <= n_samples, got k={k}, n_samples={n}")
    if metric == "spherical":
        x = normalize_rows(x)
    first = int(torch.randint(n, (1,), generator=generator).item())
    cand = x[first : first + 1]
    closest = _sq_dist_to_nearest(x, cand, "euclidean")
    ell = oversampling * k
    for _ in range(rounds):
        total = closest.sum()
        if total <= 0:
            break
        probs = (ell * closest / total).clamp(max=1.0)
        picked = torch.rand(n, generator=generator) < probs
        if picked.any():
            cand = torch.cat([cand, x[picked]])
            closest = torch.minimum(closest, _sq_dist_to_nearest(x, x[picked], "euclidean"))
    if cand.shape[0] < k:
        # Too few candidates (tiny or degenerate data): top up with distinct random points.
        extra = torch.randperm(n, generator=generator)[: k - cand.shape[0]]
        cand = torch.cat([cand, x[extra]])
    # Weight each candidate by the number of points closest to it, then reduce to k.
    _, owner = nearest_prototypes(x, cand, "euclidean", top=1)
    weights = torch.bincount(owner[:, 0], minlength=cand.shape[0]).to(x.dtype)
    return _weighted_kmeans_pp(cand, weights, k, generator)


def _weighted_kmeans_pp(points, weights, k, generator, lloyd_iters: int = 20) -> torch.Tensor:
    """Reduce weighted candidates to k centres: greedy weighted k-means++ seeding, then
    weighted Lloyd on the candidates (cheap: the candidate set is ~rounds*l points)."""
    trials = 2 + int(math.log(k))
    first = int(torch.multinomial(weights / weights.sum(), 1, generator=generator).item())
    chosen = [first]
    closest = ((points - points[first]) ** 2).sum(1)
    for _ in range(1, k):
        score = weights * closest
        if score.sum() <= 0:
            taken = set(chosen)
            chosen.append(next(i for i in range(points.shape[0]) if i not in taken))
            continue
        cand = torch.multinomial(score / score.sum(), trials, replacement=True, generator=generator)
        cand_d2 = squared_distances(points, points[cand])
        pots = (weights[:, None] * torch.minimum(closest[:, None], cand_d2)).sum(0)
        best = int(pots.argmin())
        chosen.append(int(cand[best]))
        closest = torch.minimum(closest, cand_d2[:, best])
    centers = points[chosen].clone()
    for _ in range(lloyd_iters):
        _, idx = nearest_prototypes(points, centers, "euclidean", top=1)
        lab = idx[:, 0]
        sums = torch.zeros_like(centers).index_add_(0, lab, points * weights[:, None])
        mass = torch.zeros(k, dtype=points.dtype).index_add_(0, lab, weights)
        hit = mass > 0
        centers[hit] = sums[hit] / mass[hit, None]
    return centers


@torch.no_grad()
def batch_sums_counts(
    x: torch.Tensor, centers: torch.Tensor, metric: Metric = "euclidean"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-centre sums and counts of the points assigned to each centre (and the labels).

    Summable across workers: all-reducing sums and counts gives the global statistics.
    """
    if metric == "spherical":
        x = normalize_rows(x)
    _, idx = nearest_prototypes(x, centers, metric, top=1)
    labels = idx[:, 0]
    k = centers.shape[0]
    sums = torch.zeros_like(centers).index_add_(0, labels, x)
    counts = torch.bincount(labels, minlength=k).to(centers.dtype)
    return sums, counts, labels


@torch.no_grad()
def apply_minibatch(
    centers: torch.Tensor,
    total_counts: torch.Tensor,
    sums: torch.Tensor,
    counts: torch.Tensor,
    metric: Metric = "euclidean",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mini-batch k-means update (Sculley 2010) from (all-reduced) batch sums and counts.

    Each centre moves to the running mean of every point ever assigned to it: the
    per-centre learning rate is counts / total_counts after the update.
    """
    new_total = total_counts + counts
    hit = counts > 0
    new_centers = centers.clone()
    new_centers[hit] = (centers[hit] * total_counts[hit, None] + sums[hit]) / new_total[hit, None]
    if metric == "spherical":
        new_centers = normalize_rows(new_centers)
    return new_centers, new_total


# The name the distributed trainer and the docs use for the all-reduced mini-batch update.
apply_sums_counts = apply_minibatch


@torch.no_grad()
def minibatch_update(
    centers: torch.Tensor,
    total_counts: torch.Tensor,
    batch: torch.Tensor,
    metric: Metric = "euclidean",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One single-process mini-batch step: ``batch_sums_counts`` then ``apply_sums_counts``.

    A distributed step is the same two calls with an all-reduce of (sums, counts) between.
    Returns (new centres, new running counts).
    """
    sums, counts, _ = batch_sums_counts(batch, centers, metric)
    return apply_sums_counts(centers, total_counts, sums, counts, metric)


@torch.no_grad()
def apply_lloyd(
    centers: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor, metric: Metric = "euclidean"
) -> torch.Tensor:
    """Lloyd's update from full-pass (all-reduced) sums and counts; empty centres stay."""
    hit = counts > 0
    new_centers = centers.clone()
    new_centers[hit] = sums[hit] / counts[hit, None]
    if metric == "spherical":
        new_centers = normalize_rows(new_centers)
    return new_centers


@torch.no_grad()
def inertia(x: torch.Tensor, centers: torch.Tensor, metric: Metric = "euclidean") -> float:
    return float(_sq_dist_to_nearest(x, centers, metric).double().sum())


@torch.no_grad()
def _reseed_empty(
    x: torch.Tensor, centers: torch.Tensor, labels: torch.Tensor, counts: torch.Tensor
):
    """Move empty centres onto the points farthest from their centre (as scikit-learn)."""
    empty = torch.nonzero(counts == 0).flatten()
    if empty.numel() == 0:
        return centers
    d2 = ((x - centers[labels]) ** 2).sum(1)
    far = torch.topk(d2, min(empty.numel(), x.shape[0])).indices
    centers = centers.clone()
    centers[empty[: far.numel()]] = x[far]
    return centers


@torch.no_grad()
def lloyd(
    x: torch.Tensor,
    init_centers: torch.Tensor,
    max_iter: int = 300,
    tol: float = 1e-4,
    metric: Metric = "euclidean",
) -> KMeansResult:
    """Lloyd's algorithm. Stops when the squared centre shift falls below tol * mean
    feature variance (scikit-learn's convention), so results match scikit-learn's."""
    if metric == "spherical":
        x = normalize_rows(x)
    centers = init_centers.clone().to(x.dtype)
    tol_abs = tol * float(x.var(dim=0).mean()) if x.shape[0] > 1 else 0.0
    n_iter = 0
    for n_iter in range(1, max_iter + 1):  # noqa: B007 - n_iter is reported
        sums, counts, labels = batch_sums_counts(x, centers, metric)
        new_centers = apply_lloyd(centers, sums, counts, metric)
        new_centers = _reseed_empty(x, new_centers, labels, counts)
        shift = float(((new_centers - centers) ** 2).sum())
        centers = new_centers
        if shift <= tol_abs:
            break
    _, _, labels = batch_sums_counts(x, centers, metric)
    return KMeansResult(centers, labels, inertia(x, centers, metric), n_iter)


@torch.no_grad()
def minibatch_kmeans(
    x: torch.Tensor,
    init_centers: torch.Tensor,
    batch_size: int = 1024,
    max_steps: int = 100,
    generator: torch.Generator | None = None,
    metric: Metric = "euclidean",
) -> KMeansResult:
    """Mini-batch k-means over random batches; empty centres re-seeded at the end."""
    if metric == "spherical":
        x = normalize_rows(x)
    centers = init_centers.clone().to(x.dtype)
    total = torch.zeros(centers.shape[0], dtype=x.dtype)
    n = x.shape[0]
    for _ in range(max_steps):
        idx = torch.randint(n, (min(batch_size, n),), generator=generator)
        centers, total = minibatch_update(centers, total, x[idx], metric)
    _, counts, labels = batch_sums_counts(x, centers, metric)
    centers = _reseed_empty(x, centers, labels, counts)
    _, _, labels = batch_sums_counts(x, centers, metric)
    return KMeansResult(centers, labels, inertia(x, centers, metric), max_steps)
