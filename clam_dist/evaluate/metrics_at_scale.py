"""Metrics for a whole assignment run: sizes, inertia and energy from the committed
assignments (every row), Silhouette and external metrics on a uniform sample."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clam_dist.artifacts import load_artifact
from clam_dist.assign.pipeline import read_assignments
from clam_dist.data.source import VectorSource
from clam_dist.data.stats import sample_rows
from clam_dist.metrics import ari, clustering_accuracy, nmi, silhouette
from clam_dist.models.predictor import ClusterPredictor


@dataclass
class EvalConfig:
    source: VectorSource
    assignments: str
    model: str
    sample_size: int = 10_000
    seed: int = 0
    storage_options: dict | None = None


def evaluate_run(cfg: EvalConfig) -> tuple[dict, dict]:
    """(metrics dict, plot data dict) for a committed assignment output."""
    art = load_artifact(cfg.model, cfg.storage_options)
    cols = ["cluster", "distance"] + (["energy"] if "energy" in _columns(cfg) else [])
    table = read_assignments(cfg.assignments, cfg.storage_options, columns=cols)
    clusters = table.column("cluster").to_numpy()
    sizes = np.bincount(clusters, minlength=art.k)
    metrics: dict = {
        "rows": int(clusters.size),
        "k": art.k,
        "n_nonempty": int((sizes > 0).sum()),
        "size_min": int(sizes.min()),
        "size_median": float(np.median(sizes)),
        "size_max": int(sizes.max()),
        "inertia": float(table.column("distance").to_numpy().astype(np.float64).sum()),
        "method": art.method,
        "beta": art.beta,
    }
    if "energy" in table.column_names:
        metrics["mean_energy"] = float(table.column("energy").to_numpy().astype(np.float64).mean())
    sample = sample_rows(cfg.source, cfg.sample_size, cfg.seed)
    predictor = ClusterPredictor.from_artifact(art)
    pred = predictor.predict(sample.x, ("energy",))
    z = predictor.to_model_space(sample.x).numpy()
    metrics["silhouette"] = silhouette(
        z, pred["cluster"], sample_size=cfg.sample_size, seed=cfg.seed, metric=art.metric
    )
    metrics["silhouette_sample_size"] = int(len(sample))
    metrics["silhouette_space"] = "model space (standardised" + (
        ", encoded)" if art.method == "dcam" else ")"
    )
    if "mean_energy" not in metrics:
        metrics["mean_energy_sample"] = float(pred["energy"].astype(np.float64).mean())
    if sample.labels is not None:
        metrics.update(
            nmi=nmi(sample.labels, pred["cluster"]),
            ari=ari(sample.labels, pred["cluster"]),
            acc=clustering_accuracy(sample.labels, pred["cluster"]),
            external_metrics_on="sample",
        )
    plots = {
        "sizes": sizes,
        "sample_z": z,
        "sample_clusters": pred["cluster"],
        "loss_history": art.meta.get("loss_history"),
    }
    return metrics, plots


def _columns(cfg: EvalConfig) -> list[str]:
    from clam_dist.assign.commit import OutputPrefix

    return OutputPrefix(cfg.assignments, cfg.storage_options).manifest().get("columns", [])
