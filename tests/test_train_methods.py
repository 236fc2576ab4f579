"""Attention clustering and DCAM on the distributed trainer (real local Ray, TorchTrainer,
gloo): the model is chosen by config (model.method), 2 workers with batch B/2 train what 1
worker with batch B trains, a worker killed in DCAM's joint phase resumes from its
checkpoint and ends where the uninterrupted run ends, and the artifacts are what the Ray
Data assignment pipeline loads. Four fits of ~20 s each share one Ray instance."""

from __future__ import annotations

import numpy as np
import pytest

from clam_dist.artifacts import load_artifact
from clam_dist.config import load_config
from clam_dist.data.writer import write_vectors
from clam_dist.datasets.synthetic import make_gaussian_mixture
from clam_dist.metrics import nmi
from clam_dist.models.predictor import ClusterPredictor
from clam_dist.train import checkpoint as ckpt
from clam_dist.train.config import TrainConfig

pytestmark = pytest.mark.ray
K, D = 4, 6


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, ray_local):
    x, y, centres = make_gaussian_mixture(2_400, D, K, separation=7.0, seed=5)
    root = tmp_path_factory.mktemp("methods")
    write_vectors(str(root / "data"), x, labels=y, rows_per_file=300)
    return root, x, y, centres


def config(root, name: str, *extra: str) -> TrainConfig:
    return load_config(
        TrainConfig,
        None,
        [
            f"data.url={root / 'data'}",
            "data.lanes=2",
            f"model.n_clusters={K}",
            "model.init=kmeans++",
            "optim.lr=0.02",
            "optim.batch_size=100",
            "optim.schedule=constant",
            "run.num_workers=2",
            "run.report_every=12",
            f"run.storage_path={root / 'runs'}",
            f"run.name={name}",
            *extra,
        ],
    )


def _nearest_centre_distance(heads: np.ndarray, centres: np.ndarray) -> float:
    """Largest distance from a true centre to its nearest head (every centre found)."""
    d = np.sqrt(((centres[:, None, :] - heads[None, :, :]) ** 2).sum(-1))
    return float(d.min(1).max())


def _oracle_nmi(x: np.ndarray, y: np.ndarray, centres: np.ndarray) -> float:
    """NMI of the nearest-true-centre labels: the best any method can do (the mixture
    components overlap a little)."""
    return nmi(y, np.sqrt(((x[:, None] - centres[None]) ** 2).sum(-1)).argmin(1))


def test_attention_heads_find_the_centres_and_workers_agree(dataset):
    from clam_dist.train.sources import initialise
    from clam_dist.train.trainer import run_training

    root, x, y, centres = dataset
    common = ("model.method=attention", "optim.epochs=10", "optim.lr=0.05")
    cfg = config(root, "att-two", *common)
    init = initialise(cfg)  # the heads training starts from (k-means++ seeds, deterministic)
    heads0 = np.asarray(init["prototypes"]) * np.asarray(init["scale"]) + np.asarray(init["mean"])
    two = run_training(cfg)
    one = run_training(
        config(root, "att-one", *common, "run.num_workers=1", "optim.batch_size=200")
    )
    a2, a1 = load_artifact(two.artifact_url), load_artifact(one.artifact_url)
    assert a2.method == "attention" and a2.meta["score"] == "distance"
    assert a2.meta["energy_p99"] > 0 and a2.meta["energy_p99_sample"] == 2_400  # drift threshold
    np.testing.assert_allclose(a1.prototypes, a2.prototypes, rtol=1e-4, atol=1e-5)
    # heads live in the standardised space: map them back to compare with the true centres
    heads = a2.prototypes * a2.scaler_scale + a2.scaler_mean
    spread = float(np.sqrt(((centres[:, None] - centres[None]) ** 2).sum(-1)).max())
    start, end = _nearest_centre_distance(heads0, centres), _nearest_centre_distance(heads, centres)
    assert end < 0.05 * spread < start  # training moved every head onto a true centre
    losses = [h["epoch_loss"] for h in two.history if "epoch_loss" in h]
    assert len(losses) == 10 and losses[-1] < losses[0]
    labels = ClusterPredictor.from_artifact(a2).predict(x)["cluster"]
    assert nmi(y, labels) > 0.95 * _oracle_nmi(x, y, centres)
    assert two.metrics["workers"] == 2 and two.metrics["prototype_divergence"] == 0.0
    # the training metrics are TensorBoard scalars beside the checkpoints
    events = list((root / "runs" / "att-two" / "tensorboard").glob("events.out.tfevents.*"))
    assert events and all(tag in events[0].read_bytes() for tag in (b"train/loss", b"train/lr"))


