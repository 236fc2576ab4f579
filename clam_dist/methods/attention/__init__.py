"""Attention-based clustering: k heads whose parameters become the centroids, trained on
reconstruction risk (``model.py``, ``objective.py`` on the trainer, ``estimator.py`` in
memory, ``trial.py`` for Ray Tune, ``config.py`` its ``[attention]`` section); rows go
to the best-scoring head (nearest prototype for distance scores, the largest dot product
for dot scores)."""

from __future__ import annotations

from clam_dist.methods.attention.config import AttentionSection
from clam_dist.methods.spec import (
    InspectRow,
    MethodDefaults,
    MethodSpec,
    Ref,
    SearchChoice,
    TuneSpec,
)

# Reconstruction risk of one attention step moves the heads slowly at 0.01: 0.05 is the
# in-memory fit's measured rate (tests/test_attention.py), now also the trainer's.
DEFAULTS = MethodDefaults(lr=0.05, n_clusters=8)

SPEC = MethodSpec(
    name="attention",
    summary="attention-based clustering: heads as centroids, reconstruction risk",
    hooks=Ref("clam_dist.methods.attention.hooks:Hooks"),
    estimator=Ref("clam_dist.methods.attention.estimator:AttentionClustering"),
    defaults=DEFAULTS,
    section=AttentionSection,
    assignment_rule="dot",  # per artifact: "dot" only when its meta says score = "dot"
    inspect_rows=lambda meta: (
        InspectRow("attention score", "attention_score", meta.get("score")),
    ),
    tune=TuneSpec(
        knobs=("beta_scale", "lr", "similarity"),
        default_point={
            "beta_scale": 1.0,
            "lr": DEFAULTS.lr,
            "similarity": AttentionSection().similarity,
        },
        # the score function: -beta/2 ||x - mu||^2 ("distance") or beta x.mu ("dot")
        own_knobs={"similarity": SearchChoice(("distance", "dot"))},
    ),
)
