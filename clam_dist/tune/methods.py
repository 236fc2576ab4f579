"""What differs between the tuned methods, in one place: a searched point -> trial
parameters -> trial, and the chosen point -> the training job's config sections.

Every trial class has the same surface (``step()`` -> metrics of one epoch,
``predict(rows)`` -> labels, ``beta_default``, ``silhouette_metric``, ``steps``), so the
search, the selection and the confirmation in ``search.py`` do not know the method.
"""

from __future__ import annotations

from clam_dist.config import ConfigError
from clam_dist.tune.config import TuneJobConfig
from clam_dist.tune.space import steps_for
from clam_dist.tune.trial import ClAMTrial, TrialData, TrialParams
from clam_dist.tune.trial_attention import AttentionParams, AttentionTrial
from clam_dist.tune.trial_dcam import DCAMParams, DCAMTrial, encoder_spec

Trial = ClAMTrial | AttentionTrial | DCAMTrial


def steps_of(config: TuneJobConfig, point: dict) -> int | None:
    """T of a point (methods with AM dynamics), None for attention clustering."""
    if "alpha" not in point:
        return None
    return steps_for(float(point["alpha"]), config.search, config.model.steps)


def trial_params(
    config: TuneJobConfig, k: int, point: dict, seed: int | None = None
) -> TrialParams | AttentionParams | DCAMParams:
    m = config.model
    seed = config.run.seed if seed is None else seed
    common = {
        "n_clusters": k,
        "beta_scale": float(point["beta_scale"]),
        "lr": float(point["lr"]),
        "batch_size": m.batch_size,
        "seed": seed,
    }
    if m.method == "attention":
        return AttentionParams(**common, similarity=str(point["similarity"]))
    am = {
        "mask_ratio": float(point["mask_ratio"]),
        "alpha": float(point["alpha"]),
        "steps": steps_of(config, point),
        "metric": m.metric,
        "fill": m.fill,
    }
    if m.method == "clam":
        return TrialParams(**common, **am)
    dc = config.dcam
    return DCAMParams(
        **common,
        **am,
        recon_weight=float(point["recon_weight"]),
        encoder=dc.encoder,
        latent_dim=dc.latent_dim,
        hidden=None if dc.hidden is None else tuple(dc.hidden),
        image_shape=None if dc.image_shape is None else tuple(dc.image_shape),
        pretrain_epochs=dc.pretrain_epochs,
        recon_tolerance=dc.recon_tolerance,
        recon_bound=dc.recon_bound,
    )


def make_trial(
    config: TuneJobConfig, data: TrialData, k: int, point: dict, seed: int | None = None
) -> Trial:
    params = trial_params(config, k, point, seed)
    if isinstance(params, AttentionParams):
        return AttentionTrial(data, params)
    if isinstance(params, DCAMParams):
        return DCAMTrial(data, params)
    return ClAMTrial(data, params)


def check_for_data(config: TuneJobConfig, n_features: int) -> None:
    """Checks that need the data's width, before Ray starts (DCAM: the encoder must fit,
    e.g. a conv encoder's image shape)."""
    if config.model.method != "dcam":
        return
    dc = config.dcam
    params = DCAMParams(
        n_clusters=1,
        encoder=dc.encoder,
        latent_dim=dc.latent_dim,
        hidden=None if dc.hidden is None else tuple(dc.hidden),
        image_shape=None if dc.image_shape is None else tuple(dc.image_shape),
    )
    try:
        encoder_spec(params, n_features)
    except ValueError as exc:
        raise ConfigError(f"dcam: {exc}") from exc


def model_sections(config: TuneJobConfig, k: int, point: dict, final: dict) -> dict:
    """The [model] (and, for DCAM, [dcam]) sections of the training config for a chosen
    point; ``final`` holds its confirmation-seed means (beta, steps)."""
    m, method = config.model, config.model.method
    model: dict = {"method": method, "n_clusters": k}
    if method == "attention":
        # Absolute beta (input space, standardised: the training job's data-derived beta
        # on its own k-means init is close to the trials'); alpha/steps/mask do not apply.
        model.update(
            init="kmeans",
            beta=float(final["beta"]),
            similarity=point["similarity"],
            metric="euclidean",
        )
        return {"model": model}
    am = {
        "alpha": float(point["alpha"]),
        "steps": int(final["steps"]),
        "metric": m.metric,
        "mask_ratio": float(point["mask_ratio"]),
        "fill": m.fill,
    }
    if method == "clam":
        model.update(init="kmeans", beta=float(final["beta"]), **am)
        return {"model": model}
    # DCAM's beta lives in a latent space the training job builds anew (other rows,
    # batches, workers), so an absolute beta carries over only as far as that latent
    # scale does. At scale 1 the job derives beta from its own latents, which is exactly
    # what was scored, so no beta is written; otherwise scale x the trials' mean latent
    # beta is the only form TrainConfig takes.
    if float(point["beta_scale"]) != 1.0:
        model["beta"] = float(final["beta"])
    model.update(am)
    dc = config.dcam
    dcam = {
        "encoder": dc.encoder,
        "latent_dim": dc.latent_dim,
        "hidden": dc.hidden,
        "image_shape": dc.image_shape,
        "pretrain_epochs": dc.pretrain_epochs,
        "recon_weight": float(point["recon_weight"]),
        "recon_tolerance": dc.recon_tolerance,
        "recon_bound": dc.recon_bound,
    }
    return {"model": model, "dcam": dcam}
