"""What a method tells the rest of clam-dist about itself: the one interface between the
generic code (trainer, pipeline, predictor, Tune, CLI) and a method package.

A method package (``clam_dist/methods/<name>/``) exports ``SPEC``, a :class:`MethodSpec`:
light facts (name, defaults, config section, Tune knobs) that configs and the CLI read
without importing torch, and ``hooks``, a :class:`Ref` to its :class:`MethodHooks`
implementation (objective, estimator, Tune trial), imported when a run needs it. Generic
code imports this module and the registry (``clam_dist.methods``), never a method
package (``tests/test_method_structure.py`` asserts it from the AST).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

if TYPE_CHECKING:  # annotations only: importing these here would load torch
    import numpy as np
    import torch

    from clam_dist.artifacts import ModelArtifact
    from clam_dist.train.objectives import Objective
    from clam_dist.train.updates import Update

T = TypeVar("T")


@dataclass(frozen=True)
class Ref(Generic[T]):
    """``"module:attribute"``, imported on first ``load()``. A method's heavy parts (torch,
    scikit-learn) load only when a run needs them, so config checks and the CLI's
    refusals stay under a second."""

    target: str

    def load(self) -> T:
        module, _, attribute = self.target.partition(":")
        return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class MethodDefaults:
    """The one default of each knob whose default is the method's own; every entry point
    (the in-memory estimator, the job configs' sections, the Tune baseline point) reads
    it from here (``tests/test_method_structure.py`` compares them)."""

    lr: float = 0.01  # Adam's learning rate
    n_clusters: int = 8  # the estimator's k (scikit-learn's KMeans default)
    # data.standardize of the job configs (clam_dist/models/scaling.py: True, False or
    # "auto"); an estimator with a ``standardize`` parameter has the same default.
    standardize: bool | str = True


@dataclass(frozen=True)
class SearchRange:
    """A numeric Tune knob: the range searched when none is given, and its domain (what a
    given range may reach; the messages of tune/space.py name these bounds)."""

    default: tuple[float, float]
    log: bool = False  # sampled log-uniformly (then low must be > low_min)
    low_min: float = 0.0
    low_open: bool = False  # low must be > low_min even on a linear scale
    high_max: float = math.inf
    high_open: bool = False  # high must be < high_max


@dataclass(frozen=True)
class SearchChoice:
    """A Tune knob that is a choice among named options, not a range."""

    options: tuple[str, ...]


@dataclass(frozen=True)
class TuneSpec:
    """How Ray Tune searches a method (``clam_dist.tune``): the light part."""

    # the TuneSearch knobs searched, and the point the training job uses when none is set
    # (tuning must beat THAT point)
    knobs: tuple[str, ...]
    default_point: dict
    # appended to the score's description (where the Silhouette is measured)
    score_note: str = ""
    # default search ranges that differ from the shared ones (tune/space.py)
    range_overrides: dict = field(default_factory=dict)
    # knobs only this method has (``search.<name>`` in the tune config), with their domain
    own_knobs: dict[str, SearchRange | SearchChoice] = field(default_factory=dict)


class Trial(Protocol):
    """One tuning trial (``clam_dist.tune.trial.SteppedTrial`` is the usual base)."""

    beta_default: float

    def step(self) -> dict: ...

    def predict(self, rows: np.ndarray) -> np.ndarray: ...


class MethodHooks(Protocol):
    """The heavy part of a method: what the trainer, the pipeline, the predictor and Tune
    call. ``cfg`` is a ``TrainConfig``, ``config`` a pipeline or Tune job config; arrays
    are plain numpy or torch."""

    def make_objective(
        self, cfg: Any, init: dict, device: torch.device, sample: np.ndarray | None
    ) -> Objective | None:
        """The objective the trainer steps by gradient; None when the method trains by
        its ``closed_form_update`` instead."""

    def closed_form_update(self, cfg: Any, init: dict, device: torch.device) -> Update | None:
        """The method's own update on the trainer's loop (the ``train.updates.Update``
        steps: local statistics, all-reduce, apply), for a method with no gradient
        (k-means' per-centre sums and counts); None: gradient on ``make_objective``."""

    def initial_prototypes(self, cfg: Any, z: torch.Tensor, generator: torch.Generator) -> dict:
        """Init fields (prototypes, beta) from the standardised sample ``z``; {} = the
        trainer's k-means++ / k-means|| (+ Lloyd) seeding."""

    def extra_epochs(self, cfg: Any) -> int:
        """Epochs of the method's own phases that come before optim.epochs."""

    def check_train_config(self, cfg: Any, n_features: int) -> None:
        """Raise ValueError naming the knob when the method cannot train on this data."""

    def make_estimator(self, config: Any) -> Any:
        """This method's estimator (unfitted) with the config's knobs: what the pipeline
        fits in memory, and the template every cell of a two-level job is cloned from."""

    def fit_on_sample(self, config: Any, z: np.ndarray) -> Any:
        """The pipeline's in-memory fit: a fitted estimator of this method."""

    def estimator_history(self, estimator: Any) -> dict:
        """Training history of a fitted estimator, for the artifact's meta."""

    def scratch_fit(self, config: Any, z: np.ndarray, seed: int) -> WarmFit:
        """A scheduled model's first version (and the benchmark's from-scratch baseline):
        the method trained from its own start on ``z`` (standardised rows), the same way
        ``warm_fit`` trains from given prototypes."""

    def warm_fit(
        self, config: Any, z: np.ndarray, parent: ModelArtifact, prototypes: np.ndarray, seed: int
    ) -> WarmFit:
        """A scheduled refresh: train on ``z`` (rows in the parent's standardised input
        space) starting from ``prototypes`` (the parent's, plus any new ones), keeping the
        parent's scaler and beta (clam_dist/registry/refresh.py)."""

    def encoder(self, artifact: ModelArtifact) -> torch.nn.Module | None:
        """The encoder from input to model space, or None (input space)."""

    def trial_params(self, config: Any, k: int, point: dict, seed: int | None) -> Any:
        """A Tune trial's parameters for a searched point."""

    def make_trial(self, data: Any, params: Any) -> Trial: ...

    def model_sections(self, config: Any, k: int, point: dict, final: dict) -> dict:
        """The training config's sections for the chosen point (``final``: its means)."""

    def check_tune_job(self, config: Any) -> None:
        """Method-specific Tune checks before data is read (ConfigError)."""

    def check_tune_data(self, config: Any, n_features: int) -> None:
        """Method-specific Tune checks that need the data's width (ConfigError)."""


@dataclass
class WarmFit:
    """What a warm refresh trained: the prototypes and the artifact fields (beta, alpha,
    steps, metric; tensors/meta of a method that has them), the steps it took and the
    loss after each metrics window (``(global step, loss)``, for the schedule benchmark)."""

    prototypes: np.ndarray
    fields: dict
    steps: int
    losses: list[tuple[int, float]] = field(default_factory=list)


@dataclass(frozen=True)
class InspectRow:
    """One line `clam-dist inspect` shows for a method's own artifact meta."""

    label: str  # what the person reads
    key: str  # the key in --json output
    shown: Any  # the value as printed
    value: Any = None  # the value in --json (None: ``shown``)


def no_rows(meta: dict) -> tuple[InspectRow, ...]:
    return ()


@dataclass(frozen=True)
class MethodSpec:
    """One method's registration (see the module doc)."""

    name: str
    summary: str
    hooks: Ref[MethodHooks]
    # the in-memory estimator class, exported as clam_dist.<its class name>
    estimator: Ref[type]
    defaults: MethodDefaults = MethodDefaults()
    # the method's own config section ([<name>] in job configs), or None
    section: type | None = None
    # the method's phases before its main one (DCAM's "pretrain"); their names are the
    # method's business: the trainer shows them, never compares them
    phases: tuple[str, ...] = ()
    # does every worker need the (standardised) initialisation sample?
    needs_sample_on_workers: bool = False
    # how an artifact's rows are labelled: "am" (T AM steps, then nearest), "dot" (the
    # largest dot product; only when the artifact's meta says score = "dot") or "nearest"
    assignment_rule: str = "nearest"
    # (the artifact's meta) -> what `clam-dist inspect` shows of this method's own fields
    inspect_rows: Callable[[dict], tuple[InspectRow, ...]] = no_rows
    tune: TuneSpec | None = None

    def load_hooks(self) -> MethodHooks:
        return self.hooks.load()()

    def extra_epochs(self, cfg: Any) -> int:
        """Epochs of the method's own phases before optim.epochs (its section's
        ``pretrain_epochs`` when it declares phases)."""
        if not self.phases:
            return 0
        return int(getattr(cfg, self.name).pretrain_epochs)

    def rule_for(self, artifact_meta: dict) -> str:
        """The assignment rule of one artifact (attention's score is per artifact)."""
        if self.assignment_rule == "dot" and artifact_meta.get("score") != "dot":
            return "nearest"
        return self.assignment_rule
