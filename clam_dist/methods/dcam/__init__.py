"""DCAM: an autoencoder whose latent space is clustered by the same AM dynamics, one
energy-based loss for both. The whole method is this folder: ``model.py`` (autoencoder,
loss, in-memory epochs), ``objective.py`` (the trainer's phases: pretraining, the joint
start, the reconstruction bound), ``estimator.py``, ``trial.py``, ``config.py`` (its
``[dcam]`` section) and ``hooks.py``; this module registers it."""

from __future__ import annotations

from clam_dist.methods.dcam.config import DCAMSection
from clam_dist.methods.spec import (
    InspectRow,
    MethodDefaults,
    MethodSpec,
    Ref,
    SearchRange,
    TuneSpec,
)

# Adam trains an autoencoder too: the in-memory fit's 3e-3 is also the trainer's and
# Tune's baseline (above ~0.03 pretraining is erratic on standardised tabular data; 1e-3
# left digits' autoencoder under-trained after the pretraining epochs, jobs/bench_dcam.py).
# "auto": pixels (in [0, 1], or integer levels up to 255) are scaled as images, not
# standardised per pixel (issue 29); other data standardised as before.
DEFAULTS = MethodDefaults(lr=3e-3, n_clusters=8, standardize="auto")


def _inspect_rows(meta: dict) -> tuple[InspectRow, ...]:
    enc = meta.get("encoder") if isinstance(meta.get("encoder"), dict) else None
    shown = None if enc is None else f"{enc.get('kind')} latent_dim={enc.get('latent_dim')}"
    return (InspectRow("encoder", "encoder", shown, enc),)


SPEC = MethodSpec(
    name="dcam",
    summary="DCAM: autoencoder + latent AM, one energy-based loss",
    hooks=Ref("clam_dist.methods.dcam.hooks:Hooks"),
    estimator=Ref("clam_dist.methods.dcam.estimator:DCAM"),
    defaults=DEFAULTS,
    section=DCAMSection,
    phases=("pretrain", "joint"),
    needs_sample_on_workers=True,
    assignment_rule="am",
    inspect_rows=_inspect_rows,
    tune=TuneSpec(
        knobs=("beta_scale", "lr", "mask_ratio", "alpha", "recon_weight"),
        default_point={
            "beta_scale": 1.0,
            "lr": DEFAULTS.lr,
            "mask_ratio": 0.2,
            "alpha": 0.1,
            "recon_weight": DCAMSection().recon_weight,
        },
        # Its Adam also trains an autoencoder: the range sits a decade below the shared
        # one while containing the default.
        range_overrides={"lr": [0.0003, 0.03]},
        # the weight of plain reconstruction in the joint loss
        own_knobs={"recon_weight": SearchRange((0.25, 4.0), log=True)},
        score_note=" (latent; mean over the seeds)",
    ),
)
