"""Metrics for a whole assignment run, in one streamed pass over the committed output plus
one uniform sample of the input.

Over EVERY assigned row (streamed, O(k) memory): cluster-size distribution, inertia (sum
of squared distances to the assigned prototype, in the model's standardised space), mean
energy when the output has it, and NMI/ARI/ACC when the output carries a label column
(a contingency table). On a uniform SAMPLE of the input (the data plane's sample_rows,
size stated): the Silhouette coefficient, computed with the COMMITTED cluster of each
sampled row (joined by id), and NMI/ARI/ACC when only the input has labels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clam_dist.artifacts import load_artifact
from clam_dist.assign.commit import OutputPrefix, iter_assignments
from clam_dist.data.errors import DataError
from clam_dist.data.source import VectorSource
from clam_dist.data.stats import sample_rows
from clam_dist.evaluate.baseline import kmeans_baseline
from clam_dist.evaluate.contingency import (
    Contingency,
    acc_from_pairs,
    ari_from_pairs,
    nmi_from_pairs,
)
from clam_dist.evaluate.partitions import drift_by_partition
from clam_dist.evaluate.per_cluster import ClusterTable
from clam_dist.memory import release_unused_memory
from clam_dist.metrics import ari, clustering_accuracy, nmi, silhouette
from clam_dist.models.predictor import ClusterPredictor


@dataclass
class EvalConfig:
    """Programmatic form (a ready VectorSource); see evaluate.run.EvaluateConfig for the
    file/CLI form."""

    source: VectorSource
    assignments: str
    model: str
    sample_size: int = 10_000
    seed: int = 0
    storage_options: dict | None = None
    label_column_in_output: str | None = None  # default: the source's label column name
    kmeans_baseline: bool = True  # fit k-means on the sample and report it beside the model
    partitions: list[str] = field(default_factory=list)  # other outputs of the same model


@dataclass
class _Totals:
    k: int
    rows: int = 0
    inertia: float = 0.0
    energy_sum: float = 0.0
    energy_rows: int = 0
    energy_above_p99: int = 0
    clusters: ClusterTable = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.clusters = ClusterTable(self.k)

    @property
    def sizes(self) -> np.ndarray:
        """Rows per cluster: counted once, by the per-cluster table."""
        return self.clusters.sizes


def _stream_pass(
    cfg: EvalConfig,
    k: int,
    columns: list[str],
    label_col: str | None,
    sample_ids: np.ndarray,
    energy_p99: float | None,
) -> tuple[_Totals, Contingency | None, dict]:
    """One pass over the committed output: totals, contingency, and the sample's rows."""
    totals = _Totals(k)
    table = Contingency(k) if label_col else None
    want = ["id", "cluster", "distance"] + [c for c in ("energy",) if c in columns]
    if label_col:
        want.append(label_col)
    id_sets: dict = {}  # id column type -> the sampled ids cast to it
    found: dict = {"id": [], "cluster": [], "energy": []}
    for batch in iter_assignments(cfg.assignments, cfg.storage_options, columns=want):
        cl = batch.column("cluster").to_numpy()
        if cl.size and (cl.min() < 0 or cl.max() >= k):
            raise DataError(
                f"{cfg.assignments}: cluster ids outside [0, {k}) — assigned with another model?"
            )
        totals.rows += cl.size
        dist = batch.column("distance").to_numpy().astype(np.float64)
        totals.inertia += float(dist.sum())
        e = None
        if "energy" in batch.schema.names:
            e = batch.column("energy").to_numpy().astype(np.float64)
            totals.energy_sum += float(e.sum())
            totals.energy_rows += e.size
            if energy_p99 is not None:
                totals.energy_above_p99 += int((e > energy_p99).sum())
        totals.clusters.update(cl, dist, batch.column("id"), e)
        if table is not None:
            table.update(batch.column(label_col).to_numpy(zero_copy_only=False), cl)
        id_col = batch.column("id")
        if id_col.type not in id_sets:
            id_sets[id_col.type] = pa.array(sample_ids).cast(id_col.type)
        hit = pc.is_in(id_col, value_set=id_sets[id_col.type])
        if pc.any(hit).as_py():
            sel = batch.filter(hit)
            found["id"].append(sel.column("id").to_numpy(zero_copy_only=False))
            found["cluster"].append(sel.column("cluster").to_numpy())
            if "energy" in sel.schema.names:
                found["energy"].append(sel.column("energy").to_numpy())
    return totals, table, found


