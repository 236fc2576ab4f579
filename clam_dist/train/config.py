"""Typed configuration of a distributed training run (TOML/YAML + section.field overrides)."""

from __future__ import annotations

from dataclasses import dataclass, field

from clam_dist.data.urls import absolute
from clam_dist.sections import (
    DCAMSection,
    ModelSection,
    OptimSection,
    SourceColumns,
    WorkersSection,
)


@dataclass
class TrainData(SourceColumns):
    url: str = ""  # the Parquet prefix (local path or fsspec URL) to train on
    standardize: bool = True  # train in per-feature standardised space
    init_sample: int = 50_000  # rows sampled (Dask) for initialisation and beta
    # Files are dealt to this many "lanes" (0 = one per worker); each worker reads the lanes
    # rank, rank + W, ... and every step takes the same number of rows from every lane. The
    # global batch of a step is then a function of (lanes, epoch, seed) alone, so 1 worker
    # and 2 workers with the same lanes train on exactly the same rows (must be a multiple
    # of the worker count).
    lanes: int = 0
    # Row groups each lane decodes at once (threads; Parquet decoding releases the GIL).
    # The order of rows, so every batch, is the same for any value; memory holds up to
    # read_threads + 1 decoded row groups per lane. 1 = decode in the prefetch thread only.
    read_threads: int = 2

    def __post_init__(self) -> None:
        self.url = absolute(self.url)
        if self.read_threads < 1:
            raise ValueError(f"data.read_threads must be >= 1, got {self.read_threads}")


@dataclass
class TrainRun(WorkersSection):
    name: str = "clam-train"
    storage_path: str = "runs/train"
    checkpoint_every: int = 1  # epochs (0 = only at the end)
    checkpoint_every_steps: int = 0  # also every this many global steps (0 = off)
    report_every: int = 50  # steps per metrics window (also reported at every epoch end)
    max_failures: int = 1
    resume_from: str | None = None  # a checkpoint directory from another run
    seed: int = 0
    verify_every: int = 1  # steps between cross-worker prototype fingerprint checks (0 = off)
    barrier_timing: bool = False  # time the wait for stragglers apart from the all-reduce
    # TensorBoard event files of the training metrics (`tensorboard --logdir <it>`), written
    # by the driver-side callback: "auto" = <storage_path>/<name>/tensorboard when the
    # storage is a local path (off for s3:// and the like), "" = off, else a local folder.
    tensorboard_dir: str = "auto"
    fail_at_epoch: int | None = None  # failure injection (tests): one worker dies once there
    fail_at_step: int | None = None  # ... or before this global step (0-based)

    def __post_init__(self) -> None:
        self.storage_path = absolute(self.storage_path)
        self.resume_from = absolute(self.resume_from)


@dataclass
class TrainConfig:
    data: TrainData = field(default_factory=TrainData)
    # the shared sections (clam_dist/sections.py): the pipeline's are the same classes
    model: ModelSection = field(default_factory=ModelSection)
    dcam: DCAMSection = field(default_factory=DCAMSection)
    optim: OptimSection = field(default_factory=OptimSection)
    run: TrainRun = field(default_factory=TrainRun)
