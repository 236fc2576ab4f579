"""Attention-based clustering: k heads whose parameters become the centroids, trained on
reconstruction risk; rows go to the best-scoring head (nearest prototype for distance
scores, the largest dot product for dot scores)."""

from __future__ import annotations

from clam_dist.methods.spec import MethodSpec, TuneHooks


def _objective(cfg, init, device, sample=None):
    from clam_dist.train.objectives import AttentionObjective

    return AttentionObjective(cfg, init, device)


def _fit_on_sample(config, z):
    from clam_dist.attention_estimator import AttentionClustering

    m, o = config.model, config.optim
    return AttentionClustering(
        n_clusters=m.n_clusters,
        similarity=m.similarity,
        beta=m.beta,
        lr=o.lr,
        epochs=o.epochs,
        batch_size=o.batch_size,
        random_state=config.seed,
    ).fit(z)


def _trial_params(config, k, point, seed):
    from clam_dist.tune.methods import common_params
    from clam_dist.tune.trial_attention import AttentionParams

    return AttentionParams(
        **common_params(config, k, point, seed), similarity=str(point["similarity"])
    )


def _make_trial(data, params):
    from clam_dist.tune.trial_attention import AttentionTrial

    return AttentionTrial(data, params)


def _model_sections(config, k, point, final):
    # Absolute beta (input space, standardised: the training job's data-derived beta on
    # its own k-means init is close to the trials'); alpha/steps/mask do not apply.
    model = {
        "method": "attention",
        "n_clusters": k,
        "init": "kmeans",
        "beta": float(final["beta"]),
        "similarity": point["similarity"],
        "metric": "euclidean",
    }
    return {"model": model}


def _check_job(config):
    from clam_dist.config import ConfigError

    if config.model.metric != "euclidean":
        raise ConfigError(
            f"model.metric={config.model.metric!r} does not apply to model.method=attention: "
            "its score function is search.similarity (distance or dot)"
        )


SPEC = MethodSpec(
    name="attention",
    summary="attention-based clustering: heads as centroids, reconstruction risk",
    make_objective=_objective,
    fit_on_sample=_fit_on_sample,
    assignment_rule=lambda artifact: "dot" if artifact.meta.get("score") == "dot" else "nearest",
    tune=TuneHooks(
        trial_params=_trial_params,
        make_trial=_make_trial,
        knobs=("beta_scale", "lr", "similarity"),
        default_point={"beta_scale": 1.0, "lr": 0.01, "similarity": "distance"},
        model_sections=_model_sections,
        check_job=_check_job,
    ),
)
