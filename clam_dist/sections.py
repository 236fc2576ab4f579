"""The config sections every job shares: each knob is declared once, here, with its one
default and a one-line doc. Job configs (``train.config.TrainConfig``,
``pipeline.config.PipelineConfig``, ``assign.pipeline.AssignConfig``,
``evaluate.run.EvaluateConfig``, ``tune.config.TuneJobConfig``) are built from these
sections, and a stage hands a section on whole instead of copying its fields.

    section          knobs                                          used by
    SourceColumns    which columns hold vectors, ids, labels;       train, pipeline, assign,
                     fsspec options; NaN policy                     evaluate, tune
    ModelSection     method, k, AM dynamics (beta, alpha, T,        train, pipeline
                     metric, mask), initialisation
    OptimSection     lr, epochs, batch size, schedule               train, pipeline
    [<method>]       a method's own knobs (DCAM's autoencoder and   train, pipeline, tune
                     phases): the method's section, added to every
                     job config by ``with_method_sections``
    WorkersSection   how many workers, GPUs, CPUs per worker        train, pipeline
    OutputsSection   what an assignment writes and how it batches   assign, pipeline

See docs/design.md ("Configuration") for the glossary of the names.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from clam_dist import methods
from clam_dist.config import Interval, knob

# A sanity cap on k: far beyond any clustering we run, small enough that a typo (1e9) is
# refused before a k x d prototype matrix is allocated.
MAX_CLUSTERS = 2**24
# Seeds reach numpy's legacy RandomState and torch: both take [0, 2**32).
SEED = Interval(int, 0, 2**32 - 1)
# Rules shared by many knobs.
COUNT = Interval(int, 1)  # something there must be at least one of
COUNT_OR_OFF = Interval(int, 0)  # 0 turns it off / means "auto", as each comment says
POSITIVE = Interval(float, 0, None, "neither")
NON_NEGATIVE = Interval(float, 0)
RATIO = Interval(float, 0, 1, "left")  # a share of something: [0, 1)


class CountOrWord:
    """A count >= 1, or one of the words the field's type allows ("auto", "exact"; the
    type's Literal checks the words)."""

    def check(self, value: Any, where: str) -> None:
        from clam_dist.config import ConfigError

        if isinstance(value, bool) or (isinstance(value, int) and value < 1):
            raise ConfigError(f"{where} must be >= 1 or a word, got {value!r}")


@dataclass
class SourceColumns:
    """Which columns of the Parquet rows hold what, and how to reach the files."""

    vector_column: str | None = None  # one list/fixed-size-list column of floats
    feature_columns: list[str] | str | None = None  # scalar columns: names or one glob ("f*")
    id_column: str | None = None  # None: stable generated '<file>:<row>' ids
    label_column: str | None = None  # ground truth, when known: NMI/ARI/ACC in reports
    storage_options: dict | None = None  # fsspec options (endpoint, profile) for every URL
    # Rows with NaN/inf: "error" names them and writes nothing; "drop" leaves them out.
    nan_policy: Literal["error", "drop"] = "error"


@dataclass
class ModelSection:
    """What model is learned: the method, k, the AM dynamics and the initialisation."""

    # clam: masked pattern completion (ClAM); kmeans: mini-batch or Lloyd (section
    # [kmeans]); attention: k heads trained on reconstruction risk (section [attention]);
    # dcam: autoencoder + latent AM (section [dcam]).
    method: str = methods.DEFAULT  # a registered method (clam_dist.methods.names())
    n_clusters: int = knob(16, Interval(int, 1, MAX_CLUSTERS))
    # AM inverse temperature; None: from the data's distance scale
    beta: float | None = knob(None, POSITIVE)
    alpha: float = knob(0.1, Interval(float, 0, 1, "right"))  # AM step size, in (0, 1]
    steps: int = knob(10, COUNT_OR_OFF)  # T, the AM steps of the dynamics
    metric: Literal["euclidean", "spherical"] = "euclidean"
    # share of coordinates hidden for pattern completion (0: none)
    mask_ratio: float = knob(0.2, RATIO)
    fill: Literal["mean", "min", "max", "zero"] = "mean"  # value of hidden coordinates
    shared_every: int = knob(3, COUNT_OR_OFF)  # every n-th epoch one mask per batch (0: never)
    # "kmeans": k-means++ seeding refined by Lloyd on the sample (as the estimator's
    # default); "kmeans++" seeding only; "kmeans||" for large k.
    init: Literal["kmeans", "kmeans++", "kmeans||"] = "kmeans"
    # Two levels for large k: coarse_clusters cells, then each cell's fine prototypes
    # trained on its rows, fine k per cell proportional to its rows, every non-empty cell
    # at least one (clam_dist/models/two_level.py); None: flat. nprobe: the cells a row
    # searches: "auto" (the fewest reaching 99% agreement with exact search on held-out
    # rows, measured at training), a number, or "exact" (every fine prototype).
    coarse_clusters: int | None = knob(None, Interval(int, 1, MAX_CLUSTERS))
    nprobe: int | Literal["auto", "exact"] = knob("auto", CountOrWord())

    def __post_init__(self) -> None:
        from clam_dist.config import ConfigError

        methods.check_name(self.method, "model.method")
        if self.coarse_clusters is not None and self.coarse_clusters > self.n_clusters:
            raise ConfigError(
                f"model.coarse_clusters={self.coarse_clusters} is more than "
                f"model.n_clusters={self.n_clusters}: each cell needs a fine cluster"
            )


