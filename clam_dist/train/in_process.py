"""The distributed loop's Trainer in this process, on rows in memory: no Ray, no gloo.

The same objective, update, NaN guard, metrics windows and step plan as a Ray Train run;
one worker (rank 0 of 1) whose all-reduces are the identity (``Comm(distributed=False)``).
Batches follow the lanes' plan on virtual files of ``row_chunk`` rows
(``memory_batches.py``), so the run trains on exactly the rows, in exactly the order, of a
1-worker Ray run over ``write_vectors(url, x, ids=ids, rows_per_file=row_chunk)`` with
``data.id_column = "id"`` (and the same init). No checkpoint is written; reports are kept
in a list. ``InProcessTrainer`` steps epoch by epoch (Tune trials); ``train_in_process``
runs it to the end.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from clam_dist.config import from_dict
from clam_dist.train.comm import Comm
from clam_dist.train.config import TrainConfig
from clam_dist.train.loop import BatchReader, Trainer, device_for
from clam_dist.train.memory_batches import DEFAULT_ROW_CHUNK, MemoryRows, memory_steps, plan_steps
from clam_dist.train.step import resolve_lanes
from clam_dist.train.updates import Update
from clam_dist.train.worker_config import init_arrays


@dataclass
class InProcessResult:
    """``update``: the final state (DCAM: the selected one; read ``update.prototypes()``,
    ``update.objective``, ``update.artifact_fields()``); ``history``: every metrics dict
    a Ray run would report; ``epoch_losses``: each epoch's loss, in order."""

    update: Update
    history: list[dict] = field(default_factory=list)
    epoch_losses: list[float] = field(default_factory=list)


class InProcessSide:
    """``loop.WorkerSide`` in one process: rank 0 of 1, batches from ``rows``."""

    rank, world = 0, 1

    def __init__(self, cfg: TrainConfig, rows: MemoryRows, device: torch.device):
        self.cfg, self.rows = cfg, rows
        self.comm = Comm(False, device, barrier_timing=False)
        self.n_lanes, self.lane_batch = resolve_lanes(
            cfg.data.lanes, self.world, cfg.optim.batch_size
        )
        self.reports: list[dict] = []
        self.final: Update | None = None

    def open_batches(self, epoch: int, step_in_epoch: int, steps_left: int) -> BatchReader:
        lanes = list(range(self.n_lanes))  # one worker reads every lane
        return memory_steps(
            self.rows, lanes, self.n_lanes, self.lane_batch, epoch, self.cfg.run.seed,
            step_in_epoch, steps_left,
        )  # fmt: skip

    def before_step(self, epoch: int, step_in_epoch: int, global_step: int) -> None:
        pass  # failure injection is Ray's (a worker process dies)

    def restore(self) -> None:
        return None  # a fresh fit; nothing was checkpointed

    def report(self, metrics: dict, save_checkpoint: Callable[[str], None] | None) -> None:
        self.reports.append(metrics)  # no checkpoint: the fit lives in this process

    def finish(self, update: Update, history: list[dict]) -> None:
        self.final = update


