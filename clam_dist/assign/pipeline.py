"""Cluster assignment at scale: Ray Data read -> map_batches (actor pool, model loaded
once per actor) -> write Parquet to staging -> verify row count -> commit."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from clam_dist.artifacts import load_artifact
from clam_dist.assign.commit import OutputPrefix
from clam_dist.data.errors import DataError
from clam_dist.data.ray_dataset import to_ray_dataset
from clam_dist.data.source import VectorSource, open_filesystem


@dataclass
class AssignConfig:
    input: str
    output: str
    model: str
    vector_column: str | None = None
    feature_columns: list[str] | None = None
    id_column: str | None = None
    label_column: str | None = None
    passthrough: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)  # energy, margin, probs
    storage_options: dict | None = None
    batch_size: int = 8192
    concurrency: int = 1
    num_cpus_per_actor: float = 1.0
    num_gpus_per_actor: float = 0.0
    overwrite: bool = False
    # Failure injection for recovery tests: each actor raises after this many batches.
    fail_after_batches: int = 0

    def source(self) -> VectorSource:
        return VectorSource(
            self.input,
            vector_column=self.vector_column,
            feature_columns=self.feature_columns,
            id_column=self.id_column,
            label_column=self.label_column,
            storage_options=self.storage_options,
        )


@dataclass
class AssignResult:
    output: str
    rows: int
    files: int
    seconds: float
    rows_per_second: float
    drift_share: float | None = None
    energy_p99: float | None = None
    manifest: dict = field(default_factory=dict)


class ClusterAssigner:
    """map_batches callable: loads the artifact once per actor, labels each batch."""

    def __init__(
        self,
        model_url: str,
        storage_options: dict | None,
        outputs: list[str],
        passthrough: list[str],
        fail_after_batches: int = 0,
    ):
        from clam_dist.models.predictor import ClusterPredictor

        self.predictor = ClusterPredictor.from_artifact(load_artifact(model_url, storage_options))
        self.outputs = list(outputs)
        self.passthrough = list(passthrough)
        self.batches = 0
        self.fail_after = fail_after_batches

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        self.batches += 1
        if self.fail_after and self.batches > self.fail_after:
            raise RuntimeError(f"injected failure after {self.fail_after} batches")
        pred = self.predictor.predict(batch["x"], self.outputs)
        cols: dict[str, pa.Array] = {
            "id": pa.array(batch["id"]),
            "cluster": pa.array(pred["cluster"]),
            "distance": pa.array(pred["distance"]),
        }
        for name in ("energy", "margin"):
            if name in pred:
                cols[name] = pa.array(pred[name])
        if "probs" in pred:
            probs = pred["probs"]
            cols["probs"] = pa.FixedSizeListArray.from_arrays(
                pa.array(probs.reshape(-1)), probs.shape[1]
            )
        for c in self.passthrough:
            cols[c] = pa.array(batch[c])
        return pa.table(cols)


def _check_model_matches(source: VectorSource, artifact, model_url: str) -> None:
    d = source.dim()
    if d != artifact.n_features:
        raise DataError(
            f"input {source.url} has vectors of width {d}, but model {model_url} expects {artifact.n_features} features"
        )


def run_assignment(config: AssignConfig) -> AssignResult:
    """Assign every input row; exactly one committed output row per input row."""
    import ray

    t0 = time.perf_counter()
    artifact = load_artifact(config.model, config.storage_options)
    source = config.source()
    _check_model_matches(source, artifact, config.model)
    expected = source.num_rows()
    prefix = OutputPrefix(config.output, config.storage_options)
    staging = prefix.prepare(config.overwrite)

    energy_p99 = artifact.meta.get("energy_p99")
    outputs = list(dict.fromkeys(config.outputs + (["energy"] if energy_p99 is not None else [])))
    if not ray.is_initialized():
        ray.init()
    ds = to_ray_dataset(source, columns_extra=config.passthrough or None)
    labelled = ds.map_batches(
        ClusterAssigner,
        fn_constructor_args=(
            config.model,
            config.storage_options,
            outputs,
            config.passthrough,
            config.fail_after_batches,
        ),
        batch_size=config.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=config.concurrency),
        num_cpus=config.num_cpus_per_actor,
        num_gpus=config.num_gpus_per_actor or None,
    )
    fs = prefix.fs
    _, spath = open_filesystem(staging, config.storage_options)
    labelled.write_parquet(spath, filesystem=pafs.PyFileSystem(pafs.FSSpecHandler(fs)))

    drift = None
    staged = prefix.staged_files(staging)
    if energy_p99 is not None and staged:
        above = total = 0
        for f in staged:
            e = pq.read_table(fs.open(f, "rb"), columns=["energy"]).column(0).to_numpy()
            above += int((e > energy_p99).sum())
            total += e.size
        drift = above / max(1, total)
    manifest = prefix.commit(
        staging,
        expected,
        {
            "input": str(config.input),
            "model": config.model,
            "columns": ["id", "cluster", "distance", *outputs, *config.passthrough],
            "drift_share_above_train_energy_p99": drift,
        },
    )
    seconds = time.perf_counter() - t0
    return AssignResult(
        output=config.output,
        rows=manifest["rows"],
        files=len(manifest["files"]),
        seconds=seconds,
        rows_per_second=manifest["rows"] / seconds if seconds > 0 else float("nan"),
        drift_share=drift,
        energy_p99=energy_p99,
        manifest=manifest,
    )


def read_assignments(
    url: str, storage_options: dict | None = None, columns: list[str] | None = None
) -> pa.Table:
    """The committed assignment table; refuses a prefix without _SUCCESS."""
    prefix = OutputPrefix(url, storage_options)
    files = prefix.committed_files()
    tables = [pq.read_table(prefix.fs.open(f, "rb"), columns=columns) for f in files]
    return pa.concat_tables(tables) if tables else pa.table({})
