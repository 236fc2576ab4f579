"""Collectives of the training loop: all-reduce with byte and time accounting, the flat
gradient average, and the measured divergence of parameters between workers."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable

import torch


class Comm:
    """all_reduce that is a no-op on one worker and accounts bytes and seconds per kind
    ("step": what training needs each step; "verify"; "metrics")."""

    def __init__(self, distributed: bool, device: torch.device, barrier_timing: bool):
        self.distributed, self.device, self.barrier_timing = distributed, device, barrier_timing
        self.bytes: dict[str, int] = defaultdict(int)
        self.seconds: dict[str, float] = defaultdict(float)
        self.wait_s = 0.0

    def all_reduce(
        self,
        t: torch.Tensor,
        op: str = "sum",
        kind: str = "step",
        meanwhile: Callable[[], None] | None = None,
    ) -> torch.Tensor:
        """The elementwise ``op`` of ``t`` over workers. ``meanwhile`` (work that needs
        no collective and does not touch ``t``) runs while the reduction is in flight:
        the collective is started asynchronously and only the time left to wait for it
        afterwards is counted. With barrier timing the collective stays synchronous, so
        that the straggler wait and the transfer are timed apart."""
        if not self.distributed:
            if meanwhile is not None:
                meanwhile()
            return t
        import torch.distributed as dist

        t = t.to(self.device)
        reduce_op = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op]
        if self.barrier_timing and kind == "step":
            if meanwhile is not None:
                meanwhile()
            t0 = time.perf_counter()
            dist.barrier()  # stragglers' wait, so the timed all-reduce is transfer only
            self.wait_s += time.perf_counter() - t0
            t0 = time.perf_counter()
            dist.all_reduce(t, op=reduce_op)
        elif meanwhile is not None:
            work = dist.all_reduce(t, op=reduce_op, async_op=True)
            meanwhile()
            t0 = time.perf_counter()
            work.wait()
        else:
            t0 = time.perf_counter()
            dist.all_reduce(t, op=reduce_op)
        self.seconds[kind] += time.perf_counter() - t0
        self.bytes[kind] += t.numel() * t.element_size()
        return t

    def broadcast(self, t: torch.Tensor, src: int = 0) -> torch.Tensor:
        """Rank ``src``'s tensor on every worker (a no-op on one worker)."""
        if not self.distributed:
            return t
        import torch.distributed as dist

        t = t.to(self.device).contiguous()
        dist.broadcast(t, src=src)
        return t


def parameter_divergence(comm: Comm, params: torch.Tensor) -> float:
    """The largest absolute difference of any parameter between any two workers: the
    elementwise max over workers minus the min (two MAX all-reduces). 0.0 on one worker."""
    flat = params.detach().reshape(-1).float()
    hi = comm.all_reduce(flat.clone(), "max", kind="verify")
    neg_lo = comm.all_reduce(flat.neg(), "max", kind="verify")
    return float((hi + neg_lo).max()) if flat.numel() else 0.0


def all_reduce_grads_and_rows(
    params: list[torch.nn.Parameter],
    local_rows: int,
    comm: Comm,
    meanwhile: Callable[[], None] | None = None,
) -> tuple[bool, int]:
    """Sum every parameter's gradient (of each worker's loss SUM) and the workers' row
    counts in ONE flat all-reduce (what DDP's buckets do, in one bucket: the models here
    are small), then divide by the global row count: every worker holds the gradient of
    the global-batch mean. Returns (is it finite, the global row count), the same answer
    on every worker. ``meanwhile`` runs while the all-reduce is in flight."""
    if not comm.distributed:
        # One process (an in-memory fit): no buffer to pack; the same division, per tensor.
        if meanwhile is not None:
            meanwhile()
        finite, rows = True, max(local_rows, 1)
        for p in params:
            grad = p.grad if p.grad is not None else torch.zeros_like(p)
            p.grad = grad / rows
            finite = finite and bool(torch.isfinite(p.grad).all())
        return finite, local_rows
    grads = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
    rows = torch.tensor([float(local_rows)], device=comm.device)
    flat = comm.all_reduce(torch.cat([*grads, rows]), kind="step", meanwhile=meanwhile)
    global_rows = int(flat[-1].item())
    flat = flat[:-1] / max(global_rows, 1)
    offset = 0
    for p in params:
        p.grad = flat[offset : offset + p.numel()].view_as(p).clone()
        offset += p.numel()
    return bool(torch.isfinite(flat).all()), global_rows
