"""DCAM has ONE training implementation (issue 25 item 2): the in-memory fit (``fit_dcam``,
so the estimator and the Tune trial) runs the training job's Trainer and DCAMObjective in
this process, and trains exactly what a real 1-worker Ray Train run trains on the same
rows written one file per ``row_chunk`` rows with their ids."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clam_dist.artifacts import load_artifact
from clam_dist.config import load_config
from clam_dist.data.writer import write_vectors
from clam_dist.datasets.synthetic import make_gaussian_mixture
from clam_dist.methods.dcam.model import DCAMConfig, EncoderSpec, encoder_tensors, fit_dcam
from clam_dist.models.clam import MaskSpec
from clam_dist.train.config import TrainConfig
from clam_dist.train.memory_batches import row_chunk_for

pytestmark = pytest.mark.ray
N, D, K, LATENT = 120, 5, 3, 3


def test_fit_dcam_trains_what_a_one_worker_ray_run_trains(tmp_path, ray_local):
    from clam_dist.train.sources import init_sample
    from clam_dist.train.trainer import run_training

    x, _, _ = make_gaussian_mixture(N, D, K, separation=6.0, seed=11)
    x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)  # both sides train on these values
    ids = np.arange(N, dtype=np.int64)
    write_vectors(str(tmp_path / "data"), x, ids=ids, rows_per_file=row_chunk_for(N))
    cfg = load_config(
        TrainConfig,
        None,
        [
            f"data.url={tmp_path / 'data'}",
            "data.id_column=id",
            "data.standardize=false",
            f"data.init_sample={N}",  # every row: the in-memory fit's joint-start rows
            "data.lanes=1",
            "model.method=dcam",
            f"model.n_clusters={K}",
            "model.mask_ratio=0.34",
            "model.steps=5",
            "model.alpha=0.2",
            "optim.lr=0.02",
            "optim.batch_size=40",
            "optim.epochs=1",
            "optim.schedule=plateau",
            f"dcam.latent_dim={LATENT}",
            "dcam.hidden=16",
            "dcam.pretrain_epochs=1",
            "run.num_workers=1",
            "run.seed=7",
            f"run.storage_path={tmp_path / 'runs'}",
            "run.name=dcam-one",
        ],
    )
    # The driver's sample holds every row, but in its own (random-key) order, and
    # k-means++ on the pretrained latents draws seeds by position: the in-memory fit is
    # given the same rows in the same order (by default it uses x as it is).
    sample = init_sample(cfg)
    assert sorted(sample.ids.tolist()) == ids.tolist()
    ray_run = load_artifact(run_training(cfg).artifact_url)

    config = DCAMConfig(
        spec=EncoderSpec("mlp", D, latent_dim=LATENT, hidden=(16,)),
        n_clusters=K,
        alpha=0.2,
        steps=5,
        mask=MaskSpec(ratio=0.34, fill="mean", shared_every=3),
        pretrain_epochs=1,
        epochs=1,
        batch_size=40,
        lr=0.02,
        seed=7,
    )
    fit = fit_dcam(torch.from_numpy(x), config, sample=sample.x)
    assert ray_run.meta["selected_joint_epoch"] == fit.best_epoch
    assert ray_run.beta == pytest.approx(fit.beta, rel=1e-5)
    assert ray_run.meta["recon_pretrained"] == pytest.approx(fit.recon_pretrained, rel=1e-4)
    np.testing.assert_allclose(
        ray_run.prototypes, fit.model.prototypes.detach().numpy(), rtol=1e-4, atol=1e-4
    )
    mine = encoder_tensors(fit.model)
    assert set(mine) == {n for n in ray_run.tensors if n.startswith("encoder.")}
    for name, value in mine.items():
        np.testing.assert_allclose(ray_run.tensors[name], value, rtol=1e-4, atol=1e-4)