class InProcessTrainer:
    """The loop's Trainer on ``x`` (rows in the model's input space: with the caller's
    standardisation, ``init`` has mean zeros and scale ones), stepped epoch by epoch.

    ``init``: the keys ``sources.initialise`` returns (prototypes, beta, mean, scale, fill,
    rows; lists or arrays); ``sample``: the standardised sample DCAM's joint phase needs;
    ``ids``: row ids for the masks (default: row numbers); ``steps_per_epoch`` > 0 caps
    each epoch (a fresh subset of rows per epoch, see ``memory_batches.plan_steps``)."""

    def __init__(
        self,
        cfg: TrainConfig,
        x: np.ndarray,
        init: dict,
        sample: np.ndarray | None = None,
        ids: np.ndarray | None = None,
        row_chunk: int = DEFAULT_ROW_CHUNK,
        steps_per_epoch: int = 0,
    ):
        rows = MemoryRows.of(x, ids, row_chunk)
        self.side = InProcessSide(cfg, rows, device_for(cfg))
        # As the Ray workers receive them: the arrays in their dtypes, a float32 sample.
        sample = None if sample is None else np.array(sample, dtype=np.float32)
        plan = plan_steps(cfg, rows, steps_per_epoch=steps_per_epoch)
        self.trainer = Trainer(cfg, plan, init_arrays(init), self.side, sample)
        self.trainer.start()
        self.epoch_losses: list[float] = []

    def done(self) -> bool:
        return self.trainer.done()

    def run_epoch(self) -> dict:
        """Train one epoch; its last report (with ``epoch_loss``, and a DCAM epoch's
        extras)."""
        if self.done():
            raise RuntimeError("training is done: no epoch left to run")
        reported = len(self.side.reports)
        self.trainer.begin_epoch()
        self.trainer.run_epoch()
        new = self.side.reports[reported:]
        metrics = new[-1] if new else {}
        if "epoch_loss" in metrics:
            self.epoch_losses.append(metrics["epoch_loss"])
        return metrics

    @property
    def update(self) -> Update:
        """The update as it stands (the final, selected state once ``done``)."""
        return self.trainer.update

    def kept(self, initial: torch.Tensor) -> tuple[torch.Tensor, int]:
        """(prototypes, epoch) the objective keeps: the lowest-loss comparable epoch's, or
        ``initial`` (epoch 0) while no epoch has been compared."""
        objective = self.update.objective
        if objective.kept_prototypes is None:
            return initial, 0
        return objective.kept_prototypes.clone(), int(objective.kept_epoch)

    def result(self) -> InProcessResult:
        return InProcessResult(self.update, list(self.side.reports), list(self.epoch_losses))


def train_to_the_end(trainer: InProcessTrainer) -> list[float]:
    """Run the remaining epochs; every epoch's loss."""
    while not trainer.done():
        trainer.run_epoch()
    return list(trainer.epoch_losses)


def train_in_process(
    cfg: TrainConfig,
    x: np.ndarray,
    init: dict,
    sample: np.ndarray | None = None,
    ids: np.ndarray | None = None,
    row_chunk: int = DEFAULT_ROW_CHUNK,
    steps_per_epoch: int = 0,
) -> InProcessResult:
    """Train on ``x`` in this process to the end (see ``InProcessTrainer``)."""
    trainer = InProcessTrainer(cfg, x, init, sample, ids, row_chunk, steps_per_epoch)
    while not trainer.done():
        trainer.run_epoch()
    return trainer.result()


def fit_config(method: str, seed: int, sections: dict[str, dict]) -> TrainConfig:
    """The TrainConfig of an in-memory fit: one worker, one lane, ``sections``' fields
    (``{"model": {...}, "optim": {...}, "dcam": {...}}``) over the job defaults, checked as
    a config file is (a bad value is a ConfigError naming the field)."""
    data = {name: dict(fields) for name, fields in sections.items()}
    data.setdefault("model", {})["method"] = method
    data.setdefault("run", {}).update(num_workers=1, seed=seed, verify_every=0)
    data.setdefault("data", {})["lanes"] = 1
    return from_dict(TrainConfig, data)


def memory_init(
    prototypes: np.ndarray, beta: float, rows: int, fill: np.ndarray | None = None
) -> dict:
    """The ``init`` of an in-memory fit on rows the caller already holds in the model's
    input space: an identity scaler (mean 0, scale 1), the prototypes and beta it starts
    from, and the mask fill (zeros when the method masks nothing in the input space)."""
    prototypes = np.asarray(prototypes, dtype=np.float32)
    d = prototypes.shape[1] if fill is None else len(fill)
    return {
        "prototypes": prototypes,
        "beta": float(beta),
        "mean": np.zeros(d),
        "scale": np.ones(d),
        "fill": np.zeros(d, np.float32) if fill is None else np.asarray(fill, np.float32),
        "rows": int(rows),
    }