def _align(sample_ids: np.ndarray, found: dict, where: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Committed clusters (and energies) in sample order; every sampled id must be there."""
    ids = np.concatenate(found["id"]) if found["id"] else np.zeros(0, sample_ids.dtype)
    clusters = np.concatenate(found["cluster"]) if found["cluster"] else np.zeros(0, np.int64)
    energies = np.concatenate(found["energy"]) if found["energy"] else None
    lookup = {_key(i): j for j, i in enumerate(ids)}
    if len(lookup) != ids.size:
        raise DataError(f"{where}: duplicate ids among the sampled rows' assignments")
    pos = np.array([lookup.get(_key(i), -1) for i in sample_ids], dtype=np.int64)
    missing = sample_ids[pos < 0]
    if missing.size:
        raise DataError(
            f"{where}: {missing.size} of {sample_ids.size} sampled input rows have no assignment "
            f"(e.g. ids {missing[:3].tolist()}); were these assignments made from this input "
            "with the same id column?"
        )
    return clusters[pos], (energies[pos] if energies is not None else None)


def _key(value):
    return value.item() if hasattr(value, "item") else value


def evaluate_run(cfg: EvalConfig, timings: dict | None = None) -> tuple[dict, dict]:
    """(metrics dict, plot data dict) for a committed assignment output. ``timings``, when
    given, receives seconds per stage: checks, sample, stream_pass, sample_metrics.

    Raises IncompleteOutputError for an uncommitted output, DataError when the
    assignments do not match the input or the model.
    """
    timings = {} if timings is None else timings
    t0 = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t0
        now = time.perf_counter()
        timings[name] = round(now - t0, 3)
        t0 = now

    art = load_artifact(cfg.model, cfg.storage_options)
    manifest = OutputPrefix(cfg.assignments, cfg.storage_options).manifest()
    if manifest.get("k") not in (None, art.k):
        raise DataError(
            f"{cfg.assignments} was assigned with k={manifest['k']}, model {cfg.model} has k={art.k}"
        )
    n_input = cfg.source.num_rows()
    if manifest["rows"] != n_input:
        raise DataError(
            f"{cfg.assignments} holds {manifest['rows']} rows but the input "
            f"{cfg.source.describe()} has {n_input}: not the assignments of this input"
        )
    columns = manifest.get("columns", [])
    label_col = cfg.label_column_in_output or cfg.source.label_column
    label_col = label_col if label_col in columns else None
    energy_p99 = art.meta.get("energy_p99")
    lap("checks")

    sample = sample_rows(cfg.source, cfg.sample_size, cfg.seed)
    lap("sample")
    totals, table, found = _stream_pass(cfg, art.k, columns, label_col, sample.ids, energy_p99)
    sample_clusters, sample_energy = _align(sample.ids, found, cfg.assignments)
    # The two passes over the data are done: free what their reads left in Arrow's pool
    # and the C heap (it grows with the rows read) before the sample metrics allocate
    # their O(sample^2) distances on top of it.
    release_unused_memory()
    lap("stream_pass")

    sizes = totals.sizes
    metrics: dict = {
        "rows": int(totals.rows),
        "k": art.k,
        "method": art.method,
        "metric": art.metric,
        "beta": art.beta,
        "n_nonempty": int((sizes > 0).sum()),
        "size_min": int(sizes.min()),
        "size_median": float(np.median(sizes)),
        "size_max": int(sizes.max()),
        "size_max_over_mean": float(sizes.max() / max(1e-12, sizes.mean())),
        "inertia": totals.inertia,
        "inertia_per_row": totals.inertia / max(1, totals.rows),
        "inertia_space": "model space (standardised"
        + (", encoded)" if "encoder" in art.meta else ")"),
    }
    if totals.energy_rows:
        metrics["mean_energy"] = totals.energy_sum / totals.energy_rows
        if energy_p99 is not None:
            metrics["drift_share_above_train_energy_p99"] = totals.energy_above_p99 / max(
                1, totals.energy_rows
            )

    predictor = ClusterPredictor.from_artifact(art)
    pred = predictor.predict(sample.x, ("energy",))
    z = predictor.to_model_space(np.array(sample.x, dtype=np.float32)).numpy()
    metrics["silhouette"] = silhouette(
        z, sample_clusters, sample_size=len(sample), seed=cfg.seed, metric=art.metric
    )
    metrics["silhouette_sample_size"] = int(len(sample))
    metrics["silhouette_space"] = metrics["inertia_space"]
    # The committed labels of the sampled rows vs the model run here: must be 1.0 (a
    # lower value means the output was not produced by this model on this input).
    metrics["sample_agreement_with_model"] = float((pred["cluster"] == sample_clusters).mean())
    if "mean_energy" not in metrics:
        metrics["mean_energy_sample"] = float(pred["energy"].astype(np.float64).mean())
    if table is not None:
        metrics.update(
            nmi=nmi_from_pairs(*table.pairs()),
            ari=ari_from_pairs(*table.pairs()),
            acc=acc_from_pairs(*table.pairs()),
            external_metrics_on=f"all rows ({table.n})",
        )
    elif sample.labels is not None:
        metrics.update(
            nmi=nmi(sample.labels, sample_clusters),
            ari=ari(sample.labels, sample_clusters),
            acc=clustering_accuracy(sample.labels, sample_clusters),
            external_metrics_on=f"sample ({len(sample)} rows)",
        )
    drift = manifest.get("drift") or {}
    if "note" in drift:
        metrics["drift_note"] = drift["note"]
    if cfg.kmeans_baseline:
        metrics.update(
            kmeans_baseline(z, art.k, sample_clusters, sample.labels, art.metric, cfg.seed)
        )
    lap("sample_metrics")
    partitions = []
    if cfg.partitions:
        urls = [cfg.assignments] + [u for u in cfg.partitions if u != cfg.assignments]
        partitions = drift_by_partition(urls, cfg.model, cfg.storage_options)
        metrics["drift_partitions"] = len(partitions)
        lap("partitions")
    plots = {
        "sizes": sizes,
        "sample_z": z,
        "sample_clusters": sample_clusters,
        "sample_energy": sample_energy if sample_energy is not None else pred["energy"],
        "energy_p99": energy_p99,
        "loss_history": art.meta.get("loss_history"),
        "clusters": totals.clusters.rows(),
        "partitions": partitions,
    }
    return metrics, plots
