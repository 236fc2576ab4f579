"""The per-worker training loop run by Ray Train's TorchTrainer (one process per worker).

Each worker streams its lanes (file shards) and, per step: reads the next batch, measures
it against the current prototypes (monitor), computes its local update (forward/backward,
or k-means' sums and counts), all-reduces it in ONE flat buffer with an explicit
``torch.distributed.all_reduce`` (gloo on CPU, nccl on GPU), applies it, and, when due,
reports metrics and a checkpoint. What a method computes lives behind ``updates.Update``
(objectives from the method registry); this file never asks which method runs.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable

import torch

from clam_dist.config import to_dict
from clam_dist.secrets import persistable
from clam_dist.train import checkpoint as ckpt
from clam_dist.train.artifact import write_artifact
from clam_dist.train.comm import Comm, parameter_divergence
from clam_dist.train.failure import FAILURE_MARKER, maybe_fail
from clam_dist.train.objectives import total_epochs
from clam_dist.train.sources import make_source
from clam_dist.train.state import TrainState
from clam_dist.train.step import LaneStream, prefetch_steps, resolve_lanes, worker_lanes
from clam_dist.train.updates import Batch, make_update
from clam_dist.train.verify import TrainingDiverged, Verifier, check_finite
from clam_dist.train.window import Window
from clam_dist.train.worker_config import LoopConfig, init_jsonable

__all__ = [  # the loop's public names, also those of the modules it is made of
    "FAILURE_MARKER", "Comm", "Trainer", "TrainingDiverged", "check_finite",
    "parameter_divergence", "train_loop",
]  # fmt: skip


def train_loop(config: dict) -> None:
    """Ray Train's per-worker function (``config``: ``LoopConfig.to_ray()``)."""
    Trainer(LoopConfig.from_ray(config)).run()


class Trainer:
    """One worker's training: the state, the method's update and the named steps."""

    def __init__(self, loop: LoopConfig):
        import ray.train
        import torch.distributed as dist

        cfg = self.cfg = loop.train
        self.plan, self.run_url, self.init = loop.plan, loop.run_url, loop.load_init()
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        use_gpu = cfg.run.use_gpu and torch.cuda.is_available()
        self.device = torch.device("cuda" if use_gpu else "cpu")
        distributed = dist.is_available() and dist.is_initialized() and self.world > 1
        self.comm = Comm(distributed, self.device, cfg.run.barrier_timing)
        self.n_epochs = total_epochs(cfg)
        self.source = make_source(cfg)
        self.mean, self.scale = (
            torch.tensor(self.init[key], dtype=torch.float32, device=self.device)
            for key in ("mean", "scale")
        )
        self.k, self.d_in = len(self.init["prototypes"]), len(self.init["mean"])
        self.update = make_update(
            cfg, self.init, self.device, loop.load_sample(), self.plan.total_steps
        )
        self.state = TrainState()
        self.verifier = Verifier(self.comm, self.update.parameters)
        self.n_lanes, self.lane_batch = resolve_lanes(
            cfg.data.lanes, self.world, cfg.optim.batch_size
        )
        self.stopped = False

    # -- the run -------------------------------------------------------------------------

    def run(self) -> None:
        self.restore()
        self.verifier.check("at step 0 (after the broadcast initialisation)")
        self.row_counts = self.source.file_row_counts()
        self.window = Window(self.k, self.world, self.comm)
        while not self.done():
            self.begin_epoch()
            self.run_epoch()

    def done(self) -> bool:
        s = self.state
        return self.stopped or s.epoch >= self.n_epochs or s.global_step >= self.plan.total_steps

    def restore(self) -> None:
        """Continue from this run's last checkpoint (Ray hands it over after a worker
        failure) or from run.resume_from (another run's)."""
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None and self.cfg.run.resume_from:
            checkpoint = ckpt.open_checkpoint(
                self.cfg.run.resume_from, self.cfg.data.storage_options
            )
        if checkpoint is None:
            return
        with checkpoint.as_directory() as ckdir:
            tensors, state = ckpt.load(ckdir)
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

    def open_reader(self):
        """This worker's lanes from the current step on, read in a thread while the
        previous batch computes (bounded; ``close`` stops it). A mid-epoch resume skips
        the rows already consumed."""
        s, seed = self.state, self.cfg.run.seed
        skip = s.step_in_epoch * self.lane_batch
        streams = [
            LaneStream(
                self.source,
                lane,
                self.n_lanes,
                s.epoch,
                seed,
                read_rows=min(self.lane_batch, 65_536),
                read_threads=self.cfg.data.read_threads,
                skip_rows=skip,
                row_counts=self.row_counts,
            )
            for lane in worker_lanes(self.rank, self.world, self.n_lanes)
        ]
        steps_left = self.plan.steps_per_epoch[s.epoch] - s.step_in_epoch
        # next_batch standardises each batch into a new tensor at once: buffers recycle.
        return prefetch_steps(streams, self.lane_batch, steps_left, reuse_buffers=True)

    # -- one step ------------------------------------------------------------------------

    def train_step(self, reader) -> bool:
        """One optimizer step; True when the epoch or the run ends with it."""
        s = self.state
        maybe_fail(
            self.cfg, self.run_url, self.rank, self.world, s.epoch, s.step_in_epoch, s.global_step
        )
        batch = self.next_batch(reader)
        self.forward_backward(batch)
        # The monitor needs no collective and reads the prototypes the step started from
        # (the optimizer has not stepped yet): it runs while the all-reduce is in flight.
        self.all_reduce(meanwhile=lambda: self.monitor(batch))
        self.optimizer_step(batch)
        self.advance()
        return self.end_of_step()

    def next_batch(self, reader) -> Batch:
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
        self.report(metrics, save)
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
        """The final state (DCAM: the selected one) becomes the model artifact."""
        self.update.finalize()
        if self.rank == 0:
            fields, protos = self.update.artifact_fields(), self.update.prototypes()
            write_artifact(self.cfg, self.init, fields, protos, self.run_url, self.state.history)

    def report(self, metrics: dict, save: bool) -> None:
        import ray.train

        if not save:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as tmp:
            if self.rank == 0:
                self.save_checkpoint(tmp)
            checkpoint = ray.train.Checkpoint.from_directory(tmp) if self.rank == 0 else None
            ray.train.report(metrics, checkpoint=checkpoint)

    def save_checkpoint(self, directory: str) -> None:
        tensors, update_state = self.update.state_dict()
        state = self.state.state_dict()
        state["data_position"].update(
            lanes=self.n_lanes, lane_batch=self.lane_batch, seed=self.cfg.run.seed
        )
        ckpt.save(
            directory,
            tensors,
            {
                "k": self.k,
                "d": self.d_in,
                "d_model": int(self.update.prototypes().shape[1]),
                "method": self.cfg.model.method,
                **state,
                **update_state,
                "init": init_jsonable(self.init),
                "config": persistable(to_dict(self.cfg)),  # no credentials at rest
            },
        )
