"""The bare step (jobs/scaling.py's yardstick) runs each method's own update on a run's
data and initialisation, also DCAM's joint phase."""

from __future__ import annotations

import math

import pytest

from clam_dist.commands.make_dataset import write_mixture
from clam_dist.config import load_config
from clam_dist.train.bare_step import bare_step_of_run
from clam_dist.train.config import TrainConfig


@pytest.mark.parametrize("method", ["clam", "kmeans", "attention", "dcam"])
def test_bare_step_rate_of_each_method(tmp_path, method):
    write_mixture(str(tmp_path / "data"), 2000, 8, 4, 8.0, 0, 1000)
    cfg = load_config(
        TrainConfig,
        None,
        [
            f"data.url={tmp_path / 'data'}",
            f"model.method={method}",
            "model.n_clusters=4",
            "optim.batch_size=256",
            "optim.epochs=2",
            "dcam.pretrain_epochs=1",
            "dcam.latent_dim=3",
            f"run.storage_path={tmp_path / 'runs'}",
        ],
    )
    rate = bare_step_of_run(cfg, 2000)
    assert math.isfinite(rate) and rate > 0
