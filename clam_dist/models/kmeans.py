"""k-means baselines in torch, on the same chunked distance kernel as the AM dynamics.

k-means++ (greedy, as scikit-learn), k-means|| (Bahmani et al.) for large k at scale,
Lloyd's algorithm, and mini-batch k-means with per-centre learning rates. The mini-batch
update is split into ``batch_sums_counts`` (local, per worker) and ``apply_sums_counts``
(after an all-reduce) so the distributed trainer reuses exactly this math.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from clam_dist.models.am import (
    NEAREST_BLOCK_ELEMS,
    Metric,
    nearest_prototypes,
    normalize_rows,
    offset_score_blocks,
    set_matmul_precision,
    squared_distances,
)
from clam_dist.models.kmeans_swaps import nearest_two, refine_by_swaps

# Rows per block when scoring k-means++ candidates (bounded memory for any n).
_PP_ROW_CHUNK = 1 << 18


@dataclass
class KMeansResult:
    centers: torch.Tensor  # (k, d)
    labels: torch.Tensor | None  # (n,); None when only sample centroids were fitted
    inertia: float
    n_iter: int
    # Per row: squared distance to the nearest and to the second-nearest centre, kept
    # only by ``lloyd(..., keep_second=True)`` (what a centroid-swap plan reads).
    nearest_sq: torch.Tensor | None = None
    second_sq: torch.Tensor | None = None


# faiss's rule of thumb: fewer rows than this per centroid gives noisy centroids.
MIN_ROWS_PER_CENTROID = 39


def row_sq_norms(x: torch.Tensor) -> torch.Tensor:
    """||x_i||^2 for every row, computed once per fit and reused by every pass."""
    return torch.einsum("ij,ij->i", x, x)


@torch.no_grad()
def assign_nearest(
    x: torch.Tensor,
    centers: torch.Tensor,
    x_sq: torch.Tensor | None = None,
    block_elems: int = NEAREST_BLOCK_ELEMS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared distance to, and index of, the nearest centre for every row: (n,), (n,).

    Fused per row block (``am.offset_score_blocks``: one addmm computes ||c||^2 - 2 x.c,
    so no (n, k) norm sum is ever built), then a min over the block. ||x||^2 is constant
    over centres, so it is added to the n minima only, not to the n*k block.
    """
    n = x.shape[0]
    if x_sq is None:
        x_sq = row_sq_norms(x)
    vals = torch.empty(n, dtype=x.dtype, device=x.device)
    idx = torch.empty(n, dtype=torch.long, device=x.device)
    for r0, block in offset_score_blocks(x, centers, block_elems):
        r1 = r0 + block.shape[0]
        torch.min(block, dim=1, out=(vals[r0:r1], idx[r0:r1]))
    # Clamp: cancellation in ||x||^2 - 2x.c + ||c||^2 can leave tiny negatives.
    return vals.add_(x_sq).clamp_(min=0.0), idx


def nearest_centers(
    x: torch.Tensor, centers: torch.Tensor, metric: Metric
) -> tuple[torch.Tensor, torch.Tensor]:
    """(squared distance to the nearest centre, its index) under ``metric``."""
    if metric == "spherical":
        x, centers = normalize_rows(x), normalize_rows(centers)
    return assign_nearest(x, centers)


def _sq_dist_to_nearest(x: torch.Tensor, centers: torch.Tensor, metric: Metric) -> torch.Tensor:
    return nearest_centers(x, centers, metric)[0]


