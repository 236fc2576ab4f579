"""The search space: validation (before any trial starts) and the Ray Tune domains.

Kept free of Ray at import time so a bad space fails in milliseconds with a message that
names the parameter, not deep inside a Tune trial. Each method (model.method) has its own
knobs, default ranges and default point; see TuneSearch.
"""

from __future__ import annotations

import math

from clam_dist import methods
from clam_dist.config import ConfigError
from clam_dist.methods.spec import SearchChoice, SearchRange, TuneSpec
from clam_dist.tune.config import TuneBudget, TuneJobConfig, TuneScore, TuneSearch

# The knobs every tunable method may search (its TuneSpec.knobs names which), with their
# default ranges and domains; a method's own knobs (attention's score function, DCAM's
# reconstruction weight) are declared in its package (TuneSpec.own_knobs).
SHARED_KNOBS: dict[str, SearchRange] = {
    "beta_scale": SearchRange((0.25, 4.0), log=True),
    "lr": SearchRange((0.001, 0.1), log=True),
    "mask_ratio": SearchRange((0.1, 0.5), high_max=1.0, high_open=True),
    "alpha": SearchRange((0.05, 0.5), low_open=True, high_max=1.0),
}


def all_knobs() -> dict[str, SearchRange | SearchChoice]:
    """Every knob any tunable method searches (the fields of ``[search]``)."""
    found: dict[str, SearchRange | SearchChoice] = dict(SHARED_KNOBS)
    for name in methods.names():
        tune = methods.get(name).tune
        if tune is not None:
            found.update(tune.own_knobs)
    return found


class SearchSpaceError(ConfigError):
    """A search space that is empty, inverted or outside a parameter's domain."""


def _hooks(method: str) -> TuneSpec:
    hooks = methods.get(method).tune
    if hooks is None:
        raise SearchSpaceError(f"model.method={method} has no search space (not tunable)")
    return hooks


def knobs(method: str) -> tuple[str, ...]:
    """The TuneSearch knobs ``method`` searches (its registration's)."""
    return _hooks(method).knobs


def _knob(method: str, name: str) -> SearchRange | SearchChoice:
    return {**SHARED_KNOBS, **_hooks(method).own_knobs}[name]


def _default_range(knob: SearchRange | SearchChoice) -> list:
    return list(knob.options) if isinstance(knob, SearchChoice) else list(knob.default)


def default_ranges(method: str) -> dict[str, list]:
    """Each knob's default range: the shared one unless the method overrides it."""
    hooks = _hooks(method)
    return {
        n: list(hooks.range_overrides.get(n, _default_range(_knob(method, n)))) for n in hooks.knobs
    }


def default_point(method: str) -> dict:
    """What the training job does when none of the knobs is set: tuning must beat it."""
    return dict(_hooks(method).default_point)


def _check_range(name: str, value: list[float], knob: SearchRange) -> None:
    log, lo_min, hi_max, hi_open = knob.log, knob.low_min, knob.high_max, knob.high_open
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
    if lo <= lo_min and (log or knob.low_open):
        raise SearchSpaceError(f"{where}: low must be > {lo_min}, got {lo}")
    if lo < lo_min:
        raise SearchSpaceError(f"{where}: low must be >= {lo_min}, got {lo}")
    if hi > hi_max or (hi_open and hi >= hi_max):
        bound = "<" if hi_open else "<="
        raise SearchSpaceError(f"{where}: high must be {bound} {hi_max}, got {hi}")


def _check_choice(name: str, value: list[str], knob: SearchChoice) -> None:
    where, options = f"search.{name}", ", ".join(knob.options)
    if len(value) == 0:
        raise SearchSpaceError(f"{where} is empty: give one or more of {options}")
    for v in value:
        if v not in knob.options:
            raise SearchSpaceError(f"{where}: {v!r} is not one of {options}")


def _check(name: str, value: list, knob: SearchRange | SearchChoice) -> None:
    if isinstance(knob, SearchChoice):
        _check_choice(name, value, knob)
    else:
        _check_range(name, value, knob)


