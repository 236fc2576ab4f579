"""Typed configuration of a distributed training run (TOML/YAML + section.field overrides)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from clam_dist import methods
from clam_dist.data.urls import absolute


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
    # Files are dealt to this many "lanes" (0 = one per worker); each worker reads the lanes
    # rank, rank + W, ... and every step takes the same number of rows from every lane. The
    # global batch of a step is then a function of (lanes, epoch, seed) alone, so 1 worker
    # and 2 workers with the same lanes train on exactly the same rows (must be a multiple
    # of the worker count).
    lanes: int = 0

    def __post_init__(self) -> None:
        self.url = absolute(self.url)


@dataclass
class TrainModel:
    # clam: masked pattern completion (ClAM); kmeans: mini-batch or Lloyd; attention: k
    # heads trained on reconstruction risk; dcam: autoencoder + latent AM (section [dcam]).
    method: str = "clam"  # a registered method (clam_dist.methods.names())
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
    # attention: "distance" scores -beta/2 ||x - mu_h||^2 (one AM step), or "dot" beta x.mu_h
    similarity: Literal["distance", "dot"] = "distance"

    def __post_init__(self) -> None:
        methods.check_name(self.method, "model.method")


@dataclass
class TrainDCAM:
    """DCAM only: the autoencoder and its two phases (model.* holds k, beta, alpha, T,
    mask; optim.epochs counts the JOINT epochs, after ``pretrain_epochs``)."""

    encoder: Literal["mlp", "conv"] = "mlp"
    latent_dim: int = 10
    hidden: list[int] | None = None  # None: [128, 64] (mlp) or [16, 32] channels (conv)
    image_shape: list[int] | None = None  # conv: [C, H, W]; None: square 1/3-channel guess
    pretrain_epochs: int = 5
    recon_weight: float = 1.0
    # The joint phase may trade reconstruction for clustering only within this tolerance
    # of the pretrained reconstruction loss: "select" keeps the best epoch within it,
    # "stop" also stops at the first epoch beyond it, "none" ignores it.
    recon_tolerance: float = 0.10
    recon_bound: Literal["select", "stop", "none"] = "select"


@dataclass
class TrainOptim:
    lr: float = 0.01
    epochs: int = 5
    max_steps: int = 0  # 0 = no step budget (epochs decide); else stop after this many steps
    batch_size: int = 1024  # rows per worker per step; 0 = the whole shard (full batch)
    # "plateau": x plateau_factor when the epoch loss has not improved for plateau_patience
    # epochs (the ClAM authors'); "cosine": per-step cosine decay to lr * min_lr_factor;
    # "constant". warmup_steps ramps linearly from 0 for cosine/constant.
    schedule: Literal["plateau", "cosine", "constant"] = "plateau"
    warmup_steps: int = 0
    min_lr_factor: float = 0.0
    plateau_factor: float = 0.8
    plateau_patience: int = 5


@dataclass
class TrainRun:
    name: str = "clam-train"
    storage_path: str = "runs/train"
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
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
    model: TrainModel = field(default_factory=TrainModel)
    dcam: TrainDCAM = field(default_factory=TrainDCAM)
    optim: TrainOptim = field(default_factory=TrainOptim)
    run: TrainRun = field(default_factory=TrainRun)
