"""Reduce-on-plateau compares like with like: the epoch losses of shared-mask epochs are
on another scale than those of per-row-mask epochs (issue 15 review list)."""

from __future__ import annotations

import torch

from clam_dist.config import load_config
from clam_dist.methods.clam.objective import ClAMObjective
from clam_dist.train.config import TrainConfig
from clam_dist.train.gradient_update import GradientUpdate
from clam_dist.train.step import shared_mask_epoch


def _update(*overrides: str) -> GradientUpdate:
    cfg = load_config(
        TrainConfig,
        None,
        ["optim.lr=1.0", "optim.plateau_factor=0.5", "optim.plateau_patience=2", *overrides],
    )
    init = {"prototypes": torch.eye(3, 4).tolist(), "beta": 1.0, "fill": [0.0] * 4}
    return GradientUpdate(cfg, ClAMObjective(cfg, init, torch.device("cpu")), 10)


def _lrs(update: GradientUpdate, losses: list[float]) -> list[float]:
    out = []
    for epoch, loss in enumerate(losses):
        update.apply_epoch(epoch, loss)
        out.append(update.lr())
    return out


def test_shared_mask_epochs_are_every_kth_counted_from_one():
    assert [e for e in range(9) if shared_mask_epoch(e, 3)] == [2, 5, 8]
    assert not any(shared_mask_epoch(e, 0) for e in range(9))


def test_plateau_ignores_shared_mask_epochs_when_per_row_epochs_exist():
    # epoch 2 is a shared-mask epoch with a much higher loss: it must not count as a bad
    # epoch (nor could a lower one become the best the per-row epochs are measured by)
    losses = [1.0, 1.0, 5.0, 1.0, 1.0]
    assert _lrs(_update("model.shared_every=3"), losses) == [1.0, 1.0, 1.0, 1.0, 0.5]
    # a shared epoch with a tiny loss does not become the best either
    losses = [1.0, 1.0, 0.01, 1.0, 1.0]
    assert _lrs(_update("model.shared_every=3"), losses) == [1.0, 1.0, 1.0, 1.0, 0.5]


def test_plateau_sees_every_epoch_when_all_masks_are_alike():
    losses = [1.0, 1.0, 5.0, 1.0, 1.0]
    # no shared epochs: the third bad epoch in a row (epoch 3) reduces the rate
    assert _lrs(_update("model.shared_every=0"), losses) == [1.0, 1.0, 1.0, 0.5, 0.5]
    # every epoch shared: all alike again
    assert _lrs(_update("model.shared_every=1"), losses) == [1.0, 1.0, 1.0, 0.5, 0.5]
    # the unmasked ablation has no masks at all
    unmasked = _update("model.shared_every=3", "model.mask_ratio=0")
    assert _lrs(unmasked, losses) == [1.0, 1.0, 1.0, 0.5, 0.5]
