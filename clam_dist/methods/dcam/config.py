"""DCAM's own config section: ``[dcam]`` in every job config (the job configs add each
registered method's section under the method's name; see clam_dist/sections.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from clam_dist.config import Each, knob
from clam_dist.sections import COUNT, COUNT_OR_OFF, NON_NEGATIVE

# Hidden widths (mlp) or channels (conv) when ``hidden`` is None. Measured on digits
# (jobs/bench_dcam.py): (128, 64) MLPs and (16, 32)-channel convs under-fit 8x8 images
# (AE + k-means below k-means on the pixels); these reach above it with the joint phase.
DEFAULT_HIDDEN: dict[str, tuple[int, int]] = {"mlp": (512, 256), "conv": (32, 64)}


# Joint epochs of the in-memory fit (estimator). The training job's count is optim.epochs,
# a section every method shares; set optim.epochs=40 there to train what DCAM() trains.
JOINT_EPOCHS = 40


def default_hidden(encoder: str) -> tuple[int, ...]:
    """The architecture every entry point builds when ``hidden`` is None."""
    return DEFAULT_HIDDEN.get(encoder, DEFAULT_HIDDEN["mlp"])


@dataclass
class DCAMSection:
    """DCAM only: the autoencoder and its two phases (model.* holds k, beta, alpha, T,
    mask; optim.epochs counts the JOINT epochs, after ``pretrain_epochs``). These are the
    ONE set of defaults of DCAM's own knobs: the estimator, the in-memory fit's
    ``DCAMConfig`` and the Tune trial's ``DCAMParams`` read them from here."""

    encoder: Literal["mlp", "conv"] = "mlp"
    latent_dim: int = knob(10, COUNT)
    # None: DEFAULT_HIDDEN, [512, 256] (mlp) or [32, 64] channels (conv)
    hidden: list[int] | None = knob(None, Each(COUNT))
    # conv: [C, H, W]; None: inferred (square, 1 or 3 channels, side a multiple of 4:
    # 64 -> [1, 8, 8], 784 -> [1, 28, 28], 3072 -> [3, 32, 32]), else an error asks for it
    image_shape: list[int] | None = knob(None, Each(COUNT))
    # autoencoder-only epochs before the joint ones (5 left digits' AE far from converged)
    pretrain_epochs: int = knob(40, COUNT_OR_OFF)
    # weight of the reconstruction term in the joint loss
    recon_weight: float = knob(1.0, NON_NEGATIVE)
    # The joint phase may trade reconstruction for clustering only within this tolerance
    # of the pretrained reconstruction loss: "select" keeps the best epoch within it,
    # "stop" also stops at the first epoch beyond it, "none" ignores it.
    recon_tolerance: float = knob(0.10, NON_NEGATIVE)
    recon_bound: Literal["select", "stop", "none"] = "select"
