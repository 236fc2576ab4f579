"""The step of gradient-trained methods: the objective's loss on this worker's rows,
scaled to its share of the global-batch mean, backward, ONE flat all-reduce of every
gradient, then Adam. A non-finite gradient or parameter stops the run before it is
applied or saved."""

from __future__ import annotations

from collections.abc import Callable

import torch

from clam_dist.train import checkpoint as ckpt
from clam_dist.train.batch import Batch
from clam_dist.train.comm import Comm, all_reduce_grads_and_rows
from clam_dist.train.config import TrainConfig
from clam_dist.train.objectives import Objective
from clam_dist.train.step import batch_mask, local_loss_sum, lr_factor, shared_mask_epoch
from clam_dist.train.verify import check_finite


class GradientUpdate:
    def __init__(self, cfg: TrainConfig, objective: Objective, total_steps: int):
        self.cfg, self.objective, self.total_steps = cfg, objective, total_steps
        self.optimizer, self.plateau = self._new_optimizer()
        self._params: list[torch.nn.Parameter] = []
        self._loss: torch.Tensor | None = None
        self._rows, self._global_rows, self._finite = 0, 0, True

    def _new_optimizer(self):
        # Which parameters train depends on the objective's phase (it says which).
        opt = self.cfg.optim
        optimizer = torch.optim.Adam(self.objective.trainable(), lr=opt.lr)
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=opt.plateau_factor, patience=opt.plateau_patience
        )
        return optimizer, plateau

    @property
    def beta(self) -> float:
        return self.objective.beta

    # -- phases and what the monitor sees -------------------------------------------------

    def phase(self, epoch: int) -> str:
        return self.objective.phase(epoch)

    def begin_epoch(self, epoch: int, comm: Comm, rank: int) -> bool:
        if not self.objective.begin_epoch(epoch, comm, rank):
            return False
        self.optimizer, self.plateau = self._new_optimizer()  # a new phase: a new loss
        return True

    def monitoring(self) -> bool:
        return self.objective.monitoring()

    def model_space(self, x: torch.Tensor) -> torch.Tensor | None:
        return self.objective.model_space(x) if self.objective.monitoring() else None

    def prototypes(self) -> torch.Tensor:
        return self.objective.prototypes()

    def parameters(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.objective.module.parameters()])

    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    # -- one step --------------------------------------------------------------------------

    def _set_lr(self, global_step: int) -> None:
        opt = self.cfg.optim
        if opt.schedule == "plateau":
            return  # per epoch, in apply_epoch
        factor = lr_factor(
            global_step, self.total_steps, opt.schedule, opt.warmup_steps, opt.min_lr_factor
        )
        for group in self.optimizer.param_groups:
            group["lr"] = opt.lr * factor

    def _mask(self, batch: Batch) -> torch.Tensor | None:
        width = self.objective.mask_width(batch.epoch)
        if width is None:
            return None
        m, seed = self.cfg.model, self.cfg.run.seed
        mask = batch_mask(
            batch.ids, width, m.mask_ratio, m.shared_every, batch.epoch, batch.step, seed
        )
        return None if mask is None else mask.to(batch.x.device)

    def forward_backward(self, batch: Batch, comm: Comm) -> None:
        self._set_lr(batch.global_step)
        x, mask = batch.x, self._mask(batch)
        # Collectives inside the loss (DCAM's global latent fill) run on EVERY worker, also
        # one whose share of this step is empty.
        context = self.objective.batch_context(x, mask, comm, batch.epoch)
        self._params = self.objective.trainable()
        if len(x):
            loss = local_loss_sum(self.objective.mean_loss(x, mask, context, batch.epoch), len(x))
        else:  # keep every parameter in the graph so the all-reduce has its grad
            loss = sum((p * 0).sum() for p in self._params)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._loss, self._rows = loss, len(x)

    def all_reduce(self, comm: Comm, meanwhile: Callable[[], None] | None = None) -> None:
        self._finite, self._global_rows = all_reduce_grads_and_rows(
            self._params, self._rows, comm, meanwhile
        )

    def optimizer_step(self, batch: Batch) -> float:
        # The gradient is all-reduced, so every worker reaches the same verdict without
        # another collective; nothing non-finite is ever applied or saved.
        method, step, epoch = self.cfg.model.method, batch.global_step, batch.epoch
        check_finite(self._finite, "loss gradient", method, step, epoch)
        if self._global_rows:
            self.optimizer.step()
            finite = bool(torch.isfinite(self.parameters()).all())
            check_finite(finite, "parameters after the optimizer step", method, step, epoch)
        return float(self._loss.detach())

    # -- epochs, artifact, checkpoint --------------------------------------------------------

    def end_epoch(self, epoch: int, comm: Comm, rank: int) -> tuple[dict, bool]:
        return self.objective.end_epoch(epoch, comm, rank)

    def apply_epoch(self, epoch: int, epoch_loss: float) -> None:
        # A shared-mask epoch's loss is on another scale than a per-row-mask epoch's: the
        # plateau compares like with like, so it skips the odd kind out.
        comparable = not self._odd_mask_epoch(epoch)
        if self.cfg.optim.schedule == "plateau" and comparable:
            self.plateau.step(epoch_loss)
        self.objective.consider_epoch(epoch, epoch_loss, comparable)

    def _odd_mask_epoch(self, epoch: int) -> bool:
        """A shared-mask epoch in a run that also has per-row-mask epochs."""
        m = self.cfg.model
        masked = self.objective.mask_width(epoch) is not None
        return masked and m.shared_every > 1 and shared_mask_epoch(epoch, m.shared_every)

    def finalize(self) -> None:
        self.objective.finalize()  # the kept epoch (DCAM: its bounded selection)

    def artifact_fields(self) -> dict:
        return self.objective.artifact_fields()

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict]:
        opt_tensors, opt_meta = ckpt.optimizer_to_files(self.optimizer)
        # a copy: safetensors refuses two names for one storage
        tensors = {
            "prototypes": self.objective.prototypes().clone(),
            **self.objective.state_tensors(),
            **opt_tensors,
        }
        state = {
            "optimizer": opt_meta,
            "plateau": self.plateau.state_dict(),
            "objective": self.objective.state(),
        }
        return tensors, state

    def load_state_dict(self, tensors: dict[str, torch.Tensor], state: dict) -> None:
        self.objective.load_state(state.get("objective", {}))
        self.objective.load_state_tensors(tensors)
        # Rebuilt after the objective's state: the phase decides what trains.
        self.optimizer, self.plateau = self._new_optimizer()
        ckpt.optimizer_from_files(self.optimizer, tensors, state["optimizer"])
        self.plateau.load_state_dict(state["plateau"])
