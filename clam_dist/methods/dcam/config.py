"""DCAM's own config section: ``[dcam]`` in every job config (the job configs add each
registered method's section under the method's name; see clam_dist/sections.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from clam_dist.config import Each, knob
from clam_dist.sections import COUNT, COUNT_OR_OFF, NON_NEGATIVE


@dataclass
class DCAMSection:
    """DCAM only: the autoencoder and its two phases (model.* holds k, beta, alpha, T,
    mask; optim.epochs counts the JOINT epochs, after ``pretrain_epochs``)."""

    encoder: Literal["mlp", "conv"] = "mlp"
    latent_dim: int = knob(10, COUNT)
    # None: [128, 64] (mlp) or [16, 32] channels (conv)
    hidden: list[int] | None = knob(None, Each(COUNT))
    # conv: [C, H, W]; None: square 1/3-channel guess
    image_shape: list[int] | None = knob(None, Each(COUNT))
    pretrain_epochs: int = knob(5, COUNT_OR_OFF)
    # weight of the reconstruction term in the joint loss
    recon_weight: float = knob(1.0, NON_NEGATIVE)
    # The joint phase may trade reconstruction for clustering only within this tolerance
    # of the pretrained reconstruction loss: "select" keeps the best epoch within it,
    # "stop" also stops at the first epoch beyond it, "none" ignores it.
    recon_tolerance: float = knob(0.10, NON_NEGATIVE)
    recon_bound: Literal["select", "stop", "none"] = "select"
