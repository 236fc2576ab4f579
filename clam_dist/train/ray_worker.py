"""The loop's side on a Ray Train worker (``loop.WorkerSide``; ``loop.train_loop`` runs
the Trainer with it): rank and world from Ray's context, gloo/nccl collectives, batches
from this worker's Parquet lanes (read ahead in a thread), the checkpoint Ray hands over
after a failure (or run.resume_from), reports and checkpoints through
``ray.train.report``, and the model artifact under the run's folder. It does not import
the loop, so the two modules form no import cycle."""

from __future__ import annotations

import tempfile
from collections.abc import Callable

import ray.train
import torch

from clam_dist.data.prefetch import Prefetcher
from clam_dist.train import checkpoint as ckpt
from clam_dist.train.artifact import write_artifact
from clam_dist.train.comm import Comm
from clam_dist.train.failure import maybe_fail
from clam_dist.train.sources import make_source
from clam_dist.train.step import LaneStream, prefetch_steps, resolve_lanes, worker_lanes
from clam_dist.train.updates import Update
from clam_dist.train.worker_config import LoopConfig


class WorkTally:
    """What one worker trained since it started (a restarted worker counts afresh): the
    rows and seconds of its metrics windows, each window counted once. ``finish`` counts
    the run's last window before it is reported (the artifact is written first), and
    ``report`` then hands the same window over: a window is known by the global step it
    ends at, and one at or before the last counted is not counted again."""

    def __init__(self, rank: int, node_id: str):
        self.record = {"rank": rank, "node_id": node_id, "rows": 0, "seconds": 0.0}
        self.through_step: int | None = None  # the step the last counted window ended at

    def add(self, window: dict) -> None:
        """Count a window's ``worker_rows`` and ``window_s`` (this worker's own)."""
        step = window.get("step")
        if step is not None and self.through_step is not None and step <= self.through_step:
            return  # counted already
        self.record["rows"] += int(window.get("worker_rows", 0))
        self.record["seconds"] = round(self.record["seconds"] + window.get("window_s", 0.0), 3)
        if step is not None:
            self.through_step = int(step)


class RayWorker:
    """``loop.WorkerSide`` on a Ray Train worker."""

    def __init__(self, loop: LoopConfig, init: dict, device: torch.device):
        import torch.distributed as dist

        cfg = self.cfg = loop.train
        self.run_url, self.init = loop.run_url, init
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        distributed = dist.is_available() and dist.is_initialized() and self.world > 1
        self.comm = Comm(distributed, device, cfg.run.barrier_timing)
        self.source = make_source(cfg)
        self.n_lanes, self.lane_batch = resolve_lanes(
            cfg.data.lanes, self.world, cfg.optim.batch_size
        )
        self.row_counts: dict[str, int] | None = None  # footers, read at the first epoch
        # What this worker did since it started: the artifact records it per worker, the
        # driver sums it per node.
        self.work = WorkTally(self.rank, ray.get_runtime_context().get_node_id())

    def open_batches(self, epoch: int, step_in_epoch: int, steps_left: int) -> Prefetcher:
        """This worker's lanes, read in a thread while the previous batch computes
        (bounded; ``close`` stops it). A mid-epoch resume skips the rows already consumed."""
        if self.row_counts is None:
            self.row_counts = self.source.file_row_counts()
        cfg = self.cfg
        streams = [
            LaneStream(
                self.source,
                lane,
                self.n_lanes,
                epoch,
                cfg.run.seed,
                read_rows=min(self.lane_batch, 65_536),
                read_threads=cfg.data.read_threads,
                skip_rows=step_in_epoch * self.lane_batch,
                row_counts=self.row_counts,
            )
            for lane in worker_lanes(self.rank, self.world, self.n_lanes)
        ]
        # The loop standardises each batch into a new tensor at once: buffers recycle.
        return prefetch_steps(streams, self.lane_batch, steps_left, reuse_buffers=True)

    def before_step(self, epoch: int, step_in_epoch: int, global_step: int) -> None:
        maybe_fail(self.cfg, self.run_url, self.rank, self.world, epoch, step_in_epoch, global_step)

    def restore(self) -> tuple[dict[str, torch.Tensor], dict] | None:
        """This run's last checkpoint (Ray hands it over after a worker failure), else
        run.resume_from's (another run's), else None."""
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None and self.cfg.run.resume_from:
            checkpoint = ckpt.open_checkpoint(
                self.cfg.run.resume_from, self.cfg.data.storage_options
            )
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as ckdir:
            return ckpt.load(ckdir)

    def report(self, metrics: dict, save_checkpoint: Callable[[str], None] | None) -> None:
        """Every worker reports; only rank 0 writes and hands over the checkpoint."""
        self.work.add(metrics)  # the last window: counted by finish already, not again
        if save_checkpoint is None:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as tmp:
            if self.rank == 0:
                save_checkpoint(tmp)
            checkpoint = ray.train.Checkpoint.from_directory(tmp) if self.rank == 0 else None
            ray.train.report(metrics, checkpoint=checkpoint)

    def finish(self, update: Update, history: list[dict]) -> None:
        """Rank 0 writes the final state as the model artifact, with every worker's
        placement and work (gathered from all workers: a collective, so every rank calls
        it)."""
        # The run's last window is reported after this (its checkpoint holds the state
        # taken here): count it now. history[-1] is this worker's own, just collected.
        if history:
            self.work.add(history[-1])
        workers = self._gather_work()
        if self.rank == 0:
            fields, protos = update.artifact_fields(), update.prototypes()
            write_artifact(self.cfg, self.init, fields, protos, self.run_url, history, workers)

    def _gather_work(self) -> list[dict]:
        import torch.distributed as dist

        if self.world == 1 or not (dist.is_available() and dist.is_initialized()):
            return [dict(self.work.record)]
        gathered: list = [None] * self.world
        dist.all_gather_object(gathered, dict(self.work.record))
        return gathered
