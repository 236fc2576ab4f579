"""The per-worker step math and data plan, free of Ray so it is unit-testable.

Three things make N workers equal to one worker with the same global batch:
- the global batch of a step is fixed by the LANES (row ranges of files, see
  data/units.py, dealt to ``lanes`` streams per epoch; every step takes ``lane_batch``
  rows from every lane), and a worker reads lanes
  rank, rank + W, ...: 1 worker reading lanes {0, 1} sees the rows that 2 workers reading
  {0} and {1} see together;
- masks are a function of (row id, epoch, seed), never of which worker reads the row;
- each worker backpropagates its rows' loss SUM; the loop's one flat all-reduce sums
  those gradients together with the row counts (comm.py), and the sum divided by the
  global row count is exactly the gradient of the global-batch mean.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import torch

from clam_dist.data.prefetch import DEPTH, Prefetcher, ordered_map
from clam_dist.data.row_keys import row_keys
from clam_dist.data.stream import FilePerThread, read_unit
from clam_dist.data.units import Unit, plan_parts, row_group_pieces, segments
from clam_dist.models.clam import hidden_count

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = (z + _GOLDEN).astype(np.uint64)
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)).astype(np.uint64)
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)).astype(np.uint64)
        return z ^ (z >> np.uint64(31))


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
    # The h smallest scores per row, in no particular order: a partition, not a sort
    # (O(d) instead of O(d log d) per row; the same set, since 64-bit hashes do not tie).
    hidden = np.argpartition(scores, h - 1, axis=1)[:, :h]
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


def local_loss_sum(mean_loss: torch.Tensor, local_rows: int) -> torch.Tensor:
    """A worker's loss as the all-reduce needs it: the SUM over its rows. Summed over the
    workers and divided by the global row count (both in the step's one all-reduce, so no
    collective runs before the loss) its gradient is the global-batch mean's."""
    return mean_loss * local_rows


def shared_mask_epoch(epoch: int, shared_every: int) -> bool:
    """Is ``epoch`` one whose batches each share one mask (every ``shared_every``-th,
    counted from 1; 0 = never)?"""
    return bool(shared_every) and (epoch + 1) % shared_every == 0


def batch_mask(
    ids: np.ndarray,
    d: int,
    ratio: float,
    shared_every: int,
    epoch: int,
    step: int,
    seed: int,
) -> torch.Tensor | None:
    """The mask of this worker's rows at (epoch, step); None for the unmasked ablation.
    Every ``shared_every``-th epoch (counted from 1) the whole global batch shares one."""
    if ratio <= 0:
        return None
    if shared_mask_epoch(epoch, shared_every):
        return shared_mask(len(ids), d, ratio, epoch, step, seed)
    return row_masks(row_keys(ids), d, ratio, epoch, seed)


# --------------------------------------------------------------------------- data plan


def resolve_lanes(lanes: int, world: int, batch_size: int) -> tuple[int, int]:
    """(number of lanes, rows per lane per step); batch_size is rows per WORKER per step
    (0 = whole shard). Raises ValueError with the numbers when they do not divide."""
    n_lanes = lanes or world
    if n_lanes % world:
        raise ValueError(f"data.lanes={n_lanes} must be a multiple of run.num_workers={world}")
    if batch_size <= 0:
        return n_lanes, 1 << 40  # full batch: a step takes every row of every lane
    per_worker_lanes = n_lanes // world
    if batch_size % per_worker_lanes:
        raise ValueError(
            f"optim.batch_size={batch_size} rows per worker must split evenly over its "
            f"{per_worker_lanes} lanes (data.lanes={n_lanes}, run.num_workers={world})"
        )
    return n_lanes, batch_size // per_worker_lanes


def worker_lanes(rank: int, world: int, n_lanes: int) -> list[int]:
    return list(range(rank, n_lanes, world))


def steps_in_epoch(
    files: list[str],
    row_counts: dict[str, int | tuple[int, ...]],
    n_lanes: int,
    lane_batch: int,
    epoch: int,
    seed: int,
) -> int:
    """Global steps of one epoch: the longest lane's rows / lane_batch, rounded up.

    ``row_counts`` maps each file to its row-group sizes (source.row_group_rows(); a bare
    row count means one row group): the same footers LaneStream plans from."""
    parts = plan_parts(files, row_counts, n_lanes, epoch, seed, True)
    longest = max(sum(u.rows for u in part) for part in parts)
    return math.ceil(longest / lane_batch) if longest else 0