@torch.no_grad()
def kmeans_plus_plus(
    x: torch.Tensor,
    k: int,
    generator: torch.Generator | None = None,
    n_local_trials: int | None = None,
    metric: Metric = "euclidean",
) -> torch.Tensor:
    """Greedy k-means++ seeding: each new centre is the best of several D^2-sampled trials.

    Cost is k passes over x, so callers with large n pass a subsample (``kmeans_fit`` does).
    Row norms are computed once; each pass is one (n x trials) GEMM plus a min.
    """
    n = x.shape[0]
    if k < 1 or k > n:
        raise ValueError(f"k-means++ needs 1 <= k <= n_samples, got k={k}, n_samples={n}")
    if metric == "spherical":
        x = normalize_rows(x)
    trials = n_local_trials or 2 + int(math.log(k))
    x_sq = row_sq_norms(x)
    first = int(torch.randint(n, (1,), generator=generator).item())
    chosen = [first]
    # Work with offset distances ||c||^2 - 2 x.c (= d^2 - ||x||^2): ||x||^2 is the same for
    # every candidate, so it changes neither min(closest, d2) per row nor the argmin of the
    # potentials; each trial round is then one addmm, one minimum and one sum.
    closest_off = _offset_dist(x, x[[first]])[:, 0]
    # Column sums as a GEMV: a tall-thin reduction over dim 0 is slow in torch on CPU.
    ones = torch.ones(min(n, _PP_ROW_CHUNK), dtype=x.dtype, device=x.device)
    for _ in range(1, k):
        closest = (closest_off + x_sq).clamp_(min=0.0)
        total = closest.sum()
        if total <= 0:
            # All points coincide with a centre: any remaining point is as good as another.
            idx = torch.randint(n, (trials,), generator=generator)
        else:
            idx = torch.multinomial(closest / total, trials, True, generator=generator)
        pots = torch.zeros(trials, dtype=torch.float64)
        parts = []
        # Potential of each candidate = sum of min(closest, dist to candidate); rows are
        # chunked so memory stays O(chunk x trials) whatever n is.
        for r0 in range(0, n, _PP_ROW_CHUNK):
            d2 = _offset_dist(x[r0 : r0 + _PP_ROW_CHUNK], x[idx])
            torch.minimum(d2, closest_off[r0 : r0 + _PP_ROW_CHUNK, None], out=d2)
            pots += torch.mv(d2.t(), ones[: d2.shape[0]]).double()
            parts.append(d2)
        best = int(pots.argmin())
        closest_off = (
            parts[0][:, best] if len(parts) == 1 else torch.cat([p[:, best] for p in parts])
        )
        chosen.append(int(idx[best]))
    return x[chosen].clone()


def _offset_dist(xr: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """||c||^2 - 2 x.c for rows xr against candidates cand, shape (rows, m).

    A plain mm then an in-place add: for a thin (m ~ 8) product, addmm's broadcast input
    costs more than the GEMM itself (measured ~2.5x on CPU)."""
    return torch.mm(xr, cand.t().mul(-2.0)).add_(row_sq_norms(cand))


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
    x: torch.Tensor,
    centers: torch.Tensor,
    metric: Metric = "euclidean",
    labels: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-centre sums and counts of the points assigned to each centre (and the labels).

    Summable across workers: all-reducing sums and counts gives the global statistics.
    ``labels``: the rows' nearest centres when the caller already has them (the trainer's
    monitor computes them from the same scores), so the distances are not computed again.
    """
    if metric == "spherical":
        x, centers = normalize_rows(x), normalize_rows(centers)
    if labels is None:
        _, labels = assign_nearest(x, centers)
    sums, counts = _sums_counts(x, labels, centers.shape[0])
    return sums, counts, labels


def _sums_counts(
    x: torch.Tensor, labels: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    # index_add_ rather than a one-hot GEMM: one memory pass instead of 2*n*k*d FLOPs, and
    # deterministic on CPU (rows are added in index order).
    sums = torch.zeros((k, x.shape[1]), dtype=x.dtype, device=x.device).index_add_(0, labels, x)
    counts = torch.bincount(labels, minlength=k).to(x.dtype)
    return sums, counts


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


# Relative size of the perturbation that splits a centroid in two (faiss uses 1/1024).
_SPLIT_EPS = 1.0 / 1024


@torch.no_grad()
def split_empty(centers: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Repair empty clusters by splitting the largest one (the faiss recipe).

    Each empty centre becomes a copy of the currently largest cluster's centre shifted by
    +eps, the donor is shifted by -eps (eps = 1/1024 of the coordinate's magnitude, sign
    alternating over coordinates), and the donor's count is halved between the two, so the
    next largest cluster donates for the next empty centre. The next assignment pass then
    divides the donor's rows between the two copies. No extra data pass is needed.
    Returns (centres, number of clusters repaired).
    """
    empty = torch.nonzero(counts == 0).flatten().tolist()
    if not empty:
        return centers, 0
    centers, counts = centers.clone(), counts.clone()
    d = centers.shape[1]
    sign = torch.ones(d, dtype=centers.dtype, device=centers.device)
    sign[1::2] = -1.0
    for j in empty:
        donor = int(counts.argmax())
        if counts[donor] <= 1:
            break  # nothing left to split: more centres than distinct points
        c = centers[donor]
        # Scale by the coordinate's magnitude (floored by the centre's mean magnitude, so
        # zero coordinates still move) to keep the split relative, as faiss does.
        delta = _SPLIT_EPS * sign * torch.maximum(c.abs(), c.abs().mean().clamp_min(1e-12))
        centers[j] = c + delta
        centers[donor] = c - delta
        half = torch.floor(counts[donor] / 2)
        counts[j], counts[donor] = half, counts[donor] - half
    return centers, len(empty)