def resolved_space(search: TuneSearch, method: str = methods.DEFAULT) -> dict[str, list]:
    """The method's knobs with their ranges (choices): as given, or the default range."""
    return {
        name: list(getattr(search, name)) if getattr(search, name) is not None else list(rng)
        for name, rng in default_ranges(method).items()
    }


def _is_fixed(knob: SearchRange | SearchChoice, value: list) -> bool:
    return len(set(value)) == 1 if isinstance(knob, SearchChoice) else value[0] == value[1]


def check_search_space(search: TuneSearch, method: str = methods.DEFAULT) -> None:
    """Raise SearchSpaceError for an empty, inverted or out-of-domain space, or a knob the
    method does not have."""
    own = knobs(method)
    for name in all_knobs():
        if name not in own and getattr(search, name) is not None:
            raise SearchSpaceError(
                f"search.{name} does not apply to model.method={method} "
                f"(its knobs: {', '.join(own)})"
            )
    space = resolved_space(search, method)
    for name, value in space.items():
        _check(name, value, _knob(method, name))
    if all(_is_fixed(_knob(method, name), value) for name, value in space.items()):
        raise SearchSpaceError(
            f"search space is empty: every parameter of {method} is fixed "
            "(low == high, or one choice); widen a range"
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


def check_bundled_width(config: TuneJobConfig) -> None:
    """A bundled data set's width is known without reading it: check that the encoder fits
    now (a URL's width is checked once its sample is read, still before any trial)."""
    from clam_dist.datasets.clam_paper import CLAM_PAPER_FILES

    if config.data.dataset in CLAM_PAPER_FILES:
        width = CLAM_PAPER_FILES[config.data.dataset][2]
        methods.get(config.model.method).load_hooks().check_tune_data(config, width)


def check_job_config(config: TuneJobConfig) -> None:
    """Everything that can be checked before data is read or Ray is started."""
    d, m = config.data, config.model
    if (d.dataset is None) == (d.url is None):
        raise ConfigError("give exactly one of data.dataset (a bundled data set) or data.url")
    if d.sample < 2:
        raise ConfigError(f"data.sample must be >= 2, got {d.sample}")
    if m.n_clusters < 0:
        raise ConfigError(f"model.n_clusters must be >= 0, got {m.n_clusters}")
    if m.n_clusters == 0 and d.dataset is None:
        raise ConfigError("model.n_clusters must be given (> 0) when data.url is used")
    if m.batch_size < 1 or m.steps < 1:
        raise ConfigError("model.batch_size and model.steps must be >= 1")
    methods.check_name(m.method, "model.method", tunable_only=True)
    methods.get(m.method).load_hooks().check_tune_job(config)  # the method's own checks
    check_search_space(config.search, m.method)
    check_budget(config.budget, config.score)


def steps_for(alpha: float, search: TuneSearch, fixed_steps: int) -> int:
    """T for a sampled alpha: round(1/alpha) (the authors' pairing) or the fixed T."""
    return max(1, round(1.0 / alpha)) if search.steps_from_alpha else fixed_steps


def default_in_space(search: TuneSearch, method: str = methods.DEFAULT) -> bool:
    """Whether the method's default configuration lies inside the searched ranges."""
    space = resolved_space(search, method)
    return all(
        v in space[n]
        if isinstance(_knob(method, n), SearchChoice)
        else float(space[n][0]) <= v <= float(space[n][1])
        for n, v in default_point(method).items()
    )


def tune_domains(search: TuneSearch, method: str = methods.DEFAULT) -> dict:
    """Ray Tune sampling domains (a fixed value where low == high or one choice)."""
    from ray import tune

    space = {}
    for name, value in resolved_space(search, method).items():
        knob = _knob(method, name)
        if isinstance(knob, SearchChoice):
            choices = list(dict.fromkeys(value))  # order kept, duplicates dropped
            space[name] = choices[0] if len(choices) == 1 else tune.choice(choices)
            continue
        lo, hi = float(value[0]), float(value[1])
        if lo == hi:
            space[name] = lo
        else:
            space[name] = tune.loguniform(lo, hi) if knob.log else tune.uniform(lo, hi)
    return space
