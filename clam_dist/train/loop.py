"""The per-worker training loop: ONE implementation for Ray Train's workers and for
in-process training (``in_process.py``, the in-memory estimators and Tune trials).

Each worker reads its lanes' rows and, per step: takes the next batch, measures it against
the current prototypes (monitor), computes its local update (forward/backward, or k-means'
sums and counts), all-reduces it in ONE flat buffer with an explicit
``torch.distributed.all_reduce`` (gloo on CPU, nccl on GPU; the identity in one process),
applies it, and, when due, reports metrics and a checkpoint. What a method computes lives
behind ``updates.Update`` (objectives from the method registry); this file never asks
which method runs. Where batches come from, where reports and checkpoints go and what
becomes of the final state is the ``WorkerSide``'s (``ray_worker.py``: Parquet lanes and
Ray Train; ``in_process.py``: rows in memory); this file does not import Ray.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch

from clam_dist.config import to_dict
from clam_dist.secrets import persistable
from clam_dist.train import checkpoint as ckpt
from clam_dist.train.comm import Comm, parameter_divergence
from clam_dist.train.config import TrainConfig
from clam_dist.train.failure import FAILURE_MARKER
from clam_dist.train.objectives import total_epochs
from clam_dist.train.state import TrainState
from clam_dist.train.step import resolve_lanes
from clam_dist.train.updates import Batch, Update, make_update
from clam_dist.train.verify import TrainingDiverged, Verifier, check_finite
from clam_dist.train.window import Window
from clam_dist.train.worker_config import LoopConfig, StepPlan, init_jsonable

__all__ = [  # the loop's public names, also those of the modules it is made of
    "FAILURE_MARKER", "BatchReader", "Comm", "Trainer", "TrainingDiverged", "WorkerSide",
    "check_finite", "device_for", "parameter_divergence", "train_loop",
]  # fmt: skip


def train_loop(config: dict) -> None:
    """Ray Train's per-worker function (``config``: ``LoopConfig.to_ray()``)."""
    from clam_dist.train.ray_worker import RayWorker  # Ray only where Ray runs

    loop = LoopConfig.from_ray(config)
    init = loop.load_init()
    side = RayWorker(loop, init, device_for(loop.train))
    Trainer(loop.train, loop.plan, init, side, loop.load_sample()).run()


def device_for(cfg: TrainConfig) -> torch.device:
    """The device a worker trains on: the GPU when asked for and present."""
    use_gpu = cfg.run.use_gpu and torch.cuda.is_available()
    return torch.device("cuda" if use_gpu else "cpu")


class BatchReader(Protocol):
    """A worker's steps: ``next`` gives (float32 rows, row keys); ``close`` stops early."""

    def __next__(self) -> tuple[np.ndarray, np.ndarray]: ...

    def close(self) -> None: ...


class WorkerSide(Protocol):
    """What the loop needs from where it runs (Ray Train, or one process)."""

    rank: int
    world: int
    comm: Comm  # not distributed in one process: every all-reduce is the identity

    def open_batches(self, epoch: int, step_in_epoch: int, steps_left: int) -> BatchReader:
        """This worker's rows of the epoch's steps ``step_in_epoch`` on (the rows of the
        steps before it skipped, so a resumed run sees the rows an uninterrupted one would)."""

    def before_step(self, epoch: int, step_in_epoch: int, global_step: int) -> None:
        """Called before every step (Ray: failure injection for tests and drills)."""

    def restore(self) -> tuple[dict[str, torch.Tensor], dict] | None:
        """(tensors, state.json) of the checkpoint to continue from, or None."""

    def report(self, metrics: dict, save_checkpoint: Callable[[str], None] | None) -> None:
        """Hand over a metrics window; ``save_checkpoint(directory)`` (given when one is
        due) writes the checkpoint files into ``directory``."""

    def finish(self, update: Update, history: list[dict]) -> None:
        """The final update (DCAM: its selected state), with every report so far."""


