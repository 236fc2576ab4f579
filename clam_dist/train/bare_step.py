"""The bare training step: the method's own update (``updates.make_update``: loss,
backward, Adam, or k-means' sums and counts) on in-memory batches in one process, with
no Ray, no reader, no monitor, no verification and no reports. It is the yardstick of
the trainer's overhead: ``jobs/scaling.py`` runs it in the same process as the trainer
and compares rows/s (docs/design.md, "Scaling").
"""

from __future__ import annotations

import time

import numpy as np
import torch

from clam_dist.train.comm import Comm
from clam_dist.train.config import TrainConfig
from clam_dist.train.objectives import total_epochs
from clam_dist.train.updates import Batch, make_update


def bare_step_rows_per_s(
    cfg: TrainConfig,
    init: dict,
    x: np.ndarray,
    batch_size: int,
    epochs: int = 1,
    first_epoch: int = 0,
    sample: np.ndarray | None = None,
    warmup_steps: int = 2,
) -> float:
    """Rows/s of ``epochs`` passes over the standardised rows ``x`` in batches of
    ``batch_size`` (what one worker of the trainer computes per step), in this process's
    torch threads, numbered from ``first_epoch`` (DCAM: a joint epoch starts at
    ``dcam.pretrain_epochs``). The first ``warmup_steps`` steps are not timed."""
    device = torch.device("cpu")
    n = x.shape[0]
    steps_per_epoch = max(1, n // batch_size)
    update = make_update(cfg, init, device, sample, steps_per_epoch * epochs)
    comm = Comm(False, device, False)
    ids = np.arange(n, dtype=np.int64)
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    rows, seconds, global_step = 0, 0.0, 0
    for epoch in range(first_epoch, first_epoch + epochs):
        update.begin_epoch(epoch, comm, 0)
        for step in range(steps_per_epoch):
            b0 = step * batch_size
            batch = Batch(
                xt[b0 : b0 + batch_size], ids[b0 : b0 + batch_size], epoch, step, global_step
            )
            t0 = time.perf_counter()
            update.forward_backward(batch, comm)
            update.all_reduce(comm)
            update.optimizer_step(batch)
            if global_step >= warmup_steps:
                seconds += time.perf_counter() - t0
                rows += len(batch.x)
            global_step += 1
    return rows / max(seconds, 1e-9)


def bare_step_of_run(cfg: TrainConfig, n_rows: int) -> float:
    """The bare step's rows/s on a training run's own data and initialisation (the
    driver's: sample, statistics, prototypes, beta), one torch thread (what each trainer
    worker gets), ``optim.batch_size`` rows per step, over the run's last epoch."""
    from clam_dist.data.stats import sample_rows
    from clam_dist.train.sources import init_sample, initialise, make_source, standardize

    sample = init_sample(cfg)
    init = initialise(cfg, sample)
    rows = sample_rows(make_source(cfg), n_rows, cfg.run.seed).x
    x = standardize(rows, init["mean"], init["scale"])
    worker_sample = standardize(sample.x, init["mean"], init["scale"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return bare_step_rows_per_s(
            cfg, init, x, cfg.optim.batch_size, first_epoch=total_epochs(cfg) - 1,
            sample=worker_sample,
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
