"""Typed configuration of a distributed training run (TOML/YAML + section.field overrides)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from clam_dist.config import ConfigError, Interval, PathSegment, knob
from clam_dist.data.urls import absolute
from clam_dist.sections import (
    COUNT,
    COUNT_OR_OFF,
    SEED,
    ModelSection,
    OptimSection,
    SourceColumns,
    StorageSection,
    WorkersSection,
    fill_method_defaults,
    with_method_sections,
)


@dataclass
class TrainData(SourceColumns):
    url: str = ""  # the Parquet prefix (local path or fsspec URL) to train on
    # The rows' scaling (clam_dist/models/scaling.py): True per-feature standardisation,
    # False none, "auto" decided from the data (pixels scaled as images); None = the
    # method's default (DCAM "auto", the others True).
    standardize: bool | Literal["auto"] | None = None
    init_sample: int = knob(50_000, COUNT)  # rows sampled (Dask) for initialisation and beta
    # Files are dealt to this many "lanes" (0 = one per worker); each worker reads the lanes
    # rank, rank + W, ... and every step takes the same number of rows from every lane. The
    # global batch of a step is then a function of (lanes, epoch, seed) alone, so 1 worker
    # and 2 workers with the same lanes train on exactly the same rows (must be a multiple
    # of the worker count).
    lanes: int = knob(0, COUNT_OR_OFF)
    # Row groups each lane decodes at once (threads; Parquet decoding releases the GIL).
    # The order of rows, so every batch, is the same for any value; memory holds up to
    # read_threads + 1 decoded row groups per lane. 1 = decode in the prefetch thread only.
    read_threads: int = knob(2, COUNT)

    def __post_init__(self) -> None:
        self.url = absolute(self.url)


@dataclass
class TrainRun(WorkersSection):
    # The run's folder under storage_path (checkpoints, model, run-config.json): one folder
    # name, never a path, so nothing is written outside storage_path.
    name: str = knob("clam-train", PathSegment())
    storage_path: str = "runs/train"
    checkpoint_every: int = knob(1, COUNT_OR_OFF)  # epochs (0 = only at the end)
    # also every this many global steps (0 = off)
    checkpoint_every_steps: int = knob(0, COUNT_OR_OFF)
    # steps per metrics window (also reported at every epoch end)
    report_every: int = knob(50, COUNT)
    # worker failures Ray Train recovers from (0 = none; -1 = no limit, as Ray takes it)
    max_failures: int = knob(1, Interval(int, -1))
    resume_from: str | None = None  # a checkpoint directory from another run
    seed: int = knob(0, SEED)
    # steps between cross-worker prototype fingerprint checks (0 = off)
    verify_every: int = knob(1, COUNT_OR_OFF)
    barrier_timing: bool = False  # time the wait for stragglers apart from the all-reduce
    # TensorBoard event files of the training metrics (`tensorboard --logdir <it>`), written
    # by the driver-side callback: "auto" = <storage_path>/<name>/tensorboard when the
    # storage is a local path (off for s3:// and the like), "" = off, else a local folder.
    tensorboard_dir: str = "auto"
    # failure injection (tests): one worker dies once there
    fail_at_epoch: int | None = knob(None, COUNT_OR_OFF)
    fail_at_step: int | None = knob(None, COUNT_OR_OFF)  # ... or before this global step

    def __post_init__(self) -> None:
        self.storage_path = absolute(self.storage_path)
        self.resume_from = absolute(self.resume_from)


@with_method_sections  # + each method's own section ([dcam])
@dataclass
class TrainConfig:
    data: TrainData = field(default_factory=TrainData)
    # the shared sections (clam_dist/sections.py): the pipeline's are the same classes
    model: ModelSection = field(default_factory=ModelSection)
    optim: OptimSection = field(default_factory=OptimSection)
    run: TrainRun = field(default_factory=TrainRun)
    # [storage] shared = true: on a cluster of several nodes, local paths (data.url,
    # run.storage_path) are a mount every node sees; checked by `clam-dist train` before
    # any work (trainer.check_storage). One node: not checked.
    storage: StorageSection = field(default_factory=StorageSection)

    def __post_init__(self) -> None:
        fill_method_defaults(self.model, self.optim, self.data)
        if self.model.coarse_clusters is not None:
            raise ConfigError(
                "model.coarse_clusters: `clam-dist train` trains one level; two levels are "
                "trained by `clam-dist pipeline --set model.coarse_clusters=...` (one Ray "
                "task per coarse cell) or in memory (clam_dist.KMeans(..., "
                "coarse_clusters=...))"
            )
