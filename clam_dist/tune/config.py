"""Typed configuration of a tuning run (TOML/YAML + ``section.field=value`` overrides)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class TuneData:
    # Exactly one of: a bundled ClAM-paper data set name, or a Parquet URL (any fsspec URL).
    dataset: str | None = None
    url: str | None = None
    vector_column: str | None = None
    feature_columns: list[str] | None = None
    storage_options: dict | None = None
    sample: int = 5000  # rows every trial trains on (a uniform sample of the data)
    standardize: bool = True


@dataclass
class TuneModel:
    method: Literal["clam"] = "clam"
    n_clusters: int = 0  # 0: the number of classes of a bundled data set
    metric: Literal["euclidean", "spherical"] = "euclidean"
    fill: Literal["mean", "min", "max", "zero"] = "mean"
    batch_size: int = 32  # rows per optimiser step in every trial (written to optim.batch_size)
    steps: int = 10  # T when search.steps_from_alpha is false


@dataclass
class TuneSearch:
    """Closed ranges [low, high] searched by random sampling; low == high fixes a value.

    beta is searched as a multiple of the data-derived default (``beta_from_data``), so one
    range serves data of any scale; the written config carries the absolute beta.
    """

    beta_scale: list[float] = field(default_factory=lambda: [0.25, 4.0])  # log-uniform
    lr: list[float] = field(default_factory=lambda: [0.001, 0.1])  # log-uniform
    mask_ratio: list[float] = field(default_factory=lambda: [0.1, 0.5])  # uniform
    alpha: list[float] = field(default_factory=lambda: [0.05, 0.5])  # uniform
    steps_from_alpha: bool = True  # T = round(1 / alpha), as the authors pair them


@dataclass
class TuneBudget:
    num_samples: int = 16  # random configurations (plus the default one, see run.include_default)
    max_epochs: int = 15
    grace_period: int = 3  # ASHA: epochs every trial gets before it may be stopped
    reduction_factor: float = 3.0
    cpus_per_trial: float = 1.0
    max_concurrent: int = 0  # 0: as many as the cluster's CPUs allow


@dataclass
class TuneScore:
    # "silhouette": mean Silhouette of the trial's clustering (labels from the AM dynamics,
    # every one of the k prototypes kept alive as the estimator does) on a fixed uniform
    # subsample of the data; higher is better.
    # "heldout_loss": the masked pattern-completion loss on held-out rows with fixed masks;
    # lower is better.
    criterion: Literal["silhouette", "heldout_loss"] = "silhouette"
    silhouette_sample: int = 2000
    holdout: float = 0.2  # fraction of the sample held out (heldout_loss only)
    # Selection after the search (full budget, fresh seeds, never the search's):
    # the `finalists` best searched trials and the default are re-trained on `final_seeds`
    # seeds, the best finalist by mean goes on; it and the default are re-trained on
    # `confirm_seeds` further seeds, and the finalist replaces the default only when its
    # mean there is at least the default's. The confirmed figures carry no selection bias.
    finalists: int = 3
    final_seeds: int = 3
    confirm_seeds: int = 5


@dataclass
class TuneRun:
    name: str = "clam-tune"
    storage_path: str = "runs/tune"  # Tune results (CSV, JSON, TensorBoard events per trial)
    output: str = "runs/tune/best.toml"  # the best configuration, a TrainConfig TOML
    seed: int = 0
    include_default: bool = True  # the default configuration is always one of the trials
    mlflow_tracking_uri: str | None = None  # also log trials to MLflow (needs mlflow)


@dataclass
class TuneJobConfig:
    data: TuneData = field(default_factory=TuneData)
    model: TuneModel = field(default_factory=TuneModel)
    search: TuneSearch = field(default_factory=TuneSearch)
    budget: TuneBudget = field(default_factory=TuneBudget)
    score: TuneScore = field(default_factory=TuneScore)
    run: TuneRun = field(default_factory=TuneRun)
