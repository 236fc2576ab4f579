"""DCAM: an autoencoder whose latent space is clustered by the same AM dynamics, one
energy-based loss for both. On the trainer: ``dcam.pretrain_epochs`` of reconstruction,
then prototypes by k-means on the pretrained latents of the run's sample, then the joint
loss within the reconstruction bound; artifacts carry the encoder."""

from __future__ import annotations

from clam_dist.methods.spec import MethodSpec, TuneHooks


def _objective(cfg, init, device, sample=None):
    from clam_dist.train.objectives import DCAMObjective

    if sample is None:
        raise ValueError("DCAM training needs the initialisation sample (for k-means)")
    return DCAMObjective(cfg, init, device, sample)


def _initial_prototypes(cfg, z, generator):
    # The prototypes live in the latent space of an autoencoder that does not exist yet:
    # the loop sets them (k-means on the pretrained latents of the sample) when
    # pretraining ends; here placeholders.
    return {"prototypes": [[0.0] * cfg.dcam.latent_dim] * cfg.model.n_clusters, "beta": 1.0}


def _check_train_config(cfg, n_features):
    from clam_dist.train.objectives import encoder_spec

    dc = cfg.dcam
    if dc.pretrain_epochs < 0 or dc.recon_tolerance < 0 or dc.recon_weight < 0:
        raise ValueError(
            "dcam.pretrain_epochs, dcam.recon_tolerance and dcam.recon_weight must be >= 0, "
            f"got {dc.pretrain_epochs}, {dc.recon_tolerance}, {dc.recon_weight}"
        )
    encoder_spec(cfg, n_features)  # raises naming the shape when images do not fit
    if cfg.data.init_sample < cfg.model.n_clusters:
        raise ValueError(
            f"data.init_sample={cfg.data.init_sample} rows cannot seed model.n_clusters="
            f"{cfg.model.n_clusters} latent prototypes"
        )


def _fit_on_sample(config, z):
    from clam_dist.dcam_estimator import DCAM

    m, o, dc = config.model, config.optim, config.dcam
    return DCAM(
        n_clusters=m.n_clusters,
        encoder=dc.encoder,
        latent_dim=dc.latent_dim,
        hidden=None if dc.hidden is None else tuple(dc.hidden),
        image_shape=None if dc.image_shape is None else tuple(dc.image_shape),
        beta=m.beta,
        alpha=m.alpha,
        steps=m.steps,
        metric=m.metric,
        mask_ratio=m.mask_ratio,
        pretrain_epochs=dc.pretrain_epochs,
        epochs=o.epochs,
        batch_size=o.batch_size,
        lr=o.lr,
        recon_weight=dc.recon_weight,
        recon_tolerance=dc.recon_tolerance,
        recon_bound=dc.recon_bound,
        standardize=False,  # the sample is standardised by the caller, with global statistics
        random_state=config.seed,
    ).fit(z)


def _encoder(artifact):
    from clam_dist.models.dcam import encoder_from_artifact

    return encoder_from_artifact(artifact)


def _dcam_params(config):
    dc = config.dcam
    return {
        "encoder": dc.encoder,
        "latent_dim": dc.latent_dim,
        "hidden": None if dc.hidden is None else tuple(dc.hidden),
        "image_shape": None if dc.image_shape is None else tuple(dc.image_shape),
    }


def _trial_params(config, k, point, seed):
    from clam_dist.tune.methods import am_params, common_params
    from clam_dist.tune.trial_dcam import DCAMParams

    dc = config.dcam
    return DCAMParams(
        **common_params(config, k, point, seed),
        **am_params(config, point),
        recon_weight=float(point["recon_weight"]),
        **_dcam_params(config),
        pretrain_epochs=dc.pretrain_epochs,
        recon_tolerance=dc.recon_tolerance,
        recon_bound=dc.recon_bound,
    )


def _make_trial(data, params):
    from clam_dist.tune.trial_dcam import DCAMTrial

    return DCAMTrial(data, params)


def _model_sections(config, k, point, final):
    from clam_dist.tune.methods import am_sections

    model: dict = {"method": "dcam", "n_clusters": k}
    # DCAM's beta lives in a latent space the training job builds anew (other rows,
    # batches, workers), so an absolute beta carries over only as far as that latent
    # scale does. At scale 1 the job derives beta from its own latents, which is exactly
    # what was scored, so no beta is written; otherwise scale x the trials' mean latent
    # beta is the only form TrainConfig takes.
    if float(point["beta_scale"]) != 1.0:
        model["beta"] = float(final["beta"])
    model.update(am_sections(config, point, final))
    from clam_dist.sections import DCAMSection, values_of

    # The trials' [dcam] section whole, with the searched weight.
    dcam = dict(values_of(DCAMSection, config.dcam), recon_weight=float(point["recon_weight"]))
    return {"model": model, "dcam": dcam}


def _check_job(config):
    from clam_dist.tune.space import check_bundled_width, check_dcam

    check_dcam(config.dcam)
    check_bundled_width(config)


def _check_for_data(config, n_features):
    """The encoder must fit the data (e.g. a conv encoder's image shape)."""
    from clam_dist.config import ConfigError
    from clam_dist.tune.trial_dcam import DCAMParams, encoder_spec

    try:
        encoder_spec(DCAMParams(n_clusters=1, **_dcam_params(config)), n_features)
    except ValueError as exc:
        raise ConfigError(f"dcam: {exc}") from exc


SPEC = MethodSpec(
    name="dcam",
    summary="DCAM: autoencoder + latent AM, one energy-based loss",
    make_objective=_objective,
    initial_prototypes=_initial_prototypes,
    extra_epochs=lambda cfg: cfg.dcam.pretrain_epochs,
    check_train_config=_check_train_config,
    needs_sample_on_workers=True,
    config_sections=("dcam",),
    fit_on_sample=_fit_on_sample,
    estimator_history=lambda est: {"joint_history": est.history_},
    assignment_rule=lambda artifact: "am",
    encoder=_encoder,
    tune=TuneHooks(
        trial_params=_trial_params,
        make_trial=_make_trial,
        knobs=("beta_scale", "lr", "mask_ratio", "alpha", "recon_weight"),
        default_point={
            "beta_scale": 1.0,
            "lr": 0.01,
            "mask_ratio": 0.2,
            "alpha": 0.1,
            "recon_weight": 1.0,
        },
        # Its Adam also trains an autoencoder (both phases use optim.lr): above ~0.03
        # pretraining is erratic on standardised tabular data, so the range sits a decade
        # lower while still containing the training job's default 0.01.
        range_overrides={"lr": [0.0003, 0.03]},
        model_sections=_model_sections,
        check_job=_check_job,
        check_for_data=_check_for_data,
        score_note=" (latent; mean over the seeds)",
    ),
)