class Trainer:
    """One worker's training: the state, the method's update and the named steps."""

    def __init__(
        self,
        cfg: TrainConfig,
        plan: StepPlan,
        init: dict,
        side: WorkerSide,
        sample: np.ndarray | None = None,
    ):
        self.cfg, self.plan, self.init, self.side = cfg, plan, init, side
        self.rank, self.world, self.comm = side.rank, side.world, side.comm
        self.device = self.comm.device
        self.n_epochs = total_epochs(cfg)
        self.mean, self.scale = (
            torch.tensor(self.init[key], dtype=torch.float32, device=self.device)
            for key in ("mean", "scale")
        )
        self.k, self.d_in = len(self.init["prototypes"]), len(self.init["mean"])
        self.update = make_update(cfg, self.init, self.device, sample, self.plan.total_steps)
        self.state = TrainState()
        self.verifier = Verifier(self.comm, self.update.parameters)
        self.n_lanes, self.lane_batch = resolve_lanes(
            cfg.data.lanes, self.world, cfg.optim.batch_size
        )
        self.stopped = False
        # the last step's checkpoint content, taken by finish() before the final swap
        self.final_checkpoint: tuple[dict[str, torch.Tensor], dict] | None = None

    # -- the run -------------------------------------------------------------------------

    def run(self) -> None:
        self.start()
        while not self.done():
            self.begin_epoch()
            self.run_epoch()

    def start(self) -> None:
        """Restore, check that every worker starts from the same parameters, open the
        first metrics window; then ``begin_epoch`` and ``run_epoch`` until ``done``."""
        self.restore()
        self.verifier.check("at step 0 (after the broadcast initialisation)")
        self.window = Window(self.k, self.world, self.comm)

    def done(self) -> bool:
        s = self.state
        return self.stopped or s.epoch >= self.n_epochs or s.global_step >= self.plan.total_steps

    def restore(self) -> None:
        """Continue from this run's last checkpoint (Ray hands it over after a worker
        failure) or from run.resume_from (another run's), when the side has one."""
        restored = self.side.restore()
        if restored is None:
            return
        tensors, state = restored
        ckpt.check_shape(state, self.k, self.d_in)
        ckpt.check_method(state, self.cfg.model.method)
        self.update.load_state_dict(tensors, state)
        self.state.load_state_dict(state)

    def begin_epoch(self) -> None:
        epoch = self.state.epoch
        if self.update.begin_epoch(epoch, self.comm, self.rank):  # a new phase
            self.verifier.check(f"at the start of epoch {epoch} (new phase)")

    def run_epoch(self) -> None:
        s = self.state
        if s.step_in_epoch >= self.plan.steps_per_epoch[s.epoch]:
            s.next_epoch()  # an epoch with no steps (cannot happen with non-empty data)
            return
        reader = self.open_reader()
        try:
            while not self.train_step(reader):
                pass
        finally:
            reader.close()

    def open_reader(self) -> BatchReader:
        """This worker's rows from the current step on (``close`` stops the reader)."""
        s = self.state
        steps_left = self.plan.steps_per_epoch[s.epoch] - s.step_in_epoch
        return self.side.open_batches(s.epoch, s.step_in_epoch, steps_left)

    # -- one step ------------------------------------------------------------------------

    def train_step(self, reader: BatchReader) -> bool:
        """One optimizer step; True when the epoch or the run ends with it."""
        s = self.state
        self.side.before_step(s.epoch, s.step_in_epoch, s.global_step)
        batch = self.next_batch(reader)
        self.forward_backward(batch)
        # The monitor needs no collective and reads the prototypes the step started from
        # (the optimizer has not stepped yet): it runs while the all-reduce is in flight.
        self.all_reduce(meanwhile=lambda: self.monitor(batch))
        self.optimizer_step(batch)
        self.advance()
        return self.end_of_step()

    def next_batch(self, reader: BatchReader) -> Batch:
        xb, ids = next(reader)
        x = (torch.from_numpy(xb).to(self.device) - self.mean) / self.scale
        s = self.state
        return Batch(x, ids, s.epoch, s.step_in_epoch, s.global_step)

    def monitor(self, batch: Batch) -> None:
        """Assignments and energy under the prototypes the step starts from (no extra
        sync; measured by the update already when it needed them, as k-means does);
        nothing while the prototypes mean nothing yet (DCAM pretraining)."""
        t0, window = time.perf_counter(), self.window
        with torch.no_grad():
            z = self.update.model_space(batch.x) if len(batch.x) else None
            if z is not None:
                batch.measure(z, self.update.prototypes(), self.update.beta, self.cfg.model.metric)
                window.assign += torch.bincount(batch.nearest_idx, minlength=self.k).to(
                    window.assign
                )
                window.sums[2] += float(batch.energy.double().sum())
            window.sums[1] += len(batch.x)
        window.monitor_s += time.perf_counter() - t0

    def forward_backward(self, batch: Batch) -> None:
        t0 = time.perf_counter()
        self.update.forward_backward(batch, self.comm)
        self.window.compute_s += time.perf_counter() - t0

    def all_reduce(self, meanwhile: Callable[[], None]) -> None:
        """The step's collective; only the wait left after ``meanwhile`` counts as comm."""
        monitor_before = self.window.monitor_s
        t0 = time.perf_counter()
        self.update.all_reduce(self.comm, meanwhile)
        spent = time.perf_counter() - t0
        self.window.comm_s += spent - (self.window.monitor_s - monitor_before)

    def optimizer_step(self, batch: Batch) -> None:
        self.window.sums[0] += self.update.optimizer_step(batch)

    def advance(self) -> None:
        s, every = self.state, self.cfg.run.verify_every
        self.window.steps += 1
        s.global_step += 1
        s.step_in_epoch += 1
        if every and s.global_step % every == 0:
            self.verifier.check(f"after step {s.global_step}")

    # -- monitor, checkpoint, report -----------------------------------------------------

    def end_of_step(self) -> bool:
        """Report (with a checkpoint when due); True when the epoch or the run ends."""
        s, total = self.state, self.plan.total_steps
        end_epoch = s.step_in_epoch == self.plan.steps_per_epoch[s.epoch] or s.global_step >= total
        extra: dict = {}
        if end_epoch:
            extra, self.stopped = self.update.end_epoch(s.epoch, self.comm, self.rank)
        last = (
            self.stopped or s.global_step >= total or (end_epoch and s.epoch + 1 >= self.n_epochs)
        )
        save = last or self.checkpoint_due(end_epoch)
        if not (save or end_epoch or s.global_step % max(1, self.cfg.run.report_every) == 0):
            return False
        metrics = self.collect_metrics(end_epoch, extra)
        if last:
            self.finish()
        self.side.report(metrics, self.save_checkpoint if save else None)
        return end_epoch or last

    def checkpoint_due(self, end_epoch: bool) -> bool:
        run, s = self.cfg.run, self.state
        by_steps = run.checkpoint_every_steps and s.global_step % run.checkpoint_every_steps == 0
        by_epochs = end_epoch and run.checkpoint_every and (s.epoch + 1) % run.checkpoint_every == 0
        return bool(by_steps or by_epochs)

    def collect_metrics(self, end_epoch: bool, extra: dict) -> dict:
        """The window's metrics over all workers; at an epoch end also the epoch's loss and
        per-epoch updates, and the state moves to the next epoch."""
        s, phase = self.state, self.update.phase(self.state.epoch)
        metrics = self.window.reduce(self.rank)
        s.add_window(self.window.last_sums)
        self.window.reset()
        metrics.update(
            epoch=s.epoch,
            step=s.global_step,
            total_steps=self.plan.total_steps,
            workers=self.world,
            lr=self.update.lr(),
            **({"phase": phase} if phase != "train" else {}),
            # a phase whose prototypes mean nothing yet (the progress line shows no energy)
            **({} if self.update.monitoring() else {"monitored": False}),
        )
        if end_epoch:
            metrics["epoch_loss"] = s.epoch_loss()
            metrics.update(extra)
            self.update.apply_epoch(s.epoch, metrics["epoch_loss"])
            self.verifier.check(f"at the end of epoch {s.epoch}")
            s.next_epoch()
        metrics["verified_steps"] = self.verifier.count  # fingerprint checks (incl. step 0)
        # Measured, not assumed: max |difference| of any parameter between workers.
        metrics["prototype_divergence"] = parameter_divergence(self.comm, self.update.parameters())
        s.history.append(metrics)
        return metrics

    def finish(self) -> None:
        """The final state (the kept epoch; DCAM: its selected one) goes to the side (Ray:
        the artifact). The run's last checkpoint holds the LAST step's state, taken before
        that swap: a run resumed from it continues training where this one stopped, with
        the optimizer state that belongs to those parameters."""
        self.final_checkpoint = self.checkpoint_content()
        self.update.finalize()
        self.side.finish(self.update, self.state.history)

    def save_checkpoint(self, directory: str) -> None:
        tensors, meta = self.final_checkpoint or self.checkpoint_content()
        ckpt.save(directory, tensors, meta)

    def checkpoint_content(self) -> tuple[dict[str, torch.Tensor], dict]:
        """(tensors, state.json) of the current state, copied: later steps do not change it."""
        tensors, update_state = self.update.state_dict()
        tensors = {name: t.detach().clone() for name, t in tensors.items()}
        state = self.state.state_dict()
        state["data_position"].update(
            lanes=self.n_lanes, lane_batch=self.lane_batch, seed=self.cfg.run.seed
        )
        meta = {
            "k": self.k,
            "d": self.d_in,
            "d_model": int(self.update.prototypes().shape[1]),
            "method": self.cfg.model.method,
            **state,
            **update_state,
            "init": init_jsonable(self.init),
            "config": persistable(to_dict(self.cfg)),  # no credentials at rest
        }
        return tensors, copy.deepcopy(meta)