@torch.no_grad()
def lloyd(
    x: torch.Tensor,
    init_centers: torch.Tensor,
    max_iter: int = 300,
    tol: float = 1e-4,
    metric: Metric = "euclidean",
    x_sq: torch.Tensor | None = None,
    callback=None,
    keep_second: bool = False,
) -> KMeansResult:
    """Lloyd's algorithm.

    One data pass per iteration: the fused assignment (``assign_nearest``) gives labels
    AND the inertia of the current centres, then index_add_ gives the new means. Stops
    when the inertia's relative decrease falls below ``tol`` (or labels stop changing);
    the returned labels/inertia are then those of the returned centres with no extra pass.
    Only when max_iter updates run out is one final assignment pass made. Empty clusters
    are repaired by ``split_empty``. ``x_sq`` (row norms) may be passed in to reuse them;
    ``callback(iteration, inertia)`` sees the inertia of every pass. ``keep_second``:
    every pass also finds each row's second-nearest centre (one more min over the block)
    and the result keeps both distances, so a centroid-swap plan needs no pass of its own.
    """
    if metric == "spherical":
        x = normalize_rows(x)
    if x_sq is None:
        x_sq = row_sq_norms(x)
    k = init_centers.shape[0]
    centers = init_centers.clone().to(x.dtype)
    if metric == "spherical":
        centers = normalize_rows(centers)
    prev_inertia, prev_labels = float("inf"), None
    n_iter = 0
    while True:
        if keep_second:
            d2, second, labels = nearest_two(x, centers, x_sq)
        else:
            (d2, labels), second = assign_nearest(x, centers, x_sq), None
        cur = float(d2.sum(dtype=torch.float64))
        if callback is not None:
            callback(n_iter, cur)
        converged = (prev_labels is not None and torch.equal(labels, prev_labels)) or (
            prev_inertia - cur <= tol * cur
        )
        if converged or n_iter >= max_iter:
            if not keep_second:
                d2 = None
            return KMeansResult(centers, labels, cur, n_iter, d2, second)
        sums, counts = _sums_counts(x, labels, k)
        new_centers = apply_lloyd(centers, sums, counts, metric)
        centers, _ = split_empty(new_centers, counts)
        if metric == "spherical":
            centers = normalize_rows(centers)
        prev_inertia, prev_labels = cur, labels
        n_iter += 1


def _swapped_start(
    xs: torch.Tensor,
    xs_sq: torch.Tensor,
    seeds: torch.Tensor,
    rounds: int,
    fraction: float,
    per_centroid: int | None,
    passes: int,
    tol: float,
    generator: torch.Generator | None,
    callback,
) -> tuple[torch.Tensor, int]:
    """Centroids after Lloyd + swap rounds on at most per_centroid * k rows of xs, and
    the Lloyd iterations that took. With swaps ahead, Lloyd's last passes (each < 0.1%)
    are left out: a swap round moves the inertia by 0.1-1%, a late Lloyd pass by 0.01%."""
    k = seeds.shape[0]
    keep = None if per_centroid is None else _draw_sample(xs.shape[0], per_centroid * k, generator)
    xw, xw_sq = (xs, xs_sq) if keep is None else (xs[keep], xs_sq[keep])
    loose = max(tol, SWAP_LLOYD_TOL)

    def cb(i, v):
        return callback("swaps", i, v) if callback else None

    def relloyd(centers: torch.Tensor) -> KMeansResult:
        return lloyd(xw, centers, passes, loose, "euclidean", xw_sq, cb, keep_second=True)

    res = refine_by_swaps(xw, relloyd(seeds), relloyd, xw_sq, rounds, fraction, loose)
    return res.centers, res.n_iter


