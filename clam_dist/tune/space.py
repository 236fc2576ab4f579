"""The search space: validation (before any trial starts) and the Ray Tune domains.

Kept free of Ray at import time so a bad space fails in milliseconds with a message that
names the parameter, not deep inside a Tune trial.
"""

from __future__ import annotations

import math

from clam_dist.config import ConfigError
from clam_dist.tune.config import TuneBudget, TuneJobConfig, TuneScore, TuneSearch

# name -> (sampled on a log scale?, smallest allowed low, largest allowed high, high open?)
_RANGES: dict[str, tuple[bool, float, float, bool]] = {
    "beta_scale": (True, 0.0, math.inf, False),
    "lr": (True, 0.0, math.inf, False),
    "mask_ratio": (False, 0.0, 1.0, True),
    "alpha": (False, 0.0, 1.0, False),
}

# The default configuration (the estimator's and the trainer's defaults), as a point.
DEFAULT_POINT: dict[str, float] = {"beta_scale": 1.0, "lr": 0.01, "mask_ratio": 0.2, "alpha": 0.1}


class SearchSpaceError(ConfigError):
    """A search space that is empty, inverted or outside a parameter's domain."""


def _check_range(name: str, value: list[float]) -> None:
    log, lo_min, hi_max, hi_open = _RANGES[name]
    where = f"search.{name}"
    if len(value) == 0:
        raise SearchSpaceError(f"{where} is empty: give [low, high] (or [v, v] to fix it)")
    if len(value) != 2:
        raise SearchSpaceError(f"{where} must be [low, high], got {value!r}")
    lo, hi = (float(v) for v in value)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise SearchSpaceError(f"{where} must be finite, got {value!r}")
    if lo > hi:
        raise SearchSpaceError(f"{where} is inverted: low {lo} > high {hi}")
    if lo <= lo_min and (log or name == "alpha"):
        raise SearchSpaceError(f"{where}: low must be > {lo_min}, got {lo}")
    if lo < lo_min:
        raise SearchSpaceError(f"{where}: low must be >= {lo_min}, got {lo}")
    if hi > hi_max or (hi_open and hi >= hi_max):
        bound = "<" if hi_open else "<="
        raise SearchSpaceError(f"{where}: high must be {bound} {hi_max}, got {hi}")


def check_search_space(search: TuneSearch) -> None:
    """Raise SearchSpaceError for an empty, inverted or out-of-domain space."""
    for name in _RANGES:
        _check_range(name, getattr(search, name))
    if all(getattr(search, n)[0] == getattr(search, n)[1] for n in _RANGES):
        raise SearchSpaceError(
            "search space is empty: every parameter is fixed (low == high); widen a range"
        )


def check_budget(budget: TuneBudget, score: TuneScore) -> None:
    if budget.num_samples < 1:
        raise ConfigError(f"budget.num_samples must be >= 1, got {budget.num_samples}")
    if budget.max_epochs < 1:
        raise ConfigError(f"budget.max_epochs must be >= 1, got {budget.max_epochs}")
    if not 1 <= budget.grace_period <= budget.max_epochs:
        raise ConfigError(
            f"budget.grace_period must be in [1, max_epochs={budget.max_epochs}], "
            f"got {budget.grace_period}"
        )
    if budget.reduction_factor <= 1:
        raise ConfigError(f"budget.reduction_factor must be > 1, got {budget.reduction_factor}")
    if budget.cpus_per_trial <= 0:
        raise ConfigError(f"budget.cpus_per_trial must be > 0, got {budget.cpus_per_trial}")
    if score.silhouette_sample < 10:
        raise ConfigError(f"score.silhouette_sample must be >= 10, got {score.silhouette_sample}")
    if not 0.0 < score.holdout < 0.9:
        raise ConfigError(f"score.holdout must be in (0, 0.9), got {score.holdout}")
    for name in ("finalists", "final_seeds", "confirm_seeds"):
        if getattr(score, name) < 1:
            raise ConfigError(f"score.{name} must be >= 1, got {getattr(score, name)}")


def check_job_config(config: TuneJobConfig) -> None:
    """Everything that can be checked before data is read or Ray is started."""
    d = config.data
    if (d.dataset is None) == (d.url is None):
        raise ConfigError("give exactly one of data.dataset (a bundled data set) or data.url")
    if d.sample < 2:
        raise ConfigError(f"data.sample must be >= 2, got {d.sample}")
    if config.model.n_clusters < 0:
        raise ConfigError(f"model.n_clusters must be >= 0, got {config.model.n_clusters}")
    if config.model.n_clusters == 0 and d.dataset is None:
        raise ConfigError("model.n_clusters must be given (> 0) when data.url is used")
    if config.model.batch_size < 1 or config.model.steps < 1:
        raise ConfigError("model.batch_size and model.steps must be >= 1")
    check_search_space(config.search)
    check_budget(config.budget, config.score)


def steps_for(alpha: float, search: TuneSearch, fixed_steps: int) -> int:
    """T for a sampled alpha: round(1/alpha) (the authors' pairing) or the fixed T."""
    return max(1, round(1.0 / alpha)) if search.steps_from_alpha else fixed_steps


def default_in_space(search: TuneSearch) -> bool:
    """Whether the default configuration lies inside the searched ranges."""
    return all(search_lo(search, n) <= v <= search_hi(search, n) for n, v in DEFAULT_POINT.items())


def search_lo(search: TuneSearch, name: str) -> float:
    return float(getattr(search, name)[0])


def search_hi(search: TuneSearch, name: str) -> float:
    return float(getattr(search, name)[1])


def tune_domains(search: TuneSearch) -> dict:
    """Ray Tune sampling domains (a fixed value where low == high)."""
    from ray import tune

    space = {}
    for name, (log, *_rest) in _RANGES.items():
        lo, hi = search_lo(search, name), search_hi(search, name)
        if lo == hi:
            space[name] = lo
        else:
            space[name] = tune.loguniform(lo, hi) if log else tune.uniform(lo, hi)
    return space
