"""What differs between the tuned methods is registered with each method
(``clam_dist/methods/<name>/``: its ``TuneSpec`` and hooks); this module dispatches to it and holds the
parameter pieces the methods share.

Every trial class has the same surface (``step()`` -> metrics of one epoch,
``predict(rows)`` -> labels, ``beta_default``, ``silhouette_metric``, ``steps``), so the
search, the selection and the confirmation in ``search.py`` do not know the method.
"""

from __future__ import annotations

from clam_dist import methods
from clam_dist.methods.spec import MethodHooks
from clam_dist.tune.config import TuneJobConfig
from clam_dist.tune.space import steps_for
from clam_dist.tune.trial import TrialData


def tune_hooks(config: TuneJobConfig) -> MethodHooks:
    spec = methods.get(config.model.method)
    if spec.tune is None:
        raise ValueError(f"model.method {config.model.method!r} cannot be tuned")
    return spec.load_hooks()


def steps_of(config: TuneJobConfig, point: dict) -> int | None:
    """T of a point (methods with AM dynamics), None for attention clustering."""
    if "alpha" not in point:
        return None
    return steps_for(float(point["alpha"]), config.search, config.model.steps)


def common_params(config: TuneJobConfig, k: int, point: dict, seed: int | None) -> dict:
    """Trial parameters every method takes."""
    return {
        "n_clusters": k,
        "beta_scale": float(point["beta_scale"]),
        "lr": float(point["lr"]),
        "batch_size": config.model.batch_size,
        "seed": config.run.seed if seed is None else seed,
    }


def am_params(config: TuneJobConfig, point: dict) -> dict:
    """Trial parameters of methods with AM dynamics and a masked loss (ClAM, DCAM)."""
    return {
        "mask_ratio": float(point["mask_ratio"]),
        "alpha": float(point["alpha"]),
        "steps": steps_of(config, point),
        "metric": config.model.metric,
        "fill": config.model.fill,
    }


def am_sections(config: TuneJobConfig, point: dict, final: dict) -> dict:
    """The [model] fields of the AM dynamics for a chosen point (``final``: its
    confirmation-seed means)."""
    return {
        "alpha": float(point["alpha"]),
        "steps": int(final["steps"]),
        "metric": config.model.metric,
        "mask_ratio": float(point["mask_ratio"]),
        "fill": config.model.fill,
    }


def trial_params(config: TuneJobConfig, k: int, point: dict, seed: int | None = None):
    return tune_hooks(config).trial_params(config, k, point, seed)


def make_trial(
    config: TuneJobConfig, data: TrialData, k: int, point: dict, seed: int | None = None
):
    hooks = tune_hooks(config)
    return hooks.make_trial(data, hooks.trial_params(config, k, point, seed))


def check_for_data(config: TuneJobConfig, n_features: int) -> None:
    """Checks that need the data's width, before Ray starts (DCAM: the encoder must fit,
    e.g. a conv encoder's image shape)."""
    tune_hooks(config).check_tune_data(config, n_features)


def model_sections(config: TuneJobConfig, k: int, point: dict, final: dict) -> dict:
    """The [model] (and, for DCAM, [dcam]) sections of the training config for a chosen
    point; ``final`` holds its confirmation-seed means (beta, steps)."""
    return tune_hooks(config).model_sections(config, k, point, final)
