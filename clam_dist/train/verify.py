"""Checks that stop a run loudly: workers holding different parameters, and non-finite
gradients or parameters."""

from __future__ import annotations

from collections.abc import Callable

import torch

from clam_dist.train.comm import Comm, parameter_divergence
from clam_dist.train.step import fingerprint


class TrainingDiverged(FloatingPointError):
    """A step produced a non-finite gradient or parameter; training stops before applying
    it, so every checkpoint already written holds finite values."""


def check_finite(finite: bool, what: str, method: str, step: int, epoch: int) -> None:
    if not finite:
        raise TrainingDiverged(
            f"{method}: non-finite {what} at step {step} (epoch {epoch}); training stopped, "
            "the last checkpoint holds the last finite state (lower optim.lr or model.beta)"
        )


class Verifier:
    """Bit-identical parameters on every worker (one MAX all-reduce of a 64-bit
    fingerprint), else fail loudly with the measured gap; counts the checks passed."""

    def __init__(self, comm: Comm, parameters: Callable[[], torch.Tensor]):
        self.comm, self.parameters = comm, parameters
        self.count = 0

    def check(self, where: str) -> None:
        if not self.comm.distributed:
            # One process: there is nothing to disagree with (the all-reduce is the
            # identity, so the check cannot fail); counted, so metrics stay the same.
            self.count += 1
            return
        fp = self.comm.all_reduce(fingerprint(self.parameters()), "max", kind="verify").cpu()
        if int(fp[0]) != -int(fp[1]):
            gap = parameter_divergence(self.comm, self.parameters())
            raise RuntimeError(
                f"parameters differ across workers {where} (fingerprints disagree; "
                f"largest absolute difference {gap:.3g})"
            )
        self.count += 1
