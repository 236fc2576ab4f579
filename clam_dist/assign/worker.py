"""The assignment step as a stateless Ray Data task with a per-process model cache.

Why tasks, not an actor pool: Ray Data hands every pool actor its data context and
map transformer as object-store references and creates the actors with
``max_restarts=-1``, which makes Ray's core worker log an ERROR ("Actor ... has
constructor arguments in the object store and max_restarts > 0 ...") on every run,
whatever the UDF's own arguments are; and a pool actor holds its CPU for the whole job,
idle or not, so read work waits for a slot. A task carries only small by-value kwargs
(the model URL and a fingerprint), is retried by Ray when its worker dies, and the
retry's process loads the model from the URL again. Worker processes are reused, so the
model is still loaded once per process, not once per batch.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

import numpy as np
import pyarrow as pa

from clam_dist.artifacts import ModelArtifact
from clam_dist.assign.assigner import ClusterAssigner
from clam_dist.assign.node_tally import counted
from clam_dist.drills import DIE_ONCE_ENV, TASK_DELAY_ENV

# One entry per worker process: the assigner of the last (model, settings) it served.
_CACHE: dict[tuple, object] = {}


def fingerprint(artifact: ModelArtifact) -> str:
    """Content hash of an artifact (tensors and scalar settings): a worker process that
    cached an older model saved under the same URL reloads instead of reusing it."""
    h = hashlib.sha256()
    for name, value in (
        ("prototypes", artifact.prototypes),
        ("scaler_mean", artifact.scaler_mean),
        ("scaler_scale", artifact.scaler_scale),
        *sorted(artifact.tensors.items()),
    ):
        h.update(name.encode())
        if value is not None:
            a = np.ascontiguousarray(value)
            h.update(str((a.dtype.str, a.shape)).encode())
            h.update(a.tobytes())
    settings = [artifact.method, artifact.n_features, artifact.beta, artifact.alpha]
    settings += [artifact.steps, artifact.metric]
    h.update(json.dumps(settings, default=str).encode())
    h.update(json.dumps(artifact.meta, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def assign_batch(
    batch: dict[str, np.ndarray], chunk_rows: int = 0, tally=None, **settings
) -> pa.Table:
    """map_batches function: label one block with the process's cached assigner, in
    calls of ``chunk_rows`` rows (0 = the whole block at once); ``tally`` (a NodeTally
    actor, or None) hears this node's rows and seconds.

    ``settings`` are ClusterAssigner's keyword arguments plus ``model_fingerprint``."""
    n = len(batch["x"])
    with counted(tally, n):
        assigner = _assigner(settings)
        delay = os.environ.get(TASK_DELAY_ENV)
        if delay:
            time.sleep(float(delay))
        if chunk_rows <= 0 or n <= chunk_rows:
            return assigner(batch)
        return pa.concat_tables(
            [
                assigner({c: v[r0 : r0 + chunk_rows] for c, v in batch.items()})
                for r0 in range(0, n, chunk_rows)
            ]
        )


def _assigner(settings: dict):
    """The process's assigner for these settings (built, and its model loaded, once)."""
    _maybe_die()

    key = tuple(
        sorted((k, json.dumps(v, sort_keys=True, default=str)) for k, v in settings.items())
    )
    assigner = _CACHE.get(key)
    if assigner is None:
        _CACHE.clear()  # one model per process: a new job's model replaces the last one
        expected = settings.pop("model_fingerprint", None)
        assigner = ClusterAssigner(**settings)
        found = fingerprint(assigner.artifact)
        if expected is not None and found != expected:
            raise RuntimeError(
                f"model {settings['model_url']} changed while the assignment ran "
                f"(fingerprint {found}, the driver checked {expected}); re-run the job"
            )
        _CACHE[key] = assigner
    return assigner


def _maybe_die() -> None:
    marker = os.environ.get(DIE_ONCE_ENV)
    if not marker:
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    os._exit(1)  # no cleanup, no exception: the process is gone
