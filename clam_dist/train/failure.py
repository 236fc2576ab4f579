"""Failure injection for tests and drills: the last worker's process dies once."""

from __future__ import annotations

import os

from clam_dist.train.config import TrainConfig

FAILURE_MARKER = "_failure_injected"


def maybe_fail(
    cfg: TrainConfig, run_url: str, rank: int, world: int, epoch: int, step: int, global_step: int
) -> None:
    """The last worker's process dies at run.fail_at_step (global) or at the start of
    run.fail_at_epoch, the first time only (a marker file in the run's storage says it
    already happened)."""
    due = global_step == cfg.run.fail_at_step or (cfg.run.fail_at_epoch == epoch and step == 0)
    if not due or rank != world - 1:
        return
    from clam_dist.data.source import open_filesystem

    fs, path = open_filesystem(
        f"{run_url}/{cfg.run.name}/{FAILURE_MARKER}", cfg.data.storage_options
    )
    if fs.exists(path):
        return
    # Ray Train's controller registers a reported checkpoint asynchronously: on a loaded
    # machine a worker dying right after a report could beat that registration, and the
    # run would resume from an older checkpoint than the test (or drill) names. Die only
    # once every report so far is committed, so where it resumes is not a race.
    import ray.train

    ray.train.get_all_reported_checkpoints(
        consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED
    )
    fs.pipe(path, f"killed at epoch {epoch}, global step {global_step}".encode())
    os._exit(1)
