"""The search space: validation (before any trial starts) and the Ray Tune domains.

Kept free of Ray at import time so a bad space fails in milliseconds with a message that
names the parameter, not deep inside a Tune trial. Each method (model.method) has its own
knobs, default ranges and default point; see TuneSearch.
"""

from __future__ import annotations

import math

from clam_dist.config import ConfigError
from clam_dist.sections import DCAMSection
from clam_dist.tune.config import TuneBudget, TuneJobConfig, TuneScore, TuneSearch

SIMILARITIES: tuple[str, ...] = ("distance", "dot")
# Each method's knobs (TuneSearch fields it searches) and default point are registered
# with the method (clam_dist.methods, MethodSpec.tune); any other knob must stay unset.
CHOICE_KNOBS: frozenset[str] = frozenset({"similarity"})

# numeric name -> (sampled on a log scale?, smallest allowed low, largest allowed high,
# high open?)
_RANGES: dict[str, tuple[bool, float, float, bool]] = {
    "beta_scale": (True, 0.0, math.inf, False),
    "lr": (True, 0.0, math.inf, False),
    "mask_ratio": (False, 0.0, 1.0, True),
    "alpha": (False, 0.0, 1.0, False),
    "recon_weight": (True, 0.0, math.inf, False),
}

_COMMON_RANGES: dict[str, list] = {
    "beta_scale": [0.25, 4.0],
    "lr": [0.001, 0.1],
    "mask_ratio": [0.1, 0.5],
    "alpha": [0.05, 0.5],
    "recon_weight": [0.25, 4.0],
    "similarity": list(SIMILARITIES),
}


class SearchSpaceError(ConfigError):
    """A search space that is empty, inverted or outside a parameter's domain."""


def _hooks(method: str):
    from clam_dist import methods

    hooks = methods.get(method).tune
    if hooks is None:
        raise SearchSpaceError(f"model.method={method} has no search space (not tunable)")
    return hooks


def knobs(method: str) -> tuple[str, ...]:
    """The TuneSearch knobs ``method`` searches (its registration's)."""
    return _hooks(method).knobs


def default_ranges(method: str) -> dict[str, list]:
    """Each knob's default range: the shared one unless the method overrides it."""
    hooks = _hooks(method)
    return {n: list(hooks.range_overrides.get(n, _COMMON_RANGES[n])) for n in hooks.knobs}


def default_point(method: str) -> dict:
    """What the training job does when none of the knobs is set: tuning must beat it."""
    return dict(_hooks(method).default_point)


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


def _check_choice(name: str, value: list[str]) -> None:
    where = f"search.{name}"
    if len(value) == 0:
        raise SearchSpaceError(f"{where} is empty: give one or more of {', '.join(SIMILARITIES)}")
    for v in value:
        if v not in SIMILARITIES:
            raise SearchSpaceError(f"{where}: {v!r} is not one of {', '.join(SIMILARITIES)}")


def resolved_space(search: TuneSearch, method: str = "clam") -> dict[str, list]:
    """The method's knobs with their ranges (choices): as given, or the default range."""
    return {
        name: list(getattr(search, name)) if getattr(search, name) is not None else list(rng)
        for name, rng in default_ranges(method).items()
    }


def _is_fixed(name: str, value: list) -> bool:
    return len(set(value)) == 1 if name in CHOICE_KNOBS else value[0] == value[1]


def check_search_space(search: TuneSearch, method: str = "clam") -> None:
    """Raise SearchSpaceError for an empty, inverted or out-of-domain space, or a knob the
    method does not have."""
    own = knobs(method)
    for name in (*_RANGES, *CHOICE_KNOBS):
        if name not in own and getattr(search, name) is not None:
            raise SearchSpaceError(
                f"search.{name} does not apply to model.method={method} "
                f"(its knobs: {', '.join(own)})"
            )
    space = resolved_space(search, method)
    for name, value in space.items():
        (_check_choice if name in CHOICE_KNOBS else _check_range)(name, value)
    if all(_is_fixed(name, value) for name, value in space.items()):
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


def check_dcam(dc: DCAMSection) -> None:
    """The [dcam] section's own checks (the data's width is checked once it is loaded)."""
    if dc.recon_weight != DCAMSection().recon_weight:
        raise ConfigError(
            f"dcam.recon_weight={dc.recon_weight}: Tune searches it; set search.recon_weight "
            f"= [{dc.recon_weight}, {dc.recon_weight}] to fix it instead"
        )
    if dc.latent_dim < 1:
        raise ConfigError(f"dcam.latent_dim must be >= 1, got {dc.latent_dim}")
    if dc.pretrain_epochs < 0:
        raise ConfigError(f"dcam.pretrain_epochs must be >= 0, got {dc.pretrain_epochs}")
    if not dc.recon_tolerance >= 0:
        raise ConfigError(f"dcam.recon_tolerance must be >= 0, got {dc.recon_tolerance}")
    if dc.hidden is not None and (not dc.hidden or min(dc.hidden) < 1):
        raise ConfigError(f"dcam.hidden must be sizes >= 1, got {dc.hidden}")
    if dc.encoder == "conv" and dc.hidden is not None and len(dc.hidden) != 2:
        raise ConfigError(
            f"dcam.hidden must be [c1, c2] channels for the conv encoder, got {dc.hidden}"
        )
    if dc.image_shape is not None and (len(dc.image_shape) != 3 or min(dc.image_shape) < 1):
        raise ConfigError(f"dcam.image_shape must be [C, H, W] > 0, got {dc.image_shape}")


def check_bundled_width(config: TuneJobConfig) -> None:
    """A bundled data set's width is known without reading it: check that the encoder fits
    now (a URL's width is checked once its sample is read, still before any trial)."""
    from clam_dist.datasets.clam_paper import CLAM_PAPER_FILES

    if config.data.dataset in CLAM_PAPER_FILES:
        from clam_dist.tune.methods import check_for_data  # imports torch: only when needed

        check_for_data(config, CLAM_PAPER_FILES[config.data.dataset][2])


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
    from clam_dist import methods

    methods.check_name(m.method, "model.method", tunable_only=True)
    methods.get(m.method).tune.check_job(config)  # the method's own checks
    check_search_space(config.search, m.method)
    check_budget(config.budget, config.score)


def steps_for(alpha: float, search: TuneSearch, fixed_steps: int) -> int:
    """T for a sampled alpha: round(1/alpha) (the authors' pairing) or the fixed T."""
    return max(1, round(1.0 / alpha)) if search.steps_from_alpha else fixed_steps


def default_in_space(search: TuneSearch, method: str = "clam") -> bool:
    """Whether the method's default configuration lies inside the searched ranges."""
    space = resolved_space(search, method)
    return all(
        v in space[n] if n in CHOICE_KNOBS else float(space[n][0]) <= v <= float(space[n][1])
        for n, v in default_point(method).items()
    )


def tune_domains(search: TuneSearch, method: str = "clam") -> dict:
    """Ray Tune sampling domains (a fixed value where low == high or one choice)."""
    from ray import tune

    space = {}
    for name, value in resolved_space(search, method).items():
        if name in CHOICE_KNOBS:
            choices = list(dict.fromkeys(value))  # order kept, duplicates dropped
            space[name] = choices[0] if len(choices) == 1 else tune.choice(choices)
            continue
        lo, hi = float(value[0]), float(value[1])
        if lo == hi:
            space[name] = lo
        else:
            space[name] = tune.loguniform(lo, hi) if _RANGES[name][0] else tune.uniform(lo, hi)
    return space
