"""Distributed training on a real local Ray (TorchTrainer, gloo, 2 workers): 1 worker with
batch B equals 2 workers with B/2; prototypes verified identical after every step; a worker
killed mid-epoch resumes from a checkpoint on the local S3 server and ends where the
uninterrupted run ends; resume from a given checkpoint; distributed Lloyd k-means; bad
runs fail fast. The fits are few and share one Ray instance (about 20 s each)."""

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

pytestmark = pytest.mark.ray
STEPS_PER_EPOCH = 12  # 8 files of 300 rows dealt to 2 lanes; 100 rows per lane per step


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
            "data.lanes=2",
            "model.n_clusters=4",
            "model.init=kmeans++",
            "optim.epochs=2",
            "optim.lr=0.05",
            "optim.batch_size=100",
            "run.num_workers=2",
            "run.checkpoint_every_steps=5",
            "run.report_every=4",
            f"run.storage_path={root / 'runs'}",
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def two_worker_run(dataset):
    from clam_dist.train.trainer import run_training

    root, _ = dataset
    return run_training(config(root, "run.name=two"))


def test_one_worker_batch_b_equals_two_workers_batch_half_b(dataset, two_worker_run):
    from clam_dist.train.trainer import run_training

    root, _ = dataset
    one = run_training(config(root, "run.name=one", "run.num_workers=1", "optim.batch_size=200"))
    p1 = load_artifact(one.artifact_url).prototypes
    p2 = load_artifact(two_worker_run.artifact_url).prototypes
    np.testing.assert_allclose(p1, p2, rtol=1e-4, atol=1e-5)
    m2 = two_worker_run.metrics
    assert m2["step"] == 2 * STEPS_PER_EPOCH and m2["workers"] == 2
    # the fingerprint check ran after EVERY step (and at step 0 and each epoch end)
    assert m2["verified_steps"] == 1 + 2 * STEPS_PER_EPOCH + 2
    assert m2["prototype_divergence"] == 0.0 and m2["dead_prototypes"] == 0
    # ONE buffer per step: the gradient (k x d float32) with the row count as its last float
    assert m2["allreduce_bytes_per_step"] == 4 * 6 * 4 + 4
    assert len(m2["rows_per_s_worker"]) == 2 and min(m2["rows_per_s_worker"]) > 0
    hist = two_worker_run.history
    assert [h["step"] for h in hist][:4] == [4, 5, 8, 10]  # report windows and checkpoints
    assert hist[-1]["loss"] < hist[0]["loss"]  # it trained
    assert [h["step"] for h in one.history] == [h["step"] for h in hist]


def test_killed_worker_resumes_mid_epoch_from_s3_and_matches(dataset, two_worker_run, s3_server):
    import s3fs

    from clam_dist.train.trainer import run_training

    root, x = dataset
    cfg = config(
        root,
        f"run.storage_path={s3_server.url('train-runs')}",
        "run.name=killed",
        "run.fail_at_step=17",  # last checkpoint before it: step 15, 3 steps into epoch 1
        "run.max_failures=1",
    )
    cfg.data.storage_options = s3_server.storage_options
    res = run_training(cfg)
    fs = s3fs.S3FileSystem(**s3_server.storage_options)
    marker = f"{s3_server.bucket}/train-runs/killed/_failure_injected"
    assert fs.cat(marker).decode() == "killed at epoch 1, global step 17"  # it really died
    assert res.checkpoint_path.startswith(s3_server.url("train-runs/killed/checkpoint_"))
    # the report windows of the restarted attempt pick up after the step-15 checkpoint
    assert [h["step"] for h in res.history] == [h["step"] for h in two_worker_run.history]
    resumed = load_artifact(res.artifact_url, s3_server.storage_options)
    clean = load_artifact(two_worker_run.artifact_url)
    np.testing.assert_allclose(resumed.prototypes, clean.prototypes, rtol=1e-4, atol=1e-5)
    labels_r = ClusterPredictor.from_artifact(resumed).predict(x)["cluster"]
    labels_c = ClusterPredictor.from_artifact(clean).predict(x)["cluster"]
    s_r, s_c = silhouette(x, labels_r), silhouette(x, labels_c)
    assert abs(s_r - s_c) <= 0.01 * abs(s_c)


