"""What a gradient-trained method optimises on one worker; no Ray here.

ClAM, attention-based clustering and DCAM share the distributed loop (``loop.py``): the
loop streams rows, all-reduces ONE flat gradient buffer, checks that every worker holds
bit-identical parameters, checkpoints and reports. Each method supplies an objective:

- its parameters (a ``torch.nn.Module``; names are the checkpoint's tensor names),
- its local loss on this worker's rows (a mean; the loop rescales it to the worker's share
  of the global-batch mean, so the gradient average over workers is that of the global
  batch),
- the space the prototypes live in (input space, or DCAM's latent space) for monitoring,
- its model artifact (what the Ray Data assignment pipeline loads).

DCAM adds phases: ``dcam.pretrain_epochs`` of autoencoder reconstruction, then (once, on
entering the joint phase) prototypes by k-means++ + Lloyd on the latents of the run's
initialisation sample and beta from their distance scale, then the joint energy loss with
the reconstruction bound checked at every epoch end on that sample.
"""

from __future__ import annotations

import copy
import math
from typing import Protocol

import numpy as np
import torch
from torch import nn

from clam_dist import methods
from clam_dist.train.config import TrainConfig


class Collectives(Protocol):
    """The two collectives objectives need (``comm.Comm`` implements them)."""

    def all_reduce(self, t: torch.Tensor, op: str = "sum", kind: str = "step") -> torch.Tensor: ...

    def broadcast(self, t: torch.Tensor, src: int = 0) -> torch.Tensor: ...


class Objective:
    """Base: a module holding ``prototypes`` (k, d_model) in the input (standardised) space."""

    method = "base"
    module: nn.Module

    def __init__(self, cfg: TrainConfig, init: dict):
        self.cfg = cfg
        self.beta = float(init["beta"])
        # The kept epoch: the lowest epoch loss among comparable epochs, whose parameters
        # become the model (see consider_epoch).
        self.kept_epoch: int | None = None
        self.kept_loss = math.inf
        self.kept_state: dict[str, torch.Tensor] | None = None
        self.kept_prototypes: torch.Tensor | None = None

    # -- parameters ----------------------------------------------------------------------

    def prototypes(self) -> torch.Tensor:
        return self.module.prototypes.detach()

    def trainable(self) -> list[nn.Parameter]:
        """The parameters that receive gradients in the current phase, in a fixed order
        (the order of the flat all-reduce buffer)."""
        return [p for p in self.module.parameters() if p.requires_grad]

    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"module.{n}": t for n, t in self.module.state_dict().items()}
        if self.kept_state is not None:
            tensors.update({f"kept.{n}": t for n, t in self.kept_state.items()})
        return tensors

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        state = {n[len("module.") :]: t for n, t in tensors.items() if n.startswith("module.")}
        with torch.no_grad():
            self.module.load_state_dict(state, strict=True)
        kept = {n[len("kept.") :]: t.clone() for n, t in tensors.items() if n.startswith("kept.")}
        self.kept_state = kept or None
        if self.kept_state is not None:  # the kept prototypes, read off the kept module
            current = copy.deepcopy(self.module.state_dict())
            with torch.no_grad():
                self.module.load_state_dict(self.kept_state)
                self.kept_prototypes = self.prototypes().clone()
                self.module.load_state_dict(current)

    def state(self) -> dict:
        """JSON-able state beyond tensors (checkpointed)."""
        # null, not Infinity, before any epoch was kept: state.json stays standard JSON
        kept_loss = None if math.isinf(self.kept_loss) else self.kept_loss
        return {"beta": self.beta, "kept_epoch": self.kept_epoch, "kept_loss": kept_loss}

    def load_state(self, state: dict) -> None:
        self.beta = float(state.get("beta", self.beta))
        self.kept_epoch = state.get("kept_epoch")
        kept_loss = state.get("kept_loss")
        self.kept_loss = math.inf if kept_loss is None else float(kept_loss)

    # -- what the loop asks each step --------------------------------------------------------

    def phase(self, epoch: int) -> str:
        return "train"

    def monitoring(self) -> bool:
        """Are prototypes meaningful yet (DCAM: not while pretraining the autoencoder)?"""
        return True

    def model_space(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def mask_width(self, epoch: int) -> int | None:
        """Coordinates a pattern-completion mask covers in ``epoch``; None: no mask (the
        method uses none, or not in this phase)."""
        return None

    def batch_context(
        self, x: torch.Tensor, mask: torch.Tensor | None, comm: Collectives, epoch: int
    ):
        """Whatever the loss needs from the GLOBAL batch (called on every worker, also one
        with no rows this step, because it may run collectives)."""
        return None

    def mean_loss(
        self, x: torch.Tensor, mask: torch.Tensor | None, context, epoch: int
    ) -> torch.Tensor:
        """Mean loss over this worker's rows (x non-empty)."""
        raise NotImplementedError

    # -- epoch ends and the artifact ---------------------------------------------------------

    def begin_epoch(self, epoch: int, comm: Collectives, rank: int) -> bool:
        """Hook at every epoch start; True when the optimizer must be rebuilt (new phase)."""
        return False

    def end_epoch(self, epoch: int, comm: Collectives, rank: int) -> tuple[dict, bool]:
        """(extra epoch metrics, stop training now)."""
        return {}, False

    def consider_epoch(self, epoch: int, epoch_loss: float, comparable: bool) -> None:
        """At each epoch end, with the epoch's global loss: keep the parameters of the
        lowest-loss epoch among the comparable ones (a shared-mask epoch's loss is on
        another scale: compared only when every masked epoch shares its mask). Training
        from the same start on the same rows, the in-memory fit and the trainer keep the
        same epoch. A method with its own selection (DCAM's bound) overrides this."""
        if comparable and epoch_loss < self.kept_loss:
            self.kept_epoch, self.kept_loss = epoch, float(epoch_loss)
            self.kept_state = copy.deepcopy(self.module.state_dict())
            self.kept_prototypes = self.prototypes().clone()

    def finalize(self) -> None:
        """Before the artifact is written: the kept epoch's parameters become the model."""
        if self.kept_state is not None:
            with torch.no_grad():
                self.module.load_state_dict(self.kept_state)

    def artifact_fields(self) -> dict:
        raise NotImplementedError


def make_objective(
    cfg: TrainConfig, init: dict, device: torch.device, sample: np.ndarray | None = None
) -> Objective | None:
    """The method's objective (its package's hooks), or None for a closed-form update."""
    return methods.get(cfg.model.method).load_hooks().make_objective(cfg, init, device, sample)


def total_epochs(cfg: TrainConfig) -> int:
    """Epochs of the run: a method's own phases (DCAM's pretraining) come first."""
    return cfg.optim.epochs + methods.get(cfg.model.method).load_hooks().extra_epochs(cfg)
