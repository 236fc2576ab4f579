"""ClAM: prototypes trained by masked pattern completion through T AM steps (the paper's
loss; math in docs/design.md). The whole method is this folder: ``objective.py`` (the
trainer's loss), ``fit.py`` + ``estimator.py`` (in memory), ``trial.py`` (Ray Tune),
``hooks.py`` (what generic code calls); this module registers it."""

from __future__ import annotations

from clam_dist.methods.spec import MethodDefaults, MethodSpec, Ref, TuneSpec

DEFAULTS = MethodDefaults(lr=0.01, n_clusters=8)

SPEC = MethodSpec(
    name="clam",
    summary="ClAM: AM dynamics + masked pattern-completion loss",
    hooks=Ref("clam_dist.methods.clam.hooks:Hooks"),
    estimator=Ref("clam_dist.methods.clam.estimator:ClAM"),
    defaults=DEFAULTS,
    assignment_rule="am",
    tune=TuneSpec(
        knobs=("beta_scale", "lr", "mask_ratio", "alpha"),
        # The training job's defaults: mask 0.2, alpha 0.1 with T 10, beta from data
        default_point={"beta_scale": 1.0, "lr": DEFAULTS.lr, "mask_ratio": 0.2, "alpha": 0.1},
    ),
)
