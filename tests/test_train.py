"""Distributed training: step math without Ray (fast), then few real Ray Train fits:
1 vs 2 workers agree, prototypes identical across workers, a killed worker resumes from
a checkpoint on the local S3 server and ends where the uninterrupted run ends."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clam_dist.artifacts import load_artifact
from clam_dist.config import load_config
from clam_dist.data.writer import write_vectors
from clam_dist.datasets.synthetic import make_gaussian_mixture
from clam_dist.metrics import silhouette
from clam_dist.models.predictor import ClusterPredictor
from clam_dist.train.config import TrainConfig
from clam_dist.train.step import row_keys, row_masks, scaled_local_loss

# ------------------------------------------------------------------ without Ray


def test_masks_depend_on_row_not_on_batching():
    ids = np.array([f"part-0.parquet:{i}" for i in range(40)], dtype=object)
    full = row_masks(row_keys(ids), 10, 0.3, epoch=2, seed=1)
    halves = torch.cat(
        [row_masks(row_keys(ids[:17]), 10, 0.3, 2, 1), row_masks(row_keys(ids[17:]), 10, 0.3, 2, 1)]
    )
    assert torch.equal(full, halves)
    assert (full.sum(1) == 3).all()
    assert not torch.equal(full, row_masks(row_keys(ids), 10, 0.3, epoch=3, seed=1))


def test_sharded_scaled_gradients_average_to_the_full_batch_gradient():
    g = torch.Generator().manual_seed(0)
    x, protos0 = (
        torch.randn(30, 5, generator=g, dtype=torch.float64),
        torch.randn(4, 5, generator=g, dtype=torch.float64),
    )
    mask = row_masks(np.arange(30), 5, 0.4, 0, 0).double()
    fill = x.mean(0)

    def grad(rows, world):
        p = protos0.clone().requires_grad_()
        scaled_local_loss(
            p, x[rows], mask[rows], fill, 0.7, 0.2, 5, "euclidean", world, 30
        ).backward()
        return p.grad

    full = grad(slice(0, 30), 1)
    shards = [grad(slice(0, 11), 3), grad(slice(11, 25), 3), grad(slice(25, 30), 3)]
    torch.testing.assert_close(sum(shards) / 3, full)  # DDP-style average of worker grads


# ------------------------------------------------------------------ with Ray Train


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, ray_local):
    x, y, _ = make_gaussian_mixture(2_400, 6, 4, separation=7.0, seed=3)
    root = tmp_path_factory.mktemp("train")
    write_vectors(str(root / "data"), x, labels=y, rows_per_file=300)
    return root, x


def config(root, *extra):
    return load_config(
        TrainConfig,
        None,
        [
            f"data.url={root / 'data'}",
            "model.n_clusters=4",
            "optim.batch_size=0",  # full shard per step: the global batch is every row
            "optim.epochs=4",
            "optim.lr=0.05",
            "run.checkpoint_every=1",
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def two_worker_run(dataset):
    from clam_dist.train.trainer import run_training

    root, _ = dataset
    return run_training(
        config(root, f"run.storage_path={root / 'runs'}", "run.name=two", "run.num_workers=2")
    )


@pytest.mark.ray
def test_one_and_two_workers_give_the_same_prototypes(dataset, two_worker_run):
    from clam_dist.train.trainer import run_training

    root, _ = dataset
    one = run_training(
        config(root, f"run.storage_path={root / 'runs'}", "run.name=one", "run.num_workers=1")
    )
    p1 = load_artifact(one.artifact_url).prototypes
    p2 = load_artifact(two_worker_run.artifact_url).prototypes
    assert not np.allclose(p1, 0)
    np.testing.assert_allclose(p1, p2, rtol=1e-4, atol=1e-5)
    # prototypes are asserted identical on every worker after every epoch (inside the loop)
    assert two_worker_run.metrics["prototype_divergence"] == 0.0
    assert two_worker_run.metrics["workers"] == 2 and two_worker_run.metrics["dead_prototypes"] == 0


@pytest.mark.ray
def test_killed_worker_resumes_from_s3_checkpoint_and_matches(dataset, two_worker_run, s3_server):
    from clam_dist.train.trainer import run_training

    root, x = dataset
    cfg = config(
        root,
        f"run.storage_path={s3_server.url('train-runs')}",
        "run.name=killed",
        "run.num_workers=2",
        "run.fail_at_epoch=2",
        "run.max_failures=1",
    )
    cfg.data.storage_options = s3_server.storage_options
    res = run_training(cfg)
    opts = s3_server.storage_options
    import s3fs

    fs = s3fs.S3FileSystem(**opts)
    assert fs.exists(f"{s3_server.bucket}/train-runs/killed/_failure_injected")  # it really died
    resumed = load_artifact(res.artifact_url, opts)
    clean = load_artifact(two_worker_run.artifact_url)
    labels_r = ClusterPredictor.from_artifact(resumed).predict(x)["cluster"]
    labels_c = ClusterPredictor.from_artifact(clean).predict(x)["cluster"]
    s_r, s_c = silhouette(x, labels_r), silhouette(x, labels_c)
    assert abs(s_r - s_c) <= 0.01 * abs(s_c)
    np.testing.assert_allclose(resumed.prototypes, clean.prototypes, rtol=1e-4, atol=1e-5)


@pytest.mark.ray
def test_bad_runs_fail_fast_with_numbers(dataset, tmp_path):
    from clam_dist.train.trainer import check_checkpoint_shape, run_training

    root, _ = dataset
    with pytest.raises(ValueError, match=r"needs 8 CPUs; the Ray cluster has 2"):
        run_training(config(root, "run.num_workers=8", f"run.storage_path={tmp_path}"))
    with pytest.raises(
        ValueError, match=r"n_clusters=500 is larger than the initialisation sample \(200 rows\)"
    ):
        run_training(
            config(
                root, "model.n_clusters=500", "data.init_sample=200", f"run.storage_path={tmp_path}"
            )
        )
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")  # unwritable even for root: a path under a file
    with pytest.raises(PermissionError, match="not writable"):
        run_training(config(root, f"run.storage_path={blocker}/runs"))
    from ray.train import Checkpoint

    ckpt_dir = next((root / "runs" / "two").glob("checkpoint_*"))
    with pytest.raises(ValueError, match=r"resume checkpoint has k=4, d=6; this run has k=5, d=6"):
        check_checkpoint_shape(Checkpoint(str(ckpt_dir)), 5, 6)
