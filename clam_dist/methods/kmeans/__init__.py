"""k-means, the baseline every comparison runs: Lloyd or mini-batch, k-means++ or
k-means|| seeding (``estimator.py`` in memory; ``update.py`` on the trainer: a closed-form
update, no objective; ``config.py`` its ``[kmeans]`` section)."""

from __future__ import annotations

from clam_dist.methods.kmeans.config import KMeansSection
from clam_dist.methods.spec import MethodDefaults, MethodSpec, Ref

# k-means has no learning rate: lr is the dataclass's, unused by its closed-form update.
DEFAULTS = MethodDefaults(n_clusters=8)

SPEC = MethodSpec(
    name="kmeans",
    summary="k-means (Lloyd / mini-batch), k-means++ or k-means|| seeding",
    hooks=Ref("clam_dist.methods.kmeans.hooks:Hooks"),
    estimator=Ref("clam_dist.methods.kmeans.estimator:KMeans"),
    defaults=DEFAULTS,
    section=KMeansSection,
    assignment_rule="nearest",
)
