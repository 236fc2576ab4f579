"""Typed configuration of a tuning run (TOML/YAML + ``section.field=value`` overrides)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from clam_dist import methods
from clam_dist.data.urls import absolute
from clam_dist.sections import DCAMSection, SourceColumns


@dataclass
class TuneData(SourceColumns):
    # Exactly one of: a bundled ClAM-paper data set name, or a Parquet URL (any fsspec URL).
    dataset: str | None = None
    url: str | None = None
    sample: int = 5000  # rows every trial trains on (a uniform sample of the data)
    standardize: bool = True

    def __post_init__(self) -> None:
        self.url = absolute(self.url)


@dataclass
class TuneModel:
    # The method whose knobs are searched and whose training config is written: "clam",
    # "attention" (attention clustering) or "dcam" (knobs: see TuneSearch).
    method: str = "clam"  # a registered method that registers Tune hooks
    n_clusters: int = 0  # 0: the number of classes of a bundled data set
    # The AM metric (ClAM; DCAM in its latent space). Attention clustering takes only
    # "euclidean": its score function is search.similarity.
    metric: Literal["euclidean", "spherical"] = "euclidean"
    fill: Literal["mean", "min", "max", "zero"] = "mean"  # ClAM; DCAM: of latent coordinates
    batch_size: int = 32  # rows per optimiser step in every trial (written to optim.batch_size)
    steps: int = 10  # T when search.steps_from_alpha is false

    def __post_init__(self) -> None:
        methods.check_name(self.method, "model.method", tunable_only=True)


@dataclass
class TuneSearch:
    """Closed ranges [low, high] searched by random sampling; low == high fixes a value.
    None (unset) = the method's default range (``space.DEFAULT_RANGES``); a knob the
    method does not have must stay unset.

    beta is searched as a multiple of the data-derived default (``beta_from_data``; DCAM:
    on the pretrained latents), so one range serves data of any scale.

    knobs      clam   attention   dcam   default range
    beta_scale  x        x         x     [0.25, 4] log-uniform
    lr          x        x         x     [0.001, 0.1] log-uniform (dcam [0.0003, 0.03])
    mask_ratio  x                  x     [0.1, 0.5] uniform
    alpha       x                  x     [0.05, 0.5] uniform (T = round(1/alpha))
    recon_weight                   x     [0.25, 4] log-uniform
    similarity           x               ["distance", "dot"] (a choice, not a range)
    """

    beta_scale: list[float] | None = None
    lr: list[float] | None = None
    mask_ratio: list[float] | None = None
    alpha: list[float] | None = None
    recon_weight: list[float] | None = None
    similarity: list[str] | None = None
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
    # "silhouette": mean Silhouette of the trial's clustering (ClAM: labels from the AM
    # dynamics, every one of the k prototypes kept alive as the estimator does; attention:
    # the head with the highest weight; DCAM: latent AM dynamics of the selected state) on
    # a fixed uniform subsample of the data, always in the (standardised) INPUT space, so
    # DCAM configurations with different latent spaces are compared in one geometry;
    # higher is better.
    # "heldout_loss": on held-out rows, lower is better: ClAM the masked pattern-completion
    # loss with fixed masks; attention the reconstruction risk; DCAM the joint AM loss with
    # fixed latent masks.
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
    # The training job's [dcam] (architecture and phases of every DCAM trial; trials
    # pretrain dcam.pretrain_epochs epochs before their first report, then
    # budget.max_epochs joint epochs). recon_weight is searched (search.recon_weight).
    dcam: DCAMSection = field(default_factory=DCAMSection)
    budget: TuneBudget = field(default_factory=TuneBudget)
    score: TuneScore = field(default_factory=TuneScore)
    run: TuneRun = field(default_factory=TuneRun)
