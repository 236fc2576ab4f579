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

    # -- parameters ----------------------------------------------------------------------

    def prototypes(self) -> torch.Tensor:
        return self.module.prototypes.detach()

    def trainable(self) -> list[nn.Parameter]:
        """The parameters that receive gradients in the current phase, in a fixed order
        (the order of the flat all-reduce buffer)."""
        return [p for p in self.module.parameters() if p.requires_grad]

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {f"module.{n}": t for n, t in self.module.state_dict().items()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        state = {n[len("module.") :]: t for n, t in tensors.items() if n.startswith("module.")}
        with torch.no_grad():
            self.module.load_state_dict(state, strict=True)

    def state(self) -> dict:
        """JSON-able state beyond tensors (checkpointed)."""
        return {"beta": self.beta}

    def load_state(self, state: dict) -> None:
        self.beta = float(state.get("beta", self.beta))

    # -- what the loop asks each step --------------------------------------------------------

    def phase(self, epoch: int) -> str:
        return "train"

    def monitoring(self) -> bool:
        """Are prototypes meaningful yet (DCAM: not while pretraining the autoencoder)?"""
        return True

    def model_space(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def mask_width(self) -> int | None:
        """Coordinates a pattern-completion mask covers; None: the method uses no mask."""
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

    def finalize(self) -> None:
        """Before the artifact is written (DCAM: restore the selected state)."""

    def artifact_fields(self) -> dict:
        raise NotImplementedError


class _Prototypes(nn.Module):
    def __init__(self, prototypes: torch.Tensor):
        super().__init__()
        self.prototypes = nn.Parameter(prototypes.detach().clone().float())


class ClAMObjective(Objective):
    """Masked pattern completion by AM dynamics (docs/design.md), the ClAM paper's loss."""

    method = "clam"

    def __init__(self, cfg: TrainConfig, init: dict, device: torch.device):
        super().__init__(cfg, init)
        self.module = _Prototypes(torch.tensor(init["prototypes"])).to(device)
        self.fill = torch.tensor(init["fill"], dtype=torch.float32, device=device)

    def mask_width(self) -> int | None:
        return int(self.module.prototypes.shape[1]) if self.cfg.model.mask_ratio > 0 else None

    def mean_loss(self, x, mask, context, epoch):
        from clam_dist.models.clam import clam_loss

        m = self.cfg.model
        return clam_loss(
            x, self.module.prototypes, self.beta, m.alpha, m.steps, m.metric, mask, self.fill
        )

    def artifact_fields(self) -> dict:
        m = self.cfg.model
        return {"beta": self.beta, "alpha": m.alpha, "steps": m.steps, "metric": m.metric}


class AttentionObjective(Objective):
    """k attention heads whose vectors are the clusters; reconstruction risk
    E||x - layer(x)||^2 (the attention-clustering paper's objective)."""

    method = "attention"

    def __init__(self, cfg: TrainConfig, init: dict, device: torch.device):
        from clam_dist.models.attention import AttentionLayer

        super().__init__(cfg, init)
        self.module = AttentionLayer(
            torch.tensor(init["prototypes"]), self.beta, cfg.model.similarity
        ).to(device)

    def prototypes(self) -> torch.Tensor:
        return self.module.mu.detach()

    def mean_loss(self, x, mask, context, epoch):
        from clam_dist.models.attention import attention_loss

        return attention_loss(self.module, x)

    def artifact_fields(self) -> dict:
        # The distance-score layer is one AM step with alpha = 1 (what the predictor runs).
        return {
            "beta": self.beta,
            "alpha": 1.0,
            "steps": 1,
            "metric": "euclidean",
            "meta": {"score": self.cfg.model.similarity},
        }


class DCAMObjective(Objective):
    """Autoencoder + latent prototypes: pretraining on reconstruction, then the joint
    energy loss (decoded AM-evolved latent reconstructs the input, plus reconstruction)."""

    method = "dcam"

    def __init__(self, cfg: TrainConfig, init: dict, device: torch.device, sample: np.ndarray):
        from clam_dist.models.dcam import seeded_dcam_model

        super().__init__(cfg, init)
        m, dc = cfg.model, cfg.dcam
        self.spec = encoder_spec(cfg, len(init["mean"]))
        self.device = device
        # Every worker builds the same weights from the seed (verified at step 0).
        self.module = seeded_dcam_model(
            self.spec,
            cfg.run.seed,
            prototypes=torch.tensor(init["prototypes"], dtype=torch.float32),
            beta=self.beta,
            alpha=m.alpha,
            steps=m.steps,
            metric=m.metric,
            recon_weight=dc.recon_weight,
            fill=m.fill,
        ).to(device)
        self.sample = torch.from_numpy(np.ascontiguousarray(sample, dtype=np.float32)).to(device)
        self.joint_ready = False  # prototypes and beta set from the pretrained latents
        # (rows, their latents WITH the encoder's graph) of the current step: the monitor,
        # the global latent fill and the loss share one encoder pass per step.
        self._step_latents: tuple[torch.Tensor, torch.Tensor] | None = None
        self.recon_pretrained: float | None = None
        self.best: dict | None = None  # {"epoch", "am", "recon_ratio", "state"}
        self._set_phase_grads("pretrain")

    # -- phases --------------------------------------------------------------------------

    def phase(self, epoch: int) -> str:
        return "pretrain" if epoch < self.cfg.dcam.pretrain_epochs else "joint"

    def monitoring(self) -> bool:
        return self.joint_ready

    def _set_phase_grads(self, phase: str) -> None:
        # Pretraining trains the autoencoder only: frozen prototypes get no gradient, so
        # they are neither in the all-reduce buffer nor touched by the optimizer.
        self.module.prototypes.requires_grad_(phase == "joint")

    def begin_epoch(self, epoch: int, comm: Collectives, rank: int) -> bool:
        if self.phase(epoch) == "pretrain" or self.joint_ready:
            self._set_phase_grads(self.phase(epoch))
            return False
        self._start_joint(comm, rank)
        return True

    def _start_joint(self, comm: Collectives, rank: int) -> None:
        """k-means on the pretrained latents of the sample, beta from their scale, the
        reference reconstruction loss; computed on rank 0 and broadcast so every worker
        holds exactly the same values."""
        from clam_dist.models.clam import beta_from_data
        from clam_dist.models.dcam import encode, evaluate
        from clam_dist.models.kmeans import kmeans_plus_plus, lloyd

        m = self.cfg.model
        k, latent = self.module.prototypes.shape
        packed = torch.zeros(k * latent + 2, dtype=torch.float32, device=self.device)
        if rank == 0:
            z = encode(self.module, self.sample)
            gen = torch.Generator().manual_seed(self.cfg.run.seed)
            seeds = kmeans_plus_plus(z.cpu(), k, gen, metric=m.metric)
            protos = lloyd(z.cpu(), seeds, 100, metric=m.metric).centers.to(self.device)
            beta = m.beta if m.beta is not None else beta_from_data(z.cpu(), protos.cpu(), m.metric)
            recon = evaluate(self.module, self.sample, "pretrain")["recon"]
            packed = torch.cat(
                [protos.reshape(-1).float(), torch.tensor([beta, recon], device=self.device)]
            )
        packed = comm.broadcast(packed, src=0)
        with torch.no_grad():
            self.module.prototypes.copy_(packed[: k * latent].reshape(k, latent))
        self.beta = float(packed[-2])
        self.module.beta = self.beta
        self.recon_pretrained = float(packed[-1])
        self.joint_ready = True
        self._set_phase_grads("joint")
        # The start of the joint phase is itself a candidate (as in the in-memory fit).
        self.best = None
        self._consider(-1, *self._evaluate(comm, rank))

    # -- loss ----------------------------------------------------------------------------

    def mask_width(self) -> int | None:
        return self.spec.latent_dim if self.cfg.model.mask_ratio > 0 else None

    def _latents(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's output for this step's rows, computed once per step. With the
        graph: the monitor asks first (under no_grad), the loss backpropagates through it."""
        if self._step_latents is None or self._step_latents[0] is not x:
            with torch.enable_grad():
                self._step_latents = (x, self.module.encoder(x))
        return self._step_latents[1]

    def model_space(self, x: torch.Tensor) -> torch.Tensor:
        return self._latents(x).detach()

    def batch_context(self, x, mask, comm, epoch):
        if self.phase(epoch) == "pretrain" or mask is None:
            return None
        return self._global_latent_fill(x, comm)

    def mean_loss(self, x, mask, context, epoch):
        if self.phase(epoch) == "pretrain":
            return self.module(x, None, "pretrain")["loss"]
        z = self._latents(x)
        # The graph is this step's only; the values stay for the monitor, which runs
        # after the backward pass (while the gradient all-reduce is in flight).
        self._step_latents = (x, z.detach())
        return self.module(x, mask, "joint", latent_fill=context, latents=z)["loss"]

    def _global_latent_fill(self, x: torch.Tensor, comm: Collectives) -> torch.Tensor:
        """The fill of hidden latent coordinates from the GLOBAL batch's latents (not this
        worker's share), so N workers compute what one worker with the whole batch does."""
        latent = self.spec.latent_dim
        fill = self.cfg.model.fill
        if fill == "zero":
            return torch.zeros(latent, device=x.device)
        with torch.no_grad():
            z = self._latents(x).detach() if len(x) else torch.zeros(0, latent, device=x.device)
            if fill == "mean":
                sums = torch.cat([z.sum(0), torch.tensor([float(len(z))], device=x.device)])
                sums = comm.all_reduce(sums.double(), kind="step").float()
                return sums[:latent] / sums[latent].clamp_min(1.0)
            sign = 1.0 if fill == "max" else -1.0  # min = -max(-z)
            local = (sign * z).max(0).values if len(z) else torch.full((latent,), -math.inf)
            return sign * comm.all_reduce(local.to(x.device), "max", kind="step")

    # -- epoch ends: the reconstruction bound ---------------------------------------------

    def _evaluate(self, comm: Collectives, rank: int) -> tuple[float, float]:
        """(am, recon) full-sample unmasked losses, from rank 0 to all."""
        from clam_dist.models.dcam import evaluate

        out = torch.zeros(2, dtype=torch.float64, device=self.device)
        if rank == 0:
            ev = evaluate(self.module, self.sample, "joint")
            out = torch.tensor([ev["am"], ev["recon"]], dtype=torch.float64, device=self.device)
        am, recon = comm.broadcast(out, src=0).tolist()
        return am, recon

    def _consider(self, epoch: int, am: float, recon: float) -> dict:
        dc = self.cfg.dcam
        ratio = recon / self.recon_pretrained if self.recon_pretrained else math.inf
        within = recon <= (1.0 + dc.recon_tolerance) * self.recon_pretrained
        eligible = within or dc.recon_bound == "none"
        if eligible and (self.best is None or am < self.best["am"]):
            self.best = {
                "epoch": epoch,
                "am": am,
                "recon_ratio": ratio,
                "state": copy.deepcopy(self.module.state_dict()),
            }
        if not (math.isfinite(am) and math.isfinite(recon)):
            raise FloatingPointError(
                f"DCAM loss became non-finite at epoch {epoch} (am={am}, recon={recon}); "
                "lower optim.lr or model.beta"
            )
        return {"am": am, "recon": recon, "recon_ratio": ratio, "within_bound": within}

    def end_epoch(self, epoch: int, comm: Collectives, rank: int) -> tuple[dict, bool]:
        if self.phase(epoch) == "pretrain":
            return {"phase": "pretrain"}, False
        joint_epoch = epoch - self.cfg.dcam.pretrain_epochs
        metrics = self._consider(joint_epoch, *self._evaluate(comm, rank))
        stop = self.cfg.dcam.recon_bound == "stop" and not metrics["within_bound"]
        metrics.update(phase="joint", selected_epoch=self.best["epoch"] if self.best else None)
        return metrics, stop

    def finalize(self) -> None:
        if self.best is not None:
            self.module.load_state_dict(self.best["state"])

    # -- checkpoint state ------------------------------------------------------------------

    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = super().state_tensors()
        if self.best is not None:
            tensors.update({f"best.{n}": t for n, t in self.best["state"].items()})
        return tensors

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        super().load_state_tensors(tensors)
        best = {n[len("best.") :]: t for n, t in tensors.items() if n.startswith("best.")}
        if best and self.best is not None:
            self.best["state"] = best

    def state(self) -> dict:
        best = None if self.best is None else {k: v for k, v in self.best.items() if k != "state"}
        return {
            "beta": self.beta,
            "joint_ready": self.joint_ready,
            "recon_pretrained": self.recon_pretrained,
            "best": best,
        }

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        self.module.beta = self.beta
        self.joint_ready = bool(state.get("joint_ready", False))
        self.recon_pretrained = state.get("recon_pretrained")
        self.best = None if state.get("best") is None else dict(state["best"], state={})
        self._set_phase_grads("joint" if self.joint_ready else "pretrain")

    # -- artifact --------------------------------------------------------------------------

    def artifact_fields(self) -> dict:
        from clam_dist.models.dcam import encoder_tensors

        m = self.cfg.model
        return {
            "beta": self.beta,
            "alpha": m.alpha,
            "steps": m.steps,
            "metric": m.metric,
            "tensors": encoder_tensors(self.module),
            "meta": {
                "encoder": self.spec.to_json(),
                "recon_pretrained": self.recon_pretrained,
                "recon_ratio": None if self.best is None else self.best["recon_ratio"],
                "selected_joint_epoch": None if self.best is None else self.best["epoch"],
            },
        }


def encoder_spec(cfg: TrainConfig, n_features: int):
    """The autoencoder architecture of a DCAM run (validated: image shapes must fit)."""
    from clam_dist.models.dcam import EncoderSpec

    dc = cfg.dcam
    hidden = dc.hidden or ([128, 64] if dc.encoder == "mlp" else [16, 32])
    try:
        return EncoderSpec(
            kind=dc.encoder,
            n_features=int(n_features),
            latent_dim=dc.latent_dim,
            hidden=tuple(hidden),
            image_shape=None if dc.image_shape is None else tuple(dc.image_shape),
        )
    except ValueError as exc:
        raise ValueError(f"dcam: {exc}") from exc


def make_objective(
    cfg: TrainConfig, init: dict, device: torch.device, sample: np.ndarray | None = None
) -> Objective | None:
    """The method's objective (clam_dist.methods), or None for a closed-form update."""
    from clam_dist import methods

    return methods.get(cfg.model.method).make_objective(cfg, init, device, sample)


def total_epochs(cfg: TrainConfig) -> int:
    """Epochs of the run: a method's own phases (DCAM's pretraining) come first."""
    from clam_dist import methods

    return cfg.optim.epochs + methods.get(cfg.model.method).extra_epochs(cfg)