def test_new_run_resumes_from_a_given_checkpoint(dataset, two_worker_run):
    from clam_dist.train.trainer import run_training

    root, _ = dataset
    cfg = config(
        root,
        "run.name=continued",
        "optim.epochs=3",
        # The third epoch would share one mask per batch (model.shared_every=3), and such
        # an epoch's loss is not compared with per-row-mask epochs for the kept epoch:
        # per-row masks here, so the epoch this run adds can become the model.
        "model.shared_every=0",
        f"run.resume_from={two_worker_run.checkpoint_path}",
    )
    res = run_training(cfg)
    assert res.metrics["step"] == 3 * STEPS_PER_EPOCH and res.metrics["epoch"] == 2
    assert res.history[: len(two_worker_run.history)] == two_worker_run.history
    before = load_artifact(two_worker_run.artifact_url)
    after = load_artifact(res.artifact_url)
    assert after.beta == before.beta  # the original run's initialisation is kept
    assert not np.allclose(after.prototypes, before.prototypes)


def test_distributed_lloyd_equals_in_memory_lloyd(dataset):
    from clam_dist.models.kmeans import apply_lloyd, batch_sums_counts
    from clam_dist.train.sources import initialise
    from clam_dist.train.trainer import run_training

    root, x = dataset
    cfg = config(
        root,
        "run.name=lloyd",
        "model.method=kmeans",
        "kmeans.algorithm=lloyd",
        "optim.epochs=3",
        "run.checkpoint_every_steps=0",
    )
    res = run_training(cfg)
    init = initialise(cfg)  # deterministic: the same seeds the run used
    z = torch.from_numpy(
        ((x - np.array(init["mean"])) / np.array(init["scale"])).astype(np.float32)
    )
    centers = torch.tensor(init["prototypes"])
    for _ in range(3):
        sums, counts, _ = batch_sums_counts(z, centers)
        centers = apply_lloyd(centers, sums, counts)
    got = load_artifact(res.artifact_url).prototypes
    np.testing.assert_allclose(got, centers.numpy(), rtol=1e-4, atol=1e-5)
    assert not np.allclose(got, np.array(init["prototypes"]), atol=1e-3)  # it moved
    # ONE buffer per step: per-centre sums and counts (k-means needs no global row count)
    assert res.metrics["allreduce_bytes_per_step"] == 4 * (4 * 6 + 4)


def test_bad_runs_fail_fast_with_numbers(dataset, two_worker_run, tmp_path, s3_server):
    from clam_dist.train.trainer import run_training

    root, _ = dataset
    with pytest.raises(ValueError, match=r"needs 8 CPUs; the Ray cluster has 2"):
        run_training(config(root, "run.num_workers=8", "data.lanes=8"))
    with pytest.raises(ValueError, match=r"run.use_gpu with run.num_workers=2 needs 2 GPUs"):
        run_training(config(root, "run.use_gpu=true"))
    with pytest.raises(
        ValueError, match=r"n_clusters=500 is larger than the initialisation sample \(200 rows\)"
    ):
        run_training(config(root, "model.n_clusters=500", "data.init_sample=200"))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")  # unwritable even for root: a path under a file
    with pytest.raises(PermissionError, match="not writable"):
        run_training(config(root, f"run.storage_path={blocker}/runs"))
    cfg = config(root, "run.storage_path=s3://no-such-bucket/runs")
    cfg.data.storage_options = s3_server.storage_options
    with pytest.raises(PermissionError, match="s3://no-such-bucket/runs is not writable"):
        run_training(cfg)
    with pytest.raises(ValueError, match=r"checkpoint has k=4, d=6; this run has k=5, d=6"):
        run_training(
            config(root, "model.n_clusters=5", f"run.resume_from={two_worker_run.checkpoint_path}")
        )
    # 16 lanes over 8 files is fine (lanes are dealt row ranges), but 81 rows per worker
    # cannot split over each worker's 8 lanes
    with pytest.raises(ValueError, match=r"batch_size=81 rows per worker must split evenly"):
        run_training(config(root, "data.lanes=16", "optim.batch_size=81"))


def test_a_diverging_run_stops_at_the_first_non_finite_step(dataset):
    from safetensors.numpy import load_file

    from clam_dist.errors import summary_line
    from clam_dist.train.trainer import run_training

    root, _ = dataset
    cfg = config(
        root,
        "run.name=diverged",
        "optim.lr=1e30",  # Adam moves every prototype by ~1e30: squared norms overflow
        "optim.schedule=constant",
        "run.checkpoint_every_steps=1",
        "run.max_failures=0",
    )
    with pytest.raises(Exception) as info:
        run_training(cfg)
    line = summary_line(info.value)
    assert "TrainingDiverged: clam: non-finite loss gradient at step 1 (epoch 0)" in line, line
    saved = sorted((root / "runs" / "diverged").rglob("*.safetensors"))
    assert saved  # the step-1 checkpoint exists and holds only finite numbers
    for path in saved:
        assert all(np.isfinite(t).all() for t in load_file(str(path)).values()), path
