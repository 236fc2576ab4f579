"""A fifth method is one folder plus one registry line (issue 25): ``tests/toy_method``
(its SPEC, objective and hooks: 3 files) registered by name, trained in memory and on a
real Ray cluster with 2 workers, saved, inspected by the registry's rules and assigned,
without a line of clam_dist naming it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from clam_dist import methods
from clam_dist.config import load_config
from clam_dist.data.writer import write_vectors
from clam_dist.datasets.synthetic import make_gaussian_mixture
from clam_dist.metrics import nmi

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def toy_registered():
    """The registry line, for this process and (through the environment Ray's workers
    inherit) for the processes of the Ray cluster below."""
    before = {k: os.environ.get(k) for k in (methods.PLUGINS_ENV, "PYTHONPATH")}
    os.environ[methods.PLUGINS_ENV] = "toy=toy_method"
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), before["PYTHONPATH"]]))
    methods.register("toy", "toy_method")
    try:
        yield
    finally:
        methods.unregister("toy")
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def mixture():
    x, y, _ = make_gaussian_mixture(1_200, 4, 3, separation=8.0, seed=5)
    return x.astype(np.float32), y


def test_a_registered_method_is_known_to_configs_and_the_registry(toy_registered):
    from clam_dist.train.config import TrainConfig

    assert "toy" in methods.names()
    cfg = load_config(TrainConfig, None, ["model.method=toy"])
    assert cfg.optim.lr == methods.get("toy").defaults.lr == 0.05  # the method's default
    with pytest.raises(ValueError, match="built-in"):
        methods._plugins("clam=elsewhere")
    methods.register("broken", "no_such_package_here")
    try:
        with pytest.raises(ValueError, match="'no_such_package_here' does not import"):
            methods.get("broken")
    finally:
        methods.unregister("broken")


def test_the_toy_method_trains_in_memory(toy_registered, mixture):
    x, y = mixture
    est = methods.get("toy").estimator.load()(random_state=0).fit(x)
    assert est.cluster_centers_.shape == (3, 4)
    assert est.loss_history_[-1] < est.loss_history_[0]
    assert nmi(y, est.labels_) > 0.95
    art = est.to_artifact()
    assert art.method == "toy" and art.assignment_rule == "nearest" and art.encoder() is None


def test_the_toy_method_trains_on_ray_and_assigns(toy_registered, mixture, tmp_path):
    import ray

    from clam_dist.artifacts import load_artifact
    from clam_dist.models.predictor import ClusterPredictor
    from clam_dist.train.config import TrainConfig
    from clam_dist.train.trainer import run_training

    x, y = mixture
    write_vectors(str(tmp_path / "data"), x, rows_per_file=300)
    if ray.is_initialized():
        ray.shutdown()
    # A cluster of our own, started after the environment names the toy method.
    ray.init(address="local", num_cpus=2, object_store_memory=256 * 2**20,
             include_dashboard=False, log_to_driver=False, configure_logging=False)  # fmt: skip
    try:
        cfg = load_config(
            TrainConfig,
            None,
            [
                "model.method=toy",
                "model.n_clusters=3",
                f"data.url={tmp_path / 'data'}",
                "data.init_sample=600",
                "optim.epochs=3",
                "optim.batch_size=100",
                "run.num_workers=2",
                "run.name=toy",
                f"run.storage_path={tmp_path / 'runs'}",
                "run.checkpoint_every=0",
            ],
        )
        result = run_training(cfg)
    finally:
        ray.shutdown()
    assert result.metrics["workers"] == 2 and result.metrics["prototype_divergence"] == 0.0
    art = load_artifact(result.artifact_url)
    assert art.method == "toy" and art.steps == 0
    labels = ClusterPredictor.from_artifact(art).predict(x, [])["cluster"]
    assert nmi(y, labels) > 0.9  # 0.918 measured: 3 epochs from k-means on a 600-row sample
