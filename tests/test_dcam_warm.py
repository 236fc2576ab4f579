"""DCAM's warm refresh (issue 27): ``Hooks.warm_fit`` trains the joint phase from the
parent's autoencoder and the given latent prototypes (no pretraining, no k-means) on the
in-process Trainer; a parent without decoder weights (a cold fit's artifact carries the
encoder only) first gets its decoder refitted with the encoder and prototypes frozen."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from clam_dist import methods
from clam_dist.artifacts import load_artifact, save_artifact
from clam_dist.config import load_config
from clam_dist.datasets.synthetic import make_gaussian_mixture
from clam_dist.methods.dcam.model import EncoderSpec, build_encoder
from clam_dist.methods.dcam.objective import DCAMObjective, decoder_tensors
from clam_dist.models.predictor import ClusterPredictor
from clam_dist.registry.config import PartitionConfig
from clam_dist.registry.refresh import _challenger
from clam_dist.train.in_process import InProcessSide, fit_config, memory_init

N, D, K, LATENT, SEED = 1200, 16, 4, 4, 5
OVERRIDES = [
    "model.method=dcam",
    f"model.n_clusters={K}",
    "model.steps=5",
    f"dcam.latent_dim={LATENT}",
    "dcam.hidden=[16,8]",
    "dcam.pretrain_epochs=4",
    "optim.epochs=3",
    "optim.batch_size=100",
    "optim.lr=0.003",
    f"seed={SEED}",
]
HOOKS = methods.get("dcam").load_hooks()


def config(*extra: str) -> PartitionConfig:
    return load_config(PartitionConfig, None, [*OVERRIDES, *extra])


@pytest.fixture(scope="module")
def cold():
    """A cold DCAM fit as the pipeline's sample trainer makes it, the Trainer's reports of
    that fit, and its artifact with and without the decoder weights."""
    x, _, _ = make_gaussian_mixture(N, D, K, separation=6.0, seed=3)
    mean, scale = x.mean(0).astype(np.float64), x.std(0).astype(np.float64)
    z = ((x - mean) / scale).astype(np.float32)
    reports: list[dict] = []
    report = InProcessSide.report

    def recording(self, metrics, save_checkpoint):
        reports.append(metrics)
        report(self, metrics, save_checkpoint)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(InProcessSide, "report", recording)
        est = HOOKS.fit_on_sample(config(), z)
    artifact = est.to_artifact(
        scaler_mean=mean, scaler_scale=scale, meta=dict(HOOKS.estimator_history(est))
    )
    full = copy.deepcopy(artifact)  # a warm lineage's parent: its decoder rides along
    full.tensors.update(decoder_tensors(est.model_))
    return SimpleNamespace(x=x, z=z, est=est, artifact=artifact, full=full, reports=reports)


def close(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max())


@pytest.mark.parametrize("decoder", ["parent", "refit"])
def test_warm_fit_starts_from_the_parents_weights(cold, decoder):
    parent = cold.full if decoder == "parent" else cold.artifact
    fit = HOOKS.warm_fit(
        config("optim.lr=1e-7", "optim.epochs=1"), cold.z, parent, parent.prototypes, SEED
    )
    assert fit.prototypes.shape == (K, LATENT)
    assert close(fit.prototypes, parent.prototypes) < 1e-4
    for name, value in parent.tensors.items():  # the encoder (and decoder) as loaded
        assert close(fit.fields["tensors"][name], value) < 1e-4, name
    # ... not a freshly initialised encoder, which is far from the parent's
    fresh = build_encoder(EncoderSpec.from_json(parent.meta["encoder"])).state_dict()
    assert max(close(t, parent.tensors[f"encoder.{n}"]) for n, t in fresh.items()) > 0.1
    assert fit.fields["beta"] == pytest.approx(parent.beta)
    assert fit.fields["meta"]["warm_start"]["decoder"] == decoder
    assert {n for n in fit.fields["tensors"] if n.startswith("decoder.")}  # carried on
    epochs = 1 + (0 if decoder == "parent" else config().dcam.pretrain_epochs)
    assert fit.steps == epochs * (N // 100) and fit.losses[-1][0] == fit.steps


def test_warm_fit_continues_where_the_parent_ended_and_repeats(cold):
    fit = HOOKS.warm_fit(config(), cold.z, cold.full, cold.full.prototypes, SEED)
    losses = [loss for _, loss in fit.losses]
    # Where the parent ended: below the cold run's first joint window, and no worse after.
    joint = [r["loss"] for r in cold.reports if r.get("phase") == "joint"]
    assert losses[0] <= joint[0]
    assert max(losses) <= losses[0] * 1.02
    again = HOOKS.warm_fit(config(), cold.z, cold.full, cold.full.prototypes, SEED)
    np.testing.assert_array_equal(again.prototypes, fit.prototypes)
    assert again.losses == fit.losses


def test_a_new_prototype_trains_and_the_challenger_predicts(cold, tmp_path):
    parent = cold.artifact  # a cold fit's: the decoder is refitted first
    start = np.vstack([parent.prototypes, parent.prototypes.mean(0, keepdims=True)])
    fit = HOOKS.warm_fit(config("optim.epochs=1"), cold.z, parent, start, SEED)
    assert fit.prototypes.shape == (K + 1, LATENT)
    challenger = load_artifact(save_artifact(_challenger(parent, fit), str(tmp_path / "c")))
    assert challenger.k == K + 1 and challenger.meta["train_steps"] == fit.steps
    labels = ClusterPredictor.from_artifact(challenger).predict(cold.x)["cluster"]
    assert labels.shape == (N,) and set(np.unique(labels)) <= set(range(K + 1))
    # The challenger carries its decoder: its own refresh starts fully warm.
    again = HOOKS.warm_fit(
        config("optim.epochs=1"), cold.z, challenger, challenger.prototypes, SEED
    )
    assert again.fields["meta"]["warm_start"]["decoder"] == "parent"
    assert again.steps == N // 100


def test_the_decoder_refit_trains_the_decoder_only(cold):
    cfg = fit_config(
        "dcam",
        SEED,
        {
            "model": {"n_clusters": K},
            "dcam": {"latent_dim": LATENT, "hidden": [16, 8], "pretrain_epochs": 2},
        },
    )
    init = memory_init(
        cold.artifact.prototypes, cold.artifact.beta, N, fill=np.zeros(D, np.float32)
    )
    cold_objective = DCAMObjective(cfg, init, torch.device("cpu"), cold.z)
    init["autoencoder"] = dict(cold.artifact.tensors)
    warm = DCAMObjective(cfg, init, torch.device("cpu"), cold.z)
    assert warm.warm and warm.decoder_refit
    names = {id(p): n for n, p in warm.module.named_parameters()}
    assert {names[id(p)].split(".")[1] for p in warm.trainable()} == {"decoder"}
    assert len(cold_objective.trainable()) == len(warm.trainable()) + len(
        list(warm.module.encoder.parameters())
    )
    # Weights that do not fit the architecture are refused, naming them.
    init["autoencoder"] = {n: v for n, v in cold.artifact.tensors.items() if n != "encoder.0.bias"}
    with pytest.raises(ValueError, match="missing \\['encoder.0.bias'\\]"):
        DCAMObjective(cfg, init, torch.device("cpu"), cold.z)
    init["autoencoder"] = dict(cold.full.tensors, **{"decoder.0.weight": np.zeros((3, 3))})
    with pytest.raises(ValueError, match="decoder.0.weight has shape"):
        DCAMObjective(cfg, init, torch.device("cpu"), cold.z)
