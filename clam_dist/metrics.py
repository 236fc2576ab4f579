"""Clustering quality metrics: silhouette (exact or sampled), NMI, ARI, accuracy, inertia,
AM energy and cluster sizes. Inputs are numpy arrays; heavy parts run as chunked GEMMs."""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from clam_dist.models.am import Metric, energy, nearest_prototypes, normalize_rows

# Silhouette is O(m^2 d): above this many rows it is computed on a uniform sample of
# this size (stated in every report as silhouette_sample_size).
DEFAULT_SILHOUETTE_SAMPLE = 10_000


def silhouette(
    x: np.ndarray,
    labels: np.ndarray,
    sample_size: int = DEFAULT_SILHOUETTE_SAMPLE,
    seed: int = 0,
    metric: Metric = "euclidean",
) -> float:
    """Mean silhouette coefficient (Euclidean distance; cosine geometry for 'spherical').

    Exact when n <= sample_size, else on a uniform random sample (without replacement) of
    sample_size rows, deterministic for a seed. Points in singleton clusters score 0 (as
    scikit-learn). Where the coefficient is undefined -- fewer than 2 or more than m-1
    distinct labels among the m rows used -- this returns nan instead of raising (as
    scikit-learn does), so a degenerate clustering shows up in a report rather than
    aborting it. Cost O(m^2 d) time in float64 chunked GEMMs, O(m k) memory.
    """
    x = np.asarray(x)
    labels = np.asarray(labels).reshape(-1)
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D (rows, features), got shape {x.shape}")
    if x.shape[0] != labels.shape[0]:
        raise ValueError(f"x has {x.shape[0]} rows but labels has {labels.shape[0]}")
    if sample_size < 2:
        raise ValueError(f"sample_size must be >= 2, got {sample_size}")
    if x.shape[0] > sample_size:
        # Sample BEFORE the float64 copy: x may be far larger than memory allows twice.
        idx = np.sort(np.random.default_rng(seed).choice(x.shape[0], sample_size, replace=False))
        x, labels = x[idx], labels[idx]
    x = np.asarray(x, dtype=np.float64)
    if not np.isfinite(x).all():
        raise ValueError("x contains NaN/inf: silhouette is undefined")
    _, lab = np.unique(labels, return_inverse=True)
    k, m = lab.max() + 1 if lab.size else 0, x.shape[0]
    if k < 2 or k > m - 1:
        return float("nan")
    xt = torch.from_numpy(x)
    if metric == "spherical":
        xt = normalize_rows(xt)
    onehot = torch.zeros((m, k), dtype=torch.float64)
    onehot[torch.arange(m), torch.from_numpy(lab)] = 1.0
    counts = onehot.sum(0)
    sq = (xt * xt).sum(1)
    dist_sums = torch.zeros((m, k), dtype=torch.float64)
    chunk = max(1, (1 << 22) // m)
    for r0 in range(0, m, chunk):
        xr = xt[r0 : r0 + chunk]
        d2 = (sq[r0 : r0 + chunk, None] + sq[None, :] - 2 * xr @ xt.T).clamp_min_(0)
        dist_sums[r0 : r0 + chunk] = d2.sqrt_() @ onehot
    own = torch.from_numpy(lab)
    own_count = counts[own]
    a = dist_sums[torch.arange(m), own] / (own_count - 1).clamp_min(1)
    other = dist_sums / counts
    other[torch.arange(m), own] = float("inf")
    b = other.min(1).values
    s = (b - a) / torch.maximum(a, b)
    s[own_count <= 1] = 0.0
    s = torch.nan_to_num(s, nan=0.0)
    return float(s.mean())


def nmi(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(normalized_mutual_info_score(y_true, y_pred))


def ari(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(adjusted_rand_score(y_true, y_pred))


def clustering_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Best one-to-one matching of clusters to classes (Hungarian algorithm): the fraction
    of rows whose cluster maps to their class. With more clusters than classes the
    unmatched clusters count as wrong."""
    y_true = np.asarray(y_true).reshape(-1)
    y_pred = np.asarray(y_pred).reshape(-1)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} rows but y_pred has {y_pred.size}")
    if y_true.size == 0:
        return float("nan")
    _, t = np.unique(y_true, return_inverse=True)
    _, p = np.unique(y_pred, return_inverse=True)
    table = np.zeros((p.max() + 1, t.max() + 1), dtype=np.int64)
    np.add.at(table, (p, t), 1)
    rows, cols = linear_sum_assignment(-table)
    return float(table[rows, cols].sum() / max(1, y_true.size))


def inertia(x: np.ndarray, centers: np.ndarray, labels: np.ndarray) -> float:
    """Sum of squared distances of points to their assigned centre."""
    x = np.asarray(x, dtype=np.float64)
    centers = np.asarray(centers, dtype=np.float64)
    return float(((x - centers[np.asarray(labels)]) ** 2).sum())


def mean_energy(
    x: np.ndarray, prototypes: np.ndarray, beta: float, metric: Metric = "euclidean"
) -> float:
    """Mean AM energy E(x) over rows: low = close to a memory."""
    e = energy(
        torch.as_tensor(np.asarray(x, np.float32)),
        torch.as_tensor(np.asarray(prototypes, np.float32)),
        beta,
        metric,
    )
    return float(e.double().mean())


def cluster_sizes(labels: np.ndarray, k: int) -> np.ndarray:
    """Rows per cluster 0..k-1, shape (k,) int64 (empty clusters count 0)."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if labels.size and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(f"labels must lie in [0, {k}), got [{labels.min()}, {labels.max()}]")
    return np.bincount(labels, minlength=k)


def clustering_report(
    x: np.ndarray,
    labels: np.ndarray,
    prototypes: np.ndarray | None = None,
    beta: float | None = None,
    metric: Metric = "euclidean",
    y_true: np.ndarray | None = None,
    sample_size: int = DEFAULT_SILHOUETTE_SAMPLE,
    seed: int = 0,
) -> dict:
    """All the numbers a clustering comparison needs, as a JSON-able dict."""
    labels = np.asarray(labels)
    k = int(prototypes.shape[0]) if prototypes is not None else int(labels.max()) + 1
    sizes = cluster_sizes(labels, k)
    report: dict = {
        "n": int(labels.size),
        "k": k,
        "n_nonempty": int((sizes > 0).sum()),
        "silhouette": silhouette(x, labels, sample_size, seed, metric),
        "silhouette_sample_size": int(min(sample_size, labels.size)),
        "size_min": int(sizes.min()),
        "size_median": float(np.median(sizes)),
        "size_max": int(sizes.max()),
    }
    if prototypes is not None:
        xs = torch.as_tensor(np.asarray(x, np.float32))
        d2, _ = nearest_prototypes(xs, torch.as_tensor(np.asarray(prototypes, np.float32)), metric)
        report["inertia_nearest"] = float(d2.double().sum())
        report["inertia"] = inertia(
            normalize_rows(xs).numpy() if metric == "spherical" else x,
            normalize_rows(torch.as_tensor(np.asarray(prototypes, np.float32))).numpy()
            if metric == "spherical"
            else prototypes,
            labels,
        )
        if beta is not None:
            report["mean_energy"] = mean_energy(x, prototypes, beta, metric)
    if y_true is not None:
        report.update(
            nmi=nmi(y_true, labels),
            ari=ari(y_true, labels),
            acc=clustering_accuracy(y_true, labels),
        )
    return report
