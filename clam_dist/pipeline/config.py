"""Typed configuration of the end-to-end pipeline (TOML/YAML + section.field overrides)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from clam_dist import methods
from clam_dist.data.urls import absolute
from clam_dist.train.config import TrainDCAM


@dataclass
class DataSection:
    url: str | None = None  # None: generate (or convert a bundled data set) under run_dir/data
    generate: str = "mixture"  # "mixture" or a bundled paper data set name, when url is None
    n: int = 200_000
    d: int = 32
    k: int = 16
    separation: float = 8.0
    rows_per_file: int = 25_000
    vector_column: str | None = None
    feature_columns: list[str] | None = None
    id_column: str | None = None
    label_column: str | None = "label"
    nan_policy: Literal["error", "drop"] = "error"
    storage_options: dict | None = None

    def __post_init__(self) -> None:
        self.url = absolute(self.url)


@dataclass
class ModelSection:
    # "ray": the distributed Ray Train trainer over every row (clam_dist.train);
    # "sample": the in-memory estimator on a uniform sample (quick look, no Ray Train).
    trainer: Literal["ray", "sample"] = "ray"
    num_workers: int = 2
    method: str = "clam"  # a registered method (clam_dist.methods.names())
    similarity: Literal["distance", "dot"] = "distance"  # attention scores
    n_clusters: int = 16
    beta: float | None = None
    alpha: float = 0.1
    steps: int = 10
    metric: Literal["euclidean", "spherical"] = "euclidean"
    mask_ratio: float = 0.2
    lr: float = 0.01
    epochs: int = 3
    batch_size: int = 1024  # rows per worker per step (ray) / per step (sample)
    n_init: int = 1
    standardize: bool = True
    train_sample: int = 20_000

    def __post_init__(self) -> None:
        methods.check_name(self.method, "model.method")


@dataclass
class AssignSection:
    outputs: list[str] = field(default_factory=lambda: ["energy", "margin"])
    passthrough: list[str] = field(default_factory=list)
    batch_size: int = 8192
    concurrency: int = 2


@dataclass
class PipelineConfig:
    run_dir: str = "runs/demo"
    seed: int = 0
    num_cpus: int | None = None  # embedded Ray only; None = all cores
    eval_sample: int = 10_000
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    dcam: TrainDCAM = field(default_factory=TrainDCAM)  # model.method = "dcam" only
    assign: AssignSection = field(default_factory=AssignSection)