# Centroid swaps' defaults: at most this share of k moved per round, planned on at most
# this many rows per centroid.
SWAP_FRACTION = 0.05
SWAP_SAMPLE_PER_CENTROID = 64


def lloyd_with_swaps(
    x: torch.Tensor,
    seeds: torch.Tensor,
    max_iter: int = 100,
    tol: float = 1e-4,
    metric: Metric = "euclidean",
    swap_rounds: int = 8,
    generator: torch.Generator | None = None,
    *,
    swap_fraction: float = SWAP_FRACTION,
    swap_sample_per_centroid: int | None = SWAP_SAMPLE_PER_CENTROID,
    x_sq: torch.Tensor | None = None,
    callback=None,
    stage: str = "full",
) -> KMeansResult:
    """Lloyd from ``seeds`` on all of ``x``, with up to ``swap_rounds`` rounds of centroid
    swaps first (Euclidean only; ``kmeans_fit``'s step 2): the seeds' Lloyd basin
    otherwise keeps two centroids in one group and one centroid over two groups.
    ``x_sq``: the row norms when the caller has them (Euclidean: computed here
    otherwise). ``callback(stage, iteration, inertia)`` sees every pass: "swaps" for the
    runs around the swaps, ``stage`` for the final Lloyd."""
    if x_sq is None and metric == "euclidean":
        x_sq = row_sq_norms(x)
    start, prior_iter = seeds, 0
    if swap_rounds > 0 and metric == "euclidean" and seeds.shape[0] >= 2:
        start, prior_iter = _swapped_start(
            x, x_sq, seeds, swap_rounds, swap_fraction, swap_sample_per_centroid, max_iter,
            tol, generator, callback,
        )  # fmt: skip

    def cb(i, v):
        return callback(stage, i, v) if callback else None

    res = lloyd(x, start, max_iter, tol, metric, x_sq, cb)
    res.n_iter += prior_iter
    return res


# Relative inertia change that ends the Lloyd runs around centroid swaps (the caller's
# tol, if looser, wins; the final Lloyd always runs to the caller's tol).
SWAP_LLOYD_TOL = 1e-3

# Distance evaluations (rows x centres x trials) that k-means++ seeding may spend: 2^31
# takes ~10 s on 2 CPU cores and bounds the seeding sample only when k is large.
SEEDING_EVALUATIONS = 1 << 31


