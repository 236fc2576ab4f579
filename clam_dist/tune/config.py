"""Typed configuration of a tuning run (TOML/YAML + ``section.field=value`` overrides)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from clam_dist import methods
from clam_dist.config import Interval, PathSegment, knob
from clam_dist.data.urls import absolute
from clam_dist.methods.spec import SearchChoice
from clam_dist.sections import (
    COUNT,
    COUNT_OR_OFF,
    MAX_CLUSTERS,
    POSITIVE,
    SEED,
    SourceColumns,
    with_method_sections,
)


@dataclass
class TuneData(SourceColumns):
    # Exactly one of: a bundled ClAM-paper data set name, or a Parquet URL (any fsspec URL).
    dataset: str | None = None
    url: str | None = None
    # rows every trial trains on (a uniform sample of the data)
    sample: int = knob(5000, Interval(int, 2))
    standardize: bool = True

    def __post_init__(self) -> None:
        self.url = absolute(self.url)


@dataclass
class TuneModel:
    # The method whose knobs are searched and whose training config is written (a method
    # that registers Tune hooks; knobs: see TuneSearch).
    method: str = methods.DEFAULT
    # 0: the number of classes of a bundled data set
    n_clusters: int = knob(0, Interval(int, 0, MAX_CLUSTERS))
    # The AM metric (ClAM; DCAM in its latent space). A method whose score function is a
    # search knob of its own (attention) takes only "euclidean".
    metric: Literal["euclidean", "spherical"] = "euclidean"
    fill: Literal["mean", "min", "max", "zero"] = "mean"  # ClAM; DCAM: of latent coordinates
    # rows per optimiser step in every trial (written to optim.batch_size)
    batch_size: int = knob(32, COUNT)
    steps: int = knob(10, COUNT)  # T when search.steps_from_alpha is false

    def __post_init__(self) -> None:
        methods.check_name(self.method, "model.method", tunable_only=True)


def with_own_knobs(search: type) -> type:
    """``search`` with one field per knob a tunable method declares as its own
    (``TuneSpec.own_knobs``): a list of floats for a range, of names for a choice."""
    extra = []
    for name in methods.names():
        tune = methods.get(name).tune
        for knob_name, kind in ({} if tune is None else tune.own_knobs).items():
            typ = list[str] | None if isinstance(kind, SearchChoice) else list[float] | None
            extra.append((knob_name, typ, field(default=None)))
    built = dataclasses.make_dataclass(search.__name__, extra, bases=(search,))
    built.__module__, built.__qualname__ = search.__module__, search.__qualname__
    built.__doc__ = search.__doc__
    return built


@with_own_knobs  # + each tunable method's own knobs (attention: similarity; DCAM: recon_weight)
@dataclass
class TuneSearch:
    """Closed ranges [low, high] searched by random sampling; low == high fixes a value.
    None (unset) = the method's default range (``space.default_ranges``); a knob the
    method does not have must stay unset.

    beta is searched as a multiple of the data-derived default (``beta_from_data``; DCAM:
    on the pretrained latents), so one range serves data of any scale.

    shared knobs  default range (``space.SHARED_KNOBS``; a method may override it)
    beta_scale    [0.25, 4] log-uniform
    lr            [0.001, 0.1] log-uniform
    mask_ratio    [0.1, 0.5] uniform
    alpha         [0.05, 0.5] uniform (T = round(1/alpha))

    Which of them a method searches, and the knobs only it has, are in its package
    (``clam_dist/methods/<name>/__init__.py``: ``TuneSpec.knobs`` and ``own_knobs``).
    """

    beta_scale: list[float] | None = None
    lr: list[float] | None = None
    mask_ratio: list[float] | None = None
    alpha: list[float] | None = None
    steps_from_alpha: bool = True  # T = round(1 / alpha), as the authors pair them


@dataclass
class TuneBudget:
    # random configurations (plus the default one, see run.include_default)
    num_samples: int = knob(16, COUNT)
    max_epochs: int = knob(15, COUNT)
    # ASHA: epochs every trial gets before it may be stopped (at most max_epochs)
    grace_period: int = knob(3, COUNT)
    # ASHA keeps 1 / reduction_factor of the trials at each rung: more than 1
    reduction_factor: float = knob(3.0, Interval(float, 1, None, "neither"))
    cpus_per_trial: float = knob(1.0, POSITIVE)
    max_concurrent: int = knob(0, COUNT_OR_OFF)  # 0: as many as the cluster's CPUs allow


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
    silhouette_sample: int = knob(2000, Interval(int, 10))
    # fraction of the sample held out (heldout_loss only); the rest must still train
    holdout: float = knob(0.2, Interval(float, 0, 0.9, "neither"))
    # Selection after the search (full budget, fresh seeds, never the search's):
    # the `finalists` best searched trials and the default are re-trained on `final_seeds`
    # seeds, and the best finalist replaces the default when its mean there is at least
    # the default's (the choice). Both are then re-trained on `confirm_seeds` further
    # seeds that take no part in the choice: the confirmed figures carry no selection bias.
    finalists: int = knob(3, COUNT)
    final_seeds: int = knob(3, COUNT)
    confirm_seeds: int = knob(5, COUNT)


@dataclass
class TuneRun:
    # The search's folder under storage_path (and its MLflow experiment): one folder name.
    name: str = knob("clam-tune", PathSegment())
    storage_path: str = "runs/tune"  # Tune results (CSV, JSON, TensorBoard events per trial)
    output: str = "runs/tune/best.toml"  # the best configuration, a TrainConfig TOML
    seed: int = knob(0, SEED)
    include_default: bool = True  # the default configuration is always one of the trials
    mlflow_tracking_uri: str | None = None  # also log trials to MLflow (needs mlflow)


# + each method's own section, e.g. the training job's [dcam] (architecture and phases of
# every DCAM trial: trials pretrain dcam.pretrain_epochs epochs before their first report,
# then budget.max_epochs joint epochs; recon_weight is searched: search.recon_weight).
@with_method_sections
@dataclass
class TuneJobConfig:
    data: TuneData = field(default_factory=TuneData)
    model: TuneModel = field(default_factory=TuneModel)
    search: TuneSearch = field(default_factory=TuneSearch)
    budget: TuneBudget = field(default_factory=TuneBudget)
    score: TuneScore = field(default_factory=TuneScore)
    run: TuneRun = field(default_factory=TuneRun)