def lane_units(source, lane: int, n_lanes: int, epoch: int, seed: int) -> list[Unit]:
    """The row ranges of ``lane`` in this epoch (the plan of data/units.py)."""
    if not (0 <= lane < n_lanes):
        raise ValueError(f"lane must be in [0, {n_lanes}), got {lane}")
    return plan_parts(source.files(), source.row_group_rows(), n_lanes, epoch, seed, True)[lane]


class LaneStream:
    """The rows of one lane (its row ranges in this epoch's order), handed out in exact
    counts.

    ``skip_rows`` resumes mid-epoch: whole units are skipped by their footer row counts
    when no rows can be dropped (nan_policy "error") and ``row_counts`` is given (any
    footer-derived mapping: it only allows the skip, the unit sizes come from the plan);
    the rest is read and discarded, so a resumed run sees exactly the rows an
    uninterrupted one would.
    Read batches are kept as they come (views of Arrow memory) and copied ONCE, into the
    training batch that ``take`` returns.
    """

    def __init__(
        self,
        source,
        lane: int,
        n_lanes: int,
        epoch: int,
        seed: int,
        read_rows: int = 65_536,
        skip_rows: int = 0,
        row_counts: dict | None = None,
        read_threads: int = 1,
    ):
        units = lane_units(source, lane, n_lanes, epoch, seed)
        if row_counts is not None and source.nan_policy == "error":
            while units and units[0].rows <= skip_rows:
                skip_rows -= units[0].rows
                units = units[1:]
        self._source, self._units, self._read_rows = source, units, read_rows
        self._read_threads = read_threads
        self._dim = source.dim()
        self._batches = self._iterate()
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []  # (x, ids) not yet taken
        self._offset = 0  # rows of _pending[0] already taken
        self._have = 0  # rows in _pending minus _offset
        while skip_rows > 0:
            got = self._fill(min(skip_rows, 1 << 20))
            if got == 0:
                break
            self._drop(got)
            skip_rows -= got

    def _decoded_units(self, files: FilePerThread | None):
        """Each unit's batches, in the lane's order. No ``files``: read lazily in this
        thread, adjacent units of a file merged (one open per file). With ``files``
        (several read threads): the units' row groups decoded at once by a pool
        (data/prefetch.py: ordered_map), so at most ``read_threads + 1`` decoded row
        groups are alive, each thread reading through its own open file."""
        if files is None:
            return (
                read_unit(self._source, seg, self._read_rows, ids_as_keys=True)
                for seg in segments(self._units)
            )
        return ordered_map(
            lambda unit: files.read(unit, self._read_rows, ids_as_keys=True),
            row_group_pieces(self._units, self._source.row_group_rows()),
            self._read_threads,
            name="clam-dist-row-group-decode",
        )

    def _iterate(self):
        files = FilePerThread(self._source) if self._read_threads > 1 else None
        units = self._decoded_units(files)
        try:
            for batches in units:
                # Freed Arrow buffers back to the OS between ranges (as iter_batches does).
                pa.default_memory_pool().release_unused()
                for b in batches:
                    if len(b) and b.x.shape[1] != self._dim:
                        raise ValueError(
                            f"{b.file}: vectors have width {b.x.shape[1]}, expected {self._dim}"
                        )
                    yield b
        finally:
            close = getattr(units, "close", None)
            if close is not None:
                close()  # the pool first: no thread reads once the files close
            if files is not None:
                files.close()

    def _fill(self, rows: int) -> int:
        """Read until ``rows`` rows are pending (or the lane ends); how many are ready."""
        while self._have < rows:
            b = next(self._batches, None)
            if b is None:
                break
            if len(b):
                self._pending.append((b.x, b.ids))
                self._have += len(b)
        return min(rows, self._have)

    def _drop(self, rows: int, out_x: np.ndarray | None = None, out_ids: list | None = None):
        """Consume ``rows`` pending rows, copying them into out_x / out_ids if given."""
        done = 0
        while done < rows:
            x, ids = self._pending[0]
            n = min(rows - done, len(x) - self._offset)
            if out_x is not None:
                out_x[done : done + n] = x[self._offset : self._offset + n]
                out_ids.append(ids[self._offset : self._offset + n])
            done += n
            self._offset += n
            if self._offset == len(x):
                self._pending.pop(0)
                self._offset = 0
        self._have -= rows

    def ready(self, rows: int) -> int:
        """Rows the next ``take(rows)`` will return (reads ahead as needed)."""
        return self._fill(rows)

    def take_into(self, out_x: np.ndarray) -> np.ndarray:
        """Fill ``out_x`` (len(out_x) <= ready(...)) with the next rows; returns their ids."""
        ids: list[np.ndarray] = []
        self._drop(len(out_x), out_x, ids)
        return ids[0] if len(ids) == 1 else _concat_ids(ids)

    def take(self, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``rows`` rows (fewer only when the lane is exhausted), as one new
        writable float32 buffer."""
        out = np.empty((self._fill(rows), self._dim), np.float32)
        return out, self.take_into(out)


def _concat_ids(parts: list[np.ndarray]) -> np.ndarray:
    parts = [p for p in parts if len(p)]
    if not parts:
        return np.zeros(0, dtype=np.int64)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def take_step(
    streams: list[LaneStream], lane_batch: int, out: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """This worker's rows of one step: ``lane_batch`` rows from each of its lanes, copied
    once into one buffer (lane after lane): the first rows of ``out`` when it is large
    enough, else a new array."""
    counts = [s.ready(lane_batch) for s in streams]
    d = streams[0]._dim if streams else 0
    rows = sum(counts)
    fits = out is not None and out.shape[0] >= rows and out.shape[1:] == (d,)
    x = out[:rows] if fits else np.empty((rows, d), np.float32)
    ids, row = [], 0
    for s, n in zip(streams, counts):
        ids.append(s.take_into(x[row : row + n]))
        row += n
    return x, _concat_ids(ids)


def prefetch_steps(
    streams: list[LaneStream],
    lane_batch: int,
    steps: int,
    depth: int = DEPTH,
    reuse_buffers: bool = False,
) -> Prefetcher:
    """The next ``steps`` results of take_step, read in a background thread at most
    ``depth`` steps ahead (so memory is bounded by depth + 1 training batches). Errors
    of the reader are re-raised by ``next`` with their own message; ``close()`` stops the
    thread when the consumer stops early.

    ``reuse_buffers``: the batches are copied into a ring of ``depth + 3`` buffers instead
    of a new array each (a fresh 32 MB array costs ~4.5 ms of page faults on top of the
    copy itself). A batch's vectors then stay valid only until ``depth + 2`` more batches
    have been taken: for a consumer that copies them at once, as the training loop's
    standardisation does. The producer can be at most depth + 1 batches ahead of the
    batch the consumer holds, so the ring never overwrites a batch still in use."""
    ring: list[np.ndarray | None] = [None] * (depth + 3)

    def produce():
        for i in range(steps):
            slot = i % len(ring)
            x, ids = take_step(streams, lane_batch, ring[slot] if reuse_buffers else None)
            if reuse_buffers and (ring[slot] is None or x.shape[0] > ring[slot].shape[0]):
                ring[slot] = x  # a new array: the slot's buffer from now on
            yield x, ids

    return Prefetcher(produce(), depth, name="clam-dist-lane-reader")


# --------------------------------------------------------------------------- schedule, checks


def lr_factor(
    step: int, total_steps: int, schedule: str, warmup_steps: int = 0, min_factor: float = 0.0
) -> float:
    """Multiplier of the base lr at global ``step`` for the per-step schedules
    ("plateau" is per epoch and returns 1 here)."""
    if schedule == "plateau":
        return 1.0
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        span = max(1, total_steps - warmup_steps)
        t = min(1.0, (step - warmup_steps) / span)
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * t))
    raise ValueError(f"optim.schedule must be plateau, cosine or constant, got {schedule!r}")


_MIX = None


def fingerprint(t: torch.Tensor) -> torch.Tensor:
    """A 64-bit hash of a float32 tensor's exact bits, as a (2,) int64 tensor [h, -h] so ONE
    all-reduce(MAX) yields both the max and (negated) min over workers: equal iff all agree
    (up to hash collisions)."""
    global _MIX
    bits = t.detach().float().contiguous().view(torch.int32).reshape(-1).to(torch.int64).cpu()
    if _MIX is None or _MIX.numel() < bits.numel():
        g = torch.Generator().manual_seed(0x5EED)
        _MIX = torch.randint(1, 2**62, (max(bits.numel(), 1024),), generator=g) | 1
    h = int((bits * _MIX[: bits.numel()]).sum())  # int64 arithmetic wraps: a fine hash
    return torch.tensor([h, -h], dtype=torch.int64)
