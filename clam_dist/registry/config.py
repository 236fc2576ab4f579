"""What `clam-dist run-partition` reads: the pipeline's config (the same [data], [model],
[optim], [train], [assign] sections and method sections, so one config file serves both
commands) plus the schedule's own sections: [drift], [refresh] and [gate]."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from clam_dist.config import ConfigError, Interval, knob
from clam_dist.pipeline.config import PipelineConfig
from clam_dist.sections import COUNT, COUNT_OR_OFF, NON_NEGATIVE, POSITIVE

SHARE = Interval(float, 0, 1)


@dataclass
class DriftSection:
    """When a partition counts as drifted (docs/design.md, "Running on a schedule")."""

    # Refresh when more than this share of the partition's rows drifted: rows whose energy
    # is above the champion's training 99th percentile (about 1% without drift, by
    # construction) or whose nearest cluster changed its share of rows by more than
    # size_change. Measured on stable days of jobs/bench_schedule.py: 1.0-1.2%.
    threshold: float = knob(0.03, SHARE)
    # A cluster "changed size" when |share now - share at training| > size_change x the
    # share at training (shares below 1/(4k) count as 1/(4k): tiny clusters are noisy).
    size_change: float = knob(0.5, POSITIVE)


@dataclass
class RefreshSection:
    """How a drifted partition refreshes the champion: warm, on a bounded training set."""

    # Rows sampled from the partition for training (and the gate's held-out rows on top),
    # seeded by the partition key and the parent version.
    train_rows: int = knob(200_000, COUNT)
    # Each partition leaves a sample of this many rows in the registry's reservoir; a
    # refresh trains on the partition plus the samples of the latest reservoir_partitions
    # partitions before it (0: none). Bounded: reservoir_rows x reservoir_partitions rows.
    reservoir_rows: int = knob(20_000, COUNT_OR_OFF)
    reservoir_partitions: int = knob(7, COUNT_OR_OFF)
    # New structure: rows the champion cannot explain (energy above its threshold) are
    # clustered on their own; a group of at least min_new_cluster_share of the training
    # rows that is as tight as the champion's clusters becomes a new cluster, at most
    # max_new_clusters per refresh (0: never add clusters).
    max_new_clusters: int = knob(8, COUNT_OR_OFF)
    min_new_cluster_share: float = knob(0.005, SHARE)
    # A trained cluster keeps its parent's id when optimal matching pairs it with a parent
    # prototype closer than match_bound x that parent's distance to its nearest other
    # parent prototype; otherwise it gets a new id.
    match_bound: float = knob(0.5, POSITIVE)
    # Clusters with fewer training rows than this after the refresh are retired.
    min_cluster_rows: int = knob(1, COUNT)
    # A refresh fine-tunes: it trains at optim.lr x lr_factor. On jobs/bench_schedule.py
    # (3 streams) 0.5 keeps >= 99.5% of unchanged rows on their ids and reaches the
    # from-scratch loss within a third of its steps on 2 of 3; 0.1 keeps 99.7% but needs
    # two thirds; 1.0 keeps 99.3% but put 9% of a new component's rows on old ids once.
    lr_factor: float = knob(0.5, Interval(float, 0, 1, "right"))
    # Lloyd iterations of a k-means refresh (its optimiser-free warm training).
    kmeans_iterations: int = knob(50, COUNT)


@dataclass
class GateSection:
    """A challenger becomes champion only if it beats the champion on held-out rows."""

    # inertia: mean squared distance to the assigned prototype in the model's space (lower
    # is better); silhouette: on the held-out sample (higher is better).
    metric: Literal["inertia", "silhouette"] = "inertia"
    # inertia: the challenger must be at least this fraction lower; silhouette: at least
    # this much higher (absolute).
    margin: float = knob(0.01, NON_NEGATIVE)
    holdout_rows: int = knob(10_000, COUNT)  # held out of training, drawn from the partition
    # true: publish challengers that pass as "challenger" only; a person promotes them
    # (`clam-dist models promote`).
    hold: bool = False


@dataclass
class PartitionConfig(PipelineConfig):
    drift: DriftSection = field(default_factory=DriftSection)
    refresh: RefreshSection = field(default_factory=RefreshSection)
    gate: GateSection = field(default_factory=GateSection)

    def __post_init__(self) -> None:
        if self.model.coarse_clusters is not None:
            raise ConfigError(
                "model.coarse_clusters: run-partition trains and refreshes one level; "
                "two-level models are not scheduled yet"
            )
        super().__post_init__()


__all__ = ["DriftSection", "GateSection", "PartitionConfig", "RefreshSection"]