def seeding_rows(k: int) -> int:
    """Rows k-means++ seeds from: at most SEEDING_EVALUATIONS / (k * trials), at least
    8 per centroid. At k = 256 this is 1.1M (the 256-per-centroid sample is smaller, so
    all of it is used); at k = 4,096, 52k rows (about 13 per centroid), and the Lloyd
    passes on the full sample then move the seeds to where the data needs them."""
    trials = 2 + int(math.log(k))
    return max(8 * k, SEEDING_EVALUATIONS // (k * trials))


def _draw_sample(n: int, size: int, generator: torch.Generator | None) -> torch.Tensor | None:
    """Sorted random row indices (sorted: gathering in memory order is faster); None = all."""
    if size >= n:
        return None
    return torch.randperm(n, generator=generator)[:size].sort().values


@torch.no_grad()
def kmeans_fit(
    x: torch.Tensor,
    k: int,
    *,
    init: str = "k-means++",
    n_init: int = 1,
    max_iter: int = 300,
    tol: float = 1e-4,
    sample_per_centroid: int | None = 256,
    sample_iter: int = 25,
    full_iter: int | None = None,
    swap_rounds: int = 8,
    swap_fraction: float = SWAP_FRACTION,
    swap_sample_per_centroid: int | None = SWAP_SAMPLE_PER_CENTROID,
    generator: torch.Generator | None = None,
    metric: Metric = "euclidean",
    callback=None,
) -> KMeansResult:
    """k-means at scale: seed and train on a bounded subsample, finish on all rows.

    1. Draw ``sample_per_centroid * k`` rows (m = 256 by default, faiss's
       max_points_per_centroid; None = all rows). Seeding (k-means++ or k-means||, on at
       most ``seeding_rows(k)`` of them) and at most ``sample_iter`` Lloyd passes run on
       this sample: their cost no longer grows
       with n, and 256 rows per centroid already place the centroids close to where full
       Lloyd ends (so the few full passes that follow are the only O(n) work).
    2. ``n_init`` restarts are compared by sample inertia (cheap: only the sample).
    3. Lloyd then continues on all rows from the best sample centroids for at most
       ``full_iter`` passes (default max_iter) until the relative inertia change < tol.
       ``full_iter=0`` returns the sample centroids with ``labels=None`` (no O(n) pass).
       When the sample is all rows this is simply Lloyd from the seeds.
    Before 2's Lloyd, up to ``swap_rounds`` rounds of centroid swaps
    (``kmeans_swaps.refine_by_swaps``: up to ``swap_fraction * k`` centroids moved from
    the cheapest removals to the most profitable splits, then Lloyd again, kept only if
    the inertia fell) take Lloyd out of the local minima it cannot leave (Euclidean
    metric; 0 disables them). They run on at most ``swap_sample_per_centroid * k`` rows
    of the sample (None: all of it), so at large k, where the sample is every row, their
    passes stay cheap; the sample's Lloyd then starts from the swapped centroids.

    Warns when fewer than 39 rows per centroid are available (faiss's threshold).
    ``callback(stage, iteration, inertia)`` sees every pass; stage is "swaps" (the Lloyd
    runs around the swaps), "sample" or "full".
    """
    n = x.shape[0]
    if k < 1 or k > n:
        raise ValueError(f"k-means needs 1 <= k <= n_samples, got k={k}, n_samples={n}")
    if init not in ("k-means++", "k-means||"):
        raise ValueError(f"init must be 'k-means++' or 'k-means||', got {init!r}")
    if n < MIN_ROWS_PER_CENTROID * k:
        warnings.warn(
            f"k-means: {n} rows for {k} centroids ({n / k:.1f} per centroid); fewer than "
            f"{MIN_ROWS_PER_CENTROID} per centroid gives noisy centroids",
            stacklevel=2,
        )
    set_matmul_precision()
    if metric == "spherical":
        x = normalize_rows(x)
    size = n if sample_per_centroid is None else max(k, sample_per_centroid * k)
    best = None
    for _ in range(max(1, n_init)):
        rows = _draw_sample(n, size, generator)
        xs = x if rows is None else x[rows]
        # Seeding is k sequential passes over its rows: bound those rows so that its cost
        # does not grow as k^2 (at k = 4,096 a 256-per-centroid sample would take hours).
        seed_rows = _draw_sample(xs.shape[0], seeding_rows(k), generator)
        xseed = xs if seed_rows is None else xs[seed_rows]
        if init == "k-means++":
            seeds = kmeans_plus_plus(xseed, k, generator)
        else:
            seeds = kmeans_parallel_init(xseed, k, generator=generator)
        # Without a subsample this Lloyd run is the final one; else the sample's.
        full_run = rows is None
        stage, passes = ("full", max_iter) if full_run else ("sample", min(max_iter, sample_iter))
        res = lloyd_with_swaps(
            xs, seeds, passes, tol, metric, swap_rounds, generator,
            swap_fraction=swap_fraction, swap_sample_per_centroid=swap_sample_per_centroid,
            x_sq=row_sq_norms(xs), callback=callback, stage=stage,
        )  # fmt: skip
        if rows is not None:
            res.labels = None  # sample labels mean nothing for the full data
        if best is None or res.inertia < best.inertia:
            best = res
    if best.labels is not None or full_iter == 0:
        return best  # full_iter=0: sample centroids only (labels None), no pass over x

    def full_cb(i, v):
        return callback("full", i, v) if callback else None

    full = lloyd(
        x, best.centers, max_iter if full_iter is None else full_iter, tol, metric, callback=full_cb
    )
    full.n_iter += best.n_iter
    return full


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
    centers, _ = split_empty(centers, counts)
    _, _, labels = batch_sums_counts(x, centers, metric)
    return KMeansResult(centers, labels, inertia(x, centers, metric), max_steps)
