"""Metrics of a report window: local sums since the last report, reduced in ONE
all-reduce, plus the time split of a step (compute, all-reduce, wait, monitor)."""

from __future__ import annotations

import time

import torch

from clam_dist.train.comm import Comm


class Window:
    def __init__(self, k: int, world: int, comm: Comm):
        self.k, self.world, self.comm = k, world, comm
        self.last_sums = [0.0, 0.0, 0.0]
        self.reset()

    def reset(self) -> None:
        self.sums = [0.0, 0.0, 0.0]  # loss sum (global share), rows, energy sum
        self.assign = torch.zeros(self.k, dtype=torch.float64)
        self.steps = 0
        self.compute_s = self.comm_s = self.monitor_s = 0.0
        self.t0 = time.perf_counter()
        self.bytes0, self.wait0 = self.comm.bytes["step"], self.comm.wait_s

    def reduce(self, rank: int) -> dict:
        """The window's metrics over all workers; ``last_sums`` keeps its global sums."""
        comm = self.comm
        seconds = time.perf_counter() - self.t0
        per_worker = torch.zeros(self.world, dtype=torch.float64)
        per_worker[rank] = self.sums[1] / max(seconds, 1e-9)
        bytes_per_step = (comm.bytes["step"] - self.bytes0) / max(1, self.steps)
        wait = comm.wait_s - self.wait0
        packed = torch.cat([torch.tensor(self.sums, dtype=torch.float64), self.assign, per_worker])
        packed = comm.all_reduce(packed, kind="metrics").cpu()
        loss_sum, rows, energy_sum = packed[:3].tolist()
        self.last_sums = [loss_sum, rows, energy_sum]
        steps = max(1, self.steps)
        return {
            "loss": loss_sum / max(1.0, rows),
            "mean_energy": energy_sum / max(1.0, rows),
            "dead_prototypes": int((packed[3 : 3 + self.k] == 0).sum()),
            "rows": int(rows),
            "window_steps": self.steps,
            "rows_per_s_total": rows / max(seconds, 1e-9),
            "rows_per_s_worker": packed[3 + self.k :].tolist(),
            "compute_ms_per_step": 1000 * self.compute_s / steps,
            "allreduce_ms_per_step": 1000 * (self.comm_s - wait) / steps,
            "wait_ms_per_step": 1000 * wait / steps,
            "monitor_ms_per_step": 1000 * self.monitor_s / steps,
            "allreduce_bytes_per_step": int(bytes_per_step),
            # this worker's own share (not reduced): where the rows were trained
            "worker_rows": int(self.sums[1]),
            "window_s": seconds,
        }
