"""Typed configuration of the end-to-end pipeline (TOML/YAML + section.field overrides).

Built from the shared sections (clam_dist/sections.py): [model], [optim] and [dcam] are
the training job's own classes, [data] extends the training job's, [train] holds the
workers plus the pipeline's choice of trainer, and [assign] the assignment's outputs. The
train and assign stages hand these sections on whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from clam_dist.sections import (
    DCAMSection,
    ModelSection,
    OptimSection,
    OutputsSection,
    WorkersSection,
)
from clam_dist.train.config import TrainData

# The label column of the mixtures and bundled data sets the pipeline generates.
GENERATED_LABEL_COLUMN = "label"


@dataclass
class PipelineData(TrainData):
    """The training job's [data] (url, columns, standardize, init_sample, lanes) plus what
    to generate when ``url`` is empty."""

    generate: str = "mixture"  # "mixture" or a bundled paper data set name, when url is ""
    n: int = 200_000  # rows of the generated mixture
    d: int = 32  # its dimension
    k: int = 16  # its number of Gaussian components
    separation: float = 8.0  # typical distance between component centres, in noise std units
    rows_per_file: int = 25_000  # rows per generated Parquet file


@dataclass
class PipelineTrain(WorkersSection):
    # "ray": the distributed Ray Train trainer over every row (clam_dist.train);
    # "sample": the in-memory estimator on data.init_sample rows (quick look, no Ray Train).
    trainer: Literal["ray", "sample"] = "ray"
    n_init: int = 1  # the sample trainer's restarts (best by its own criterion)


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

    run_dir: str = "runs/demo"
    seed: int = 0
    num_cpus: int | None = None  # embedded Ray only; None = all cores
    eval_sample: int = 10_000  # rows sampled for the Silhouette of the report
    data: PipelineData = field(default_factory=PipelineData)
    model: ModelSection = field(default_factory=ModelSection)
    optim: OptimSection = field(default_factory=OptimSection)
    dcam: DCAMSection = field(default_factory=DCAMSection)  # model.method = "dcam" only
    train: PipelineTrain = field(default_factory=PipelineTrain)
    assign: OutputsSection = field(default_factory=OutputsSection)