def test_dcam_joint_phase_resume_and_one_vs_two_workers(dataset, s3_server):
    """2 workers, one killed in the JOINT phase (after the k-means on the pretrained
    latents), resumed from its checkpoint on the local S3 server, against 1 worker with
    the whole batch and no failure: same latent prototypes, same encoder, same labels."""
    import s3fs

    from clam_dist.train.trainer import run_training

    root, x, y, centres = dataset
    common = (
        "model.method=dcam",
        "model.mask_ratio=0.34",
        "model.steps=5",
        "model.alpha=0.2",
        "dcam.latent_dim=3",
        "dcam.hidden=16",
        "dcam.pretrain_epochs=4",
        "data.init_sample=600",
        "optim.epochs=2",
        "optim.lr=0.02",
        "run.checkpoint_every_steps=10",
    )
    # 12 steps per epoch: pretraining is steps 0-47, the joint phase starts at step 48
    cfg = config(
        root,
        "dcam-killed",
        *common,
        f"run.storage_path={s3_server.url('dcam-runs')}",
        "run.fail_at_step=53",  # last checkpoint before it: step 50, in the joint phase
    )
    cfg.data.storage_options = s3_server.storage_options
    killed = run_training(cfg)
    fs = s3fs.S3FileSystem(**s3_server.storage_options)
    marker = f"{s3_server.bucket}/dcam-runs/dcam-killed/_failure_injected"
    assert fs.cat(marker).decode() == "killed at epoch 4, global step 53"
    one = run_training(
        config(root, "dcam-one", *common, "run.num_workers=1", "optim.batch_size=200")
    )
    a2 = load_artifact(killed.artifact_url, s3_server.storage_options)
    a1 = load_artifact(one.artifact_url)
    assert a2.method == "dcam" and a2.d == 3 and a2.meta["encoder"]["latent_dim"] == 3
    np.testing.assert_allclose(a1.prototypes, a2.prototypes, rtol=1e-3, atol=1e-4)
    for name, t in a1.tensors.items():
        np.testing.assert_allclose(t, a2.tensors[name], rtol=1e-3, atol=1e-4)
    assert [h["step"] for h in killed.history] == [h["step"] for h in one.history]
    phases = [h.get("phase") for h in one.history if "epoch_loss" in h]
    assert phases == ["pretrain"] * 4 + ["joint"] * 2
    joint = [h for h in one.history if h.get("phase") == "joint" and "recon_ratio" in h]
    assert joint and all(np.isfinite(h["recon_ratio"]) for h in joint)
    # the selected state keeps reconstruction within 10% of the pretrained loss
    assert a1.meta["recon_ratio"] <= 1.10
    labels_1 = ClusterPredictor.from_artifact(a1).predict(x)["cluster"]
    labels_2 = ClusterPredictor.from_artifact(a2).predict(x)["cluster"]
    assert (labels_1 == labels_2).mean() > 0.99
    assert nmi(y, labels_1) > 0.8 * _oracle_nmi(x, y, centres)


def test_dcam_conv_encoder_on_images_through_the_trainer(dataset):
    """8x8 digit images (flat 64-wide rows) through the convolutional encoder on the
    distributed trainer; the artifact carries the image shape and assigns every row."""
    from sklearn.datasets import load_digits

    from clam_dist.train.trainer import run_training

    root, *_ = dataset
    digits = load_digits()
    x, y = digits.data[:1200].astype(np.float32) / 16.0, digits.target[:1200]
    write_vectors(str(root / "digits"), x, labels=y, rows_per_file=300)
    cfg = config(
        root,
        "dcam-conv",
        f"data.url={root / 'digits'}",
        "model.method=dcam",
        "model.n_clusters=10",
        "dcam.encoder=conv",
        "dcam.hidden=8,16",
        "dcam.pretrain_epochs=6",
        "data.standardize=false",
        "optim.batch_size=50",
        "optim.epochs=1",
        "optim.lr=0.01",
    )
    res = run_training(cfg)
    art = load_artifact(res.artifact_url)
    assert art.meta["encoder"]["kind"] == "conv" and art.meta["encoder"]["image_shape"] == [1, 8, 8]
    labels = ClusterPredictor.from_artifact(art).predict(x)["cluster"]
    assert len(np.unique(labels)) >= 8 and nmi(y, labels) > 0.35  # 0.45 measured; chance ~0


def test_tensorboard_dir_defaults_to_local_runs_only():
    from clam_dist.train.trainer import tensorboard_dir

    cfg = TrainConfig()
    cfg.run.name = "r"
    assert tensorboard_dir(cfg, "/tmp/runs") == "/tmp/runs/r/tensorboard"
    assert tensorboard_dir(cfg, "s3://bucket/runs") is None  # no local path to write to
    cfg.run.tensorboard_dir = ""
    assert tensorboard_dir(cfg, "/tmp/runs") is None


def test_bad_dcam_configs_fail_before_any_work(dataset):
    from clam_dist.train.trainer import run_training

    root, *_ = dataset
    with pytest.raises(ValueError, match=r"6 features.*conv encoder|image shape from 6 features"):
        run_training(config(root, "bad", "model.method=dcam", "dcam.encoder=conv"))
    with pytest.raises(ValueError, match=r"image_shape \(1, 2, 3\).*multiples of 4"):
        run_training(
            config(root, "bad", "model.method=dcam", "dcam.encoder=conv", "dcam.image_shape=1,2,3")
        )
    with pytest.raises(ValueError, match=r"written by model.method='clam'; this run has 'dcam'"):
        ckpt.check_method({"method": "clam"}, "dcam")
