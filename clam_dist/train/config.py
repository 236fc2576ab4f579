"""Typed configuration of a distributed training run (TOML/YAML + section.field overrides)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class TrainData:
    url: str = ""
    vector_column: str | None = None
    feature_columns: list[str] | None = None
    id_column: str | None = None
    label_column: str | None = None
    storage_options: dict | None = None
    nan_policy: Literal["error", "drop"] = "error"
    standardize: bool = True
    init_sample: int = 50_000  # rows sampled (Dask) for initialisation and beta


@dataclass
class TrainModel:
    method: Literal["clam", "kmeans"] = "clam"
    n_clusters: int = 16
    beta: float | None = None
    alpha: float = 0.1
    steps: int = 10
    metric: Literal["euclidean", "spherical"] = "euclidean"
    mask_ratio: float = 0.2
    fill: Literal["mean", "min", "max", "zero"] = "mean"
    shared_every: int = 3
    # "kmeans": k-means++ seeding refined by Lloyd on the sample (as the estimator's
    # default); "kmeans++" seeding only; "kmeans||" for large k.
    init: Literal["kmeans", "kmeans++", "kmeans||"] = "kmeans"
    kmeans_algorithm: Literal["minibatch", "lloyd"] = "minibatch"


@dataclass
class TrainOptim:
    lr: float = 0.01
    epochs: int = 5
    batch_size: int = 1024  # rows per worker per step; 0 = the whole shard (full batch)
    plateau_factor: float = 0.8
    plateau_patience: int = 5


@dataclass
class TrainRun:
    name: str = "clam-train"
    storage_path: str = "runs/train"
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    checkpoint_every: int = 1  # epochs
    max_failures: int = 1
    resume_from: str | None = None  # a checkpoint directory from another run
    seed: int = 0
    fail_at_epoch: int | None = None  # failure injection (tests): rank 0 dies once there


@dataclass
class TrainConfig:
    data: TrainData = field(default_factory=TrainData)
    model: TrainModel = field(default_factory=TrainModel)
    optim: TrainOptim = field(default_factory=TrainOptim)
    run: TrainRun = field(default_factory=TrainRun)
