"""ClAM: prototypes trained by masked pattern completion through T AM steps (the paper's
loss; math in docs/design.md). Registered once, here."""

from __future__ import annotations

from clam_dist.methods.spec import MethodSpec, TuneHooks


def _objective(cfg, init, device, sample=None):
    from clam_dist.train.objectives import ClAMObjective

    return ClAMObjective(cfg, init, device)


def _fit_on_sample(config, z):
    from clam_dist.estimator import ClAM

    m, o = config.model, config.optim
    return ClAM(
        n_clusters=m.n_clusters,
        beta=m.beta,
        alpha=m.alpha,
        steps=m.steps,
        metric=m.metric,
        mask_ratio=m.mask_ratio,
        lr=o.lr,
        epochs=o.epochs,
        batch_size=o.batch_size,
        n_init=config.train.n_init,
        random_state=config.seed,
    ).fit(z)


def _trial_params(config, k, point, seed):
    from clam_dist.tune.methods import am_params, common_params
    from clam_dist.tune.trial import TrialParams

    return TrialParams(**common_params(config, k, point, seed), **am_params(config, point))


def _make_trial(data, params):
    from clam_dist.tune.trial import ClAMTrial

    return ClAMTrial(data, params)


def _model_sections(config, k, point, final):
    from clam_dist.tune.methods import am_sections

    model = {"method": "clam", "n_clusters": k, "init": "kmeans", "beta": float(final["beta"])}
    model.update(am_sections(config, point, final))
    return {"model": model}


SPEC = MethodSpec(
    name="clam",
    summary="ClAM: AM dynamics + masked pattern-completion loss",
    make_objective=_objective,
    fit_on_sample=_fit_on_sample,
    assignment_rule=lambda artifact: "am",
    tune=TuneHooks(
        trial_params=_trial_params,
        make_trial=_make_trial,
        knobs=("beta_scale", "lr", "mask_ratio", "alpha"),
        # TrainConfig's defaults: lr 0.01, mask 0.2, alpha 0.1 with T 10, beta from data
        default_point={"beta_scale": 1.0, "lr": 0.01, "mask_ratio": 0.2, "alpha": 0.1},
        model_sections=_model_sections,
    ),
)
