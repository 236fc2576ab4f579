"""The per-worker step math, free of Ray so it is unit-testable.

Two things make N workers equal to one worker with the same global batch:
- masks are a function of (row id, epoch, seed), never of which worker reads the row;
- each worker's loss is its rows' SUM scaled by world_size / global_rows, so DDP's
  gradient AVERAGE over workers is exactly the gradient of the global-batch mean.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

from clam_dist.models.clam import clam_loss, hidden_count

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = (z + _GOLDEN).astype(np.uint64)
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)).astype(np.uint64)
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)).astype(np.uint64)
        return z ^ (z >> np.uint64(31))


def row_keys(ids: np.ndarray) -> np.ndarray:
    """A stable 64-bit key per row id (integers as is, anything else by CRC32 of its text)."""
    ids = np.asarray(ids)
    if np.issubdtype(ids.dtype, np.integer):
        return ids.astype(np.uint64)
    return np.fromiter((zlib.crc32(str(i).encode()) for i in ids), dtype=np.uint64, count=ids.size)


def row_masks(keys: np.ndarray, d: int, ratio: float, epoch: int, seed: int) -> torch.Tensor:
    """(n, d) {0,1} masks with hidden_count(d, ratio) ones per row, determined by the row
    key, epoch and seed alone (so independent of batching and worker count)."""
    h = hidden_count(d, ratio)
    n = keys.size
    if h == 0 or n == 0:
        return torch.zeros((n, d))
    with np.errstate(over="ignore"):
        base = _splitmix64(
            keys * np.uint64(1_000_003) + np.uint64(epoch) * np.uint64(7919) + np.uint64(seed)
        )
        scores = _splitmix64(base[:, None] + np.arange(d, dtype=np.uint64)[None, :])
    hidden = np.argsort(scores, axis=1, kind="stable")[:, :h]
    mask = np.zeros((n, d), dtype=np.float32)
    np.put_along_axis(mask, hidden, 1.0, axis=1)
    return torch.from_numpy(mask)


def shared_mask(n: int, d: int, ratio: float, epoch: int, step: int, seed: int) -> torch.Tensor:
    """One mask for the whole global batch of (epoch, step): same on every worker."""
    key = np.array(
        [np.uint64(epoch) * np.uint64(1_000_033) + np.uint64(step) + np.uint64(1 << 40)],
        dtype=np.uint64,
    )
    return row_masks(key, d, ratio, 0, seed).expand(n, d)


def scaled_local_loss(
    prototypes: torch.Tensor,
    x: torch.Tensor,
    mask: torch.Tensor | None,
    fill: torch.Tensor,
    beta: float,
    alpha: float,
    steps: int,
    metric: str,
    world_size: int,
    global_rows: int,
) -> torch.Tensor:
    """This worker's share of the global-batch mean loss, pre-scaled for DDP averaging."""
    if x.shape[0] == 0:
        return (prototypes * 0).sum()  # keep the graph so DDP still all-reduces
    mean = clam_loss(x, prototypes, beta, alpha, steps, metric, mask, fill)
    return mean * x.shape[0] * world_size / global_rows
