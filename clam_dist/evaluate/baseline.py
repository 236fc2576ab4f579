"""The k-means baseline of a report: scikit-learn-grade k-means (clam_dist.KMeans) fitted
on the evaluation sample in the model's space, with the same k, scored on that same
sample, so the report answers "better than k-means?" like for like and cheaply (one fit
on ``sample_size`` rows, not a second training run)."""

from __future__ import annotations

import time
import warnings

import numpy as np

from clam_dist import methods
from clam_dist.metrics import ari, nmi, silhouette


def kmeans_baseline(
    z: np.ndarray,
    k: int,
    model_clusters: np.ndarray,
    labels: np.ndarray | None,
    metric: str,
    seed: int,
) -> dict:
    """Metrics of the model's clusters and of the baseline's on the same sample rows:
    ``kmeans_baseline_*`` and ``sample_*`` keys (NMI/ARI only with labels), or a single
    ``kmeans_baseline_note`` when the sample is too small for k clusters."""
    n = len(z)
    if n <= k:
        return {
            "kmeans_baseline_note": f"skipped: the sample has {n} rows, k-means needs more "
            f"than k={k}"
        }
    KMeans = methods.get(methods.BASELINE).estimator.load()  # noqa: N806 - a class

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        # Few rows per centroid is expected on a sample; the note below says so.
        warnings.simplefilter("ignore", UserWarning)
        baseline = KMeans(n_clusters=k, random_state=seed).fit(np.asarray(z, np.float32))
    seconds = time.perf_counter() - t0
    found = np.asarray(baseline.labels_)
    out: dict = {
        "kmeans_baseline_on": f"sample ({n} rows, {n / k:.0f} per cluster), fitted there",
        "kmeans_baseline_seconds": round(seconds, 3),
        "kmeans_baseline_silhouette": silhouette(z, found, sample_size=n, seed=seed, metric=metric),
    }
    if labels is not None:
        out.update(
            kmeans_baseline_nmi=nmi(labels, found),
            kmeans_baseline_ari=ari(labels, found),
            sample_nmi=nmi(labels, model_clusters),
            sample_ari=ari(labels, model_clusters),
        )
    return out
