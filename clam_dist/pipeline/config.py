"""Typed configuration of the end-to-end pipeline (TOML/YAML + section.field overrides).

Built from the shared sections (clam_dist/sections.py): [model], [optim] and each
method's own section ([dcam]) are the training job's own classes, [data] extends the training job's, [train] holds the
workers plus the pipeline's choice of trainer, and [assign] the assignment's outputs. The
train and assign stages hand these sections on whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from clam_dist.config import Interval, knob
from clam_dist.sections import (
    COUNT,
    MAX_CLUSTERS,
    POSITIVE,
    SEED,
    ModelSection,
    OptimSection,
    OutputsSection,
    StorageSection,
    WorkersSection,
    fill_method_defaults,
    with_method_sections,
)
from clam_dist.train.config import TrainData

# The label column of the mixtures and bundled data sets the pipeline generates.
GENERATED_LABEL_COLUMN = "label"


@dataclass
class PipelineData(TrainData):
    """The training job's [data] (url, columns, standardize, init_sample, lanes) plus what
    to generate when ``url`` is empty."""

    generate: str = "mixture"  # "mixture" or a bundled paper data set name, when url is ""
    n: int = knob(200_000, COUNT)  # rows of the generated mixture
    d: int = knob(32, COUNT)  # its dimension
    k: int = knob(16, Interval(int, 1, MAX_CLUSTERS))  # its number of Gaussian components
    # typical distance between component centres, in noise std units
    separation: float = knob(8.0, POSITIVE)
    rows_per_file: int = knob(25_000, COUNT)  # rows per generated Parquet file


@dataclass
class PipelineTrain(WorkersSection):
    # "ray": the distributed Ray Train trainer over every row (clam_dist.train);
    # "sample": the in-memory estimator on data.init_sample rows (quick look, no Ray Train).
    trainer: Literal["ray", "sample"] = "ray"
    n_init: int = knob(1, COUNT)  # the sample trainer's restarts (best by its own criterion)


@with_method_sections  # + each method's own section ([dcam])
@dataclass
class PipelineConfig:
    # Knobs of the pipeline's own [model] section before it became the shared one.
    MOVED_FIELDS: ClassVar[dict[str, str]] = {
        "model.lr": "optim.lr",
        "model.epochs": "optim.epochs",
        "model.batch_size": "optim.batch_size",
        "model.trainer": "train.trainer",
        "model.num_workers": "train.num_workers",
        "model.n_init": "train.n_init",
        "model.standardize": "data.standardize",
        "model.train_sample": "data.init_sample",
    }

    run_dir: str = "runs/demo"  # a local folder or an fsspec URL (s3://bucket/run)
    seed: int = knob(0, SEED)
    num_cpus: int | None = knob(None, COUNT)  # embedded Ray only; None = all cores
    # rows sampled for the Silhouette of the report (it needs two)
    eval_sample: int = knob(10_000, Interval(int, 2))
    data: PipelineData = field(default_factory=PipelineData)
    model: ModelSection = field(default_factory=ModelSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: PipelineTrain = field(default_factory=PipelineTrain)
    assign: OutputsSection = field(default_factory=OutputsSection)
    storage: StorageSection = field(default_factory=StorageSection)

    def __post_init__(self) -> None:
        fill_method_defaults(self.model, self.optim, self.data)
