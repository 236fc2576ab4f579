"""k-means, the baseline: closed-form centre updates on the distributed trainer (the loop
all-reduces per-cluster sums and counts; no objective), nearest-prototype assignment."""

from __future__ import annotations

from clam_dist.methods.spec import MethodSpec


def _fit_on_sample(config, z):
    from clam_dist.estimator import KMeans

    m = config.model
    return KMeans(
        n_clusters=m.n_clusters,
        n_init=max(1, config.train.n_init),
        metric=m.metric,
        random_state=config.seed,
    ).fit(z)


SPEC = MethodSpec(
    name="kmeans",
    summary="k-means (Lloyd / mini-batch), k-means++ or k-means|| seeding",
    make_objective=lambda cfg, init, device, sample=None: None,
    fit_on_sample=_fit_on_sample,
    estimator_history=lambda est: {},
    assignment_rule=lambda artifact: "nearest",
)