@dataclass
class OptimSection:
    """How the model is trained: Adam's rate, epochs, the batch and the rate schedule."""

    # None: the method's own default (clam_dist/methods/<name>: DEFAULTS.lr), filled in
    # when the job config is built. No upper bound: a diverging rate is caught in training.
    lr: float | None = knob(None, POSITIVE)
    epochs: int = knob(3, COUNT)  # DCAM: joint epochs, after dcam.pretrain_epochs
    # 0 = no step budget (epochs decide); else stop after this many steps
    max_steps: int = knob(0, COUNT_OR_OFF)
    # rows per worker per step; 0 = the whole shard (full batch)
    batch_size: int = knob(1024, COUNT_OR_OFF)
    # "plateau": x plateau_factor when the epoch loss has not improved for plateau_patience
    # epochs (the ClAM authors'); "cosine": per-step cosine decay to lr * min_lr_factor;
    # "constant". warmup_steps ramps linearly from 0 for cosine/constant.
    schedule: Literal["plateau", "cosine", "constant"] = "plateau"
    warmup_steps: int = knob(0, COUNT_OR_OFF)
    min_lr_factor: float = knob(0.0, Interval(float, 0, 1))
    # torch's ReduceLROnPlateau takes a factor < 1 (1 would be "constant")
    plateau_factor: float = knob(0.8, Interval(float, 0, 1, "neither"))
    plateau_patience: int = knob(5, COUNT_OR_OFF)


@dataclass
class StorageSection:
    """Where the job's files live, as the cluster sees them (clam_dist/shared_storage.py).
    On a cluster of several nodes every path must be object storage or, with shared =
    true, a mount every node sees (NFS, a volume); either way a probe task on each node
    checks it before any work. Endpoint and credentials: data.storage_options, else the
    environment as every AWS tool reads it (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...)."""

    shared: bool = False


@dataclass
class WorkersSection:
    """The Ray Train workers of a training run."""

    num_workers: int = knob(2, COUNT)
    use_gpu: bool = False
    cpus_per_worker: float = knob(1.0, POSITIVE)


@dataclass
class OutputsSection:
    """What an assignment writes beside each row's cluster, and how it batches."""

    # extras beside cluster and distance: energy (novelty), margin (confidence), probs
    outputs: list[str] = field(default_factory=lambda: ["energy", "margin"])
    passthrough: list[str] = field(default_factory=list)  # input columns copied to the output
    # rows per model call; 0 = chosen from d and k (auto_batch_size)
    batch_size: int = knob(0, COUNT_OR_OFF)
    # assignment tasks in flight; each process holds the model once
    concurrency: int = knob(2, COUNT)


def values_of(section_type: type, config: Any) -> dict:
    """The fields of ``section_type`` read from ``config`` (any object that has them):
    how a stage hands on a section that is part of a larger config."""
    return {f.name: getattr(config, f.name) for f in fields(section_type)}


def with_method_sections(job_config: type) -> type:
    """``job_config`` with one more field per registered method that has its own config
    section, named after the method (``[dcam]``): the job configs hold every method's
    knobs without naming a method (the registry knows them)."""
    extra = [
        (name, section, field(default_factory=section))
        for name, section in methods.sections().items()
    ]
    built = dataclasses.make_dataclass(job_config.__name__, extra, bases=(job_config,))
    # A knob that moved into a method's section is refused at its old place with the new
    # one named (config.load_config): each section lists its own in MOVED_FROM.
    built.MOVED_FIELDS = {
        **getattr(job_config, "MOVED_FIELDS", {}),
        **{
            old: f"{name}.{new}"
            for name, section in methods.sections().items()
            for old, new in getattr(section, "MOVED_FROM", {}).items()
        },
    }
    # The same name, module and doc as the class it extends: pickles by reference (Ray
    # ships TrainConfig to its workers) and reads the same in errors and help.
    built.__module__, built.__qualname__ = job_config.__module__, job_config.__qualname__
    built.__doc__ = job_config.__doc__
    return built


def fill_method_defaults(model: ModelSection, optim: OptimSection, data=None) -> None:
    """Knobs left unset (None) take the method's own default (its DEFAULTS); ``data``: a
    job's [data] section, whose ``standardize`` is such a knob."""
    defaults = methods.get(model.method).defaults
    if optim.lr is None:
        optim.lr = defaults.lr
    if data is not None and getattr(data, "standardize", False) is None:
        data.standardize = defaults.standardize
