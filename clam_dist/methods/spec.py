"""What a method tells the rest of clam-dist about itself (see ``clam_dist.methods``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TuneHooks:
    """How Ray Tune searches a method (``clam_dist.tune``); None for untunable methods."""

    # (job config, k, searched point, seed) -> the trial's parameters
    trial_params: Callable[..., Any]
    # (trial data, parameters) -> a trial with step() / predict()
    make_trial: Callable[..., Any]
    # the TuneSearch knobs searched, and the point the training job uses when none is set
    # (Tuning must beat THAT point)
    knobs: tuple[str, ...]
    default_point: dict
    # (job config, k, point, confirmation means) -> TrainConfig sections for the winner
    model_sections: Callable[..., dict]
    # (job config) -> None: method-specific checks before data is read
    check_job: Callable[..., None] = lambda config: None
    # (job config, n_features) -> None: checks that need the data's width
    check_for_data: Callable[..., None] = lambda config, n_features: None
    # appended to the score's description (where the Silhouette is measured)
    score_note: str = ""
    # default search ranges that differ from the shared ones (tune/space.py)
    range_overrides: dict = field(default_factory=dict)


@dataclass(frozen=True)
class MethodSpec:
    """One method's registration. Hooks take the run's config objects and plain arrays;
    defaults serve methods that train prototypes in the input space."""

    name: str
    summary: str
    # Distributed trainer: (TrainConfig, init, device, sample) -> Objective, or None for a
    # closed-form update (k-means' all-reduced sums and counts, in the loop).
    make_objective: Callable[..., Any]
    # (TrainConfig, z standardised sample, torch.Generator) -> init fields (prototypes,
    # beta) for the driver's initialisation; None = k-means++/k-means|| (+ Lloyd) seeding.
    initial_prototypes: Callable[..., dict] | None = None
    # (TrainConfig) -> epochs the run adds before optim.epochs (DCAM's pretraining)
    extra_epochs: Callable[..., int] = lambda cfg: 0
    # (TrainConfig, n_features) -> None: checks before any work (raise ValueError)
    check_train_config: Callable[..., None] = lambda cfg, n_features: None
    # does every worker need the (standardised) initialisation sample?
    needs_sample_on_workers: bool = False
    # pipeline config sections besides data/model/seed that change this method's model
    config_sections: tuple[str, ...] = ()
    # Pipeline's in-memory trainer: (pipeline config, z standardised sample) -> estimator
    fit_on_sample: Callable[..., Any] | None = None
    # training history the estimator exposes, for the artifact's meta
    estimator_history: Callable[..., dict] = lambda est: {
        "loss_history": list(getattr(est, "loss_history_", []))
    }
    # Predictor: (artifact) -> how rows are labelled: "am" (T AM steps, then nearest),
    # "dot" (attention with dot-product scores) or "nearest" (nearest prototype)
    assignment_rule: Callable[..., str] = lambda artifact: "nearest"
    # (artifact) -> the encoder from input to model space, or None (input space)
    encoder: Callable[..., Any] = lambda artifact: None
    tune: TuneHooks | None = None
