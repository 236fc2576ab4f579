"""Model selection for attention clustering and DCAM (model.method in the tune config):
per-method spaces refused before any work, the trials are the in-memory fits' optimisation,
and a tiny real search per method writes a config the training job accepts."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from clam_dist.config import ConfigError, load_config, to_dict
from clam_dist.datasets.clam_paper import load_clam_paper, standardize
from clam_dist.methods.attention import DEFAULTS as ATTENTION_DEFAULTS
from clam_dist.methods.attention.model import fit_attention
from clam_dist.methods.attention.trial import AttentionParams, AttentionTrial
from clam_dist.methods.dcam.model import DCAMConfig, EncoderSpec, fit_dcam
from clam_dist.methods.dcam.trial import DCAMParams, DCAMTrial
from clam_dist.models.clam import beta_from_data
from clam_dist.models.seeding import init_prototypes
from clam_dist.tune.command import add_arguments, load_tune_config
from clam_dist.tune.config import TuneJobConfig, TuneSearch
from clam_dist.tune.space import SearchSpaceError, check_search_space
from clam_dist.tune.trial import TrialData


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def _escaped(message: str) -> str:
    return message.replace("[", r"\[").replace("]", r"\]")


@pytest.mark.parametrize(
    "method, override, message",
    [
        ("attention", "search.similarity=[]", "search.similarity is empty"),
        ("attention", 'search.similarity=["cosine"]', "search.similarity: 'cosine' is not one of"),
        ("attention", "search.lr=[0.1,0.001]", "search.lr is inverted: low 0.1 > high 0.001"),
        ("attention", "search.beta_scale=[0,2]", "search.beta_scale: low must be > 0.0"),
        ("attention", "search.mask_ratio=[0.1,0.3]",
         "search.mask_ratio does not apply to model.method=attention"),
        ("attention", "model.metric=spherical",
         "model.metric='spherical' does not apply to model.method=attention"),
        ("dcam", "search.recon_weight=[2,0.5]", "search.recon_weight is inverted: low 2.0 > high 0.5"),
        ("dcam", "search.recon_weight=[0,1]", "search.recon_weight: low must be > 0.0"),
        ("dcam", "search.recon_weight=[]", "search.recon_weight is empty"),
        ("dcam", "search.alpha=[0.5,1.5]", "search.alpha: high must be <= 1.0"),
        ("dcam", "search.mask_ratio=[0.2,1.0]", "search.mask_ratio: high must be < 1.0"),
        ("dcam", "search.similarity=dot", "search.similarity does not apply to model.method=dcam"),
        ("dcam", "dcam.latent_dim=0", "dcam.latent_dim must be >= 1"),
        # ecoli has 7 features: no image shape fits the conv encoder (known without reading)
        ("dcam", "dcam.encoder=conv", "dcam: cannot infer an image shape from 7 features"),
        ("clam", "search.recon_weight=[1,2]", "search.recon_weight does not apply to model.method=clam"),
    ],
)  # fmt: skip
def test_bad_space_for_the_method_is_refused_before_any_work(method, override, message):
    with pytest.raises(ConfigError, match=_escaped(message)):
        load_tune_config(
            _args("--dataset", "ecoli", "--set", f"model.method={method}", "--set", override)
        )


@pytest.mark.parametrize(
    "method, search",
    [
        ("attention", TuneSearch(beta_scale=[1, 1], lr=[0.01, 0.01], similarity=["dot", "dot"])),
        ("dcam", TuneSearch(beta_scale=[1, 1], lr=[0.01, 0.01], mask_ratio=[0.2, 0.2],
                            alpha=[0.1, 0.1], recon_weight=[2, 2])),
    ],
)  # fmt: skip
def test_a_space_with_every_knob_of_the_method_fixed_is_empty(method, search):
    with pytest.raises(SearchSpaceError, match=f"every parameter of {method} is fixed"):
        check_search_space(search, method)


@pytest.mark.parametrize("method", ["attention", "dcam"])
def test_tune_command_exit_code_2_on_a_bad_space_per_method(method, capsys):
    from clam_dist.cli import run_logged
    from clam_dist.tune.command import run

    override = "search.lr=[0.05,0.005]"
    args = _args("--dataset", "ecoli", "--set", f"model.method={method}", "--set", override)
    assert run_logged("tune", lambda: run(args)) == 2  # as `clam-dist tune` runs it
    assert "config error: search.lr is inverted: low 0.05 > high 0.005" in capsys.readouterr().err


def _zoo() -> tuple[np.ndarray, TrialData]:
    x, _ = load_clam_paper("zoo")
    x = standardize(x).astype(np.float32)
    return x, TrialData(train=x, score_rows=x, holdout=x[:0])  # rows in file order


def test_attention_trial_is_fit_attention_from_the_training_jobs_init():
    x, data = _zoo()
    xt = torch.from_numpy(x)
    gen = torch.Generator().manual_seed(3)
    mu0 = init_prototypes(xt, 7, "kmeans", gen)  # k-means++ then Lloyd, as the trainer
    beta = beta_from_data(xt, mu0)
    ref = fit_attention(xt, mu0, 2.0 * beta, "dot", 0.01, 3, 32, gen)
    trial = AttentionTrial(
        data, AttentionParams(n_clusters=7, beta_scale=2.0, similarity="dot", lr=0.01, seed=3)
    )
    losses = [trial.step()["train_loss"] for _ in range(3)]
    assert trial.beta == pytest.approx(2.0 * beta, rel=1e-6)
    np.testing.assert_allclose(losses, ref.loss_history, rtol=1e-5)
    np.testing.assert_allclose(trial.best.numpy(), ref.mu.numpy(), rtol=1e-5, atol=1e-6)
    assert "heldout_loss" not in trial.evaluate()


def test_dcam_trial_is_fit_dcam_pretraining_then_joint_epochs():
    x, data = _zoo()
    cfg = DCAMConfig(spec=EncoderSpec("mlp", 16, 10), n_clusters=7, pretrain_epochs=2, epochs=3,
                     batch_size=32, lr=0.01, seed=3)  # fmt: skip
    ref = fit_dcam(torch.from_numpy(x), cfg)
    # hidden=None: the training job's default MLP, which is the EncoderSpec default too
    trial = DCAMTrial(data, DCAMParams(n_clusters=7, pretrain_epochs=2, lr=0.01, seed=3))
    np.testing.assert_allclose(trial.pretrain_history, ref.pretrain_history, rtol=1e-5)
    metrics = [trial.step() for _ in range(3)]
    assert trial.beta == pytest.approx(ref.beta, rel=1e-5)
    np.testing.assert_allclose(trial.am_history, [h["am"] for h in ref.history], rtol=1e-4)
    assert metrics[-1]["selected_epoch"] == ref.best_epoch
    # input-space Silhouette is the criterion; the latent one is reported beside it
    assert -1 <= metrics[-1]["silhouette"] <= 1 and -1 <= metrics[-1]["silhouette_latent"] <= 1


def test_a_final_run_that_diverges_scores_the_worst_value_instead_of_failing():
    from clam_dist.tune.search import final_run

    x, data = _zoo()
    config = load_config(TuneJobConfig, None, ["model.method=attention", "data.dataset=zoo",
                                                "budget.max_epochs=2"])  # fmt: skip
    point = {"beta_scale": 1.0, "lr": 1e30, "similarity": "distance"}
    out = final_run(to_dict(config), data, x, 7, point, seed=1)
    assert out["silhouette"] == -1.0 and out["n_nonempty"] == 0 and "diverged" in out


def _tiny_search(tmp_path, method: str, *overrides: str) -> dict:
    from clam_dist.tune.search import run_tune

    config = load_config(
        TuneJobConfig,
        None,
        [
            f"model.method={method}",
            "data.dataset=zoo",
            "budget.num_samples=2",
            "budget.max_epochs=2",
            "budget.grace_period=1",
            "budget.reduction_factor=2",
            "score.finalists=1",
            "score.final_seeds=2",
            "score.confirm_seeds=2",
            f"run.storage_path={tmp_path / 'tune'}",
            f"run.output={tmp_path / 'out' / 'best.toml'}",
            *overrides,
        ],
    )
    return run_tune(config)


def _check_protocol(summary: dict, tmp_path) -> dict:
    """The ClAM path's selection protocol, whatever the method; returns the chosen
    record on the selection seeds (what was chosen on, and what is written)."""
    assert len(summary["trials"]) == 3 and sum(r["is_default"] for r in summary["trials"]) == 1
    fin = summary["final"]
    assert fin["select_seeds"] == [1, 2] and fin["confirm_seeds"] == [3, 4]
    for rec in (fin["search_best"], fin["default"]):
        assert [r["seed"] for r in rec["per_seed"]] == [3, 4]
    gain = fin["search_best"]["silhouette"] - fin["default"]["silhouette"]
    assert fin["search_best"]["gain_vs_default"] == pytest.approx(gain)
    # chosen on the selection seeds; the confirmation seeds only report the choice
    choice = fin["choice"]
    assert choice["seeds"] == [1, 2] and summary["chosen_on"] == "select_seeds"
    assert [r["seed"] for r in choice["search_best"]["per_seed"]] == [1, 2]
    select_gain = choice["search_best"]["silhouette"] - fin["default_select"]["silhouette"]
    assert summary["chosen"] == choice["chosen"] == ("search" if select_gain >= 0 else "default")
    chosen = choice["search_best"] if summary["chosen"] == "search" else fin["default_select"]
    assert chosen["silhouette"] >= fin["default_select"]["silhouette"]
    confirmed = fin["search_best"] if summary["chosen"] == "search" else fin["default"]
    conf = fin["confirmation"]
    assert conf["seeds"] == [3, 4] and conf["chosen"] == confirmed["silhouette"]
    assert conf["default"] == fin["default"]["silhouette"]
    assert summary["confirmed"] == conf["holds"] == (conf["chosen"] >= conf["default"])
    on_disk = json.loads((tmp_path / "out" / "tune_summary.json").read_text())
    assert on_disk["method"] == summary["method"]
    return chosen


def test_tiny_attention_search_writes_a_config_the_training_job_accepts(ray_local, tmp_path):
    from clam_dist.train.config import TrainConfig
    from clam_dist.train.trainer import check_method_config

    summary = _tiny_search(tmp_path, "attention")
    points = [r["point"] for r in summary["trials"]]
    assert all(set(p) == {"beta_scale", "lr", "similarity"} for p in points)
    default = {"beta_scale": 1.0, "lr": ATTENTION_DEFAULTS.lr, "similarity": "distance"}
    assert default in points  # the training job's default point (methods/attention: 0.05)
    chosen = _check_protocol(summary, tmp_path)
    train = load_config(TrainConfig, tmp_path / "out" / "best.toml")
    check_method_config(train, 16)  # the trainer's own checks before any work
    assert train.model.method == "attention" and train.model.n_clusters == 7
    assert train.attention.similarity == chosen["point"]["similarity"]
    assert train.model.beta == pytest.approx(chosen["beta"])
    assert train.optim.lr == pytest.approx(chosen["point"]["lr"]) and train.optim.epochs == 2


def test_tiny_dcam_search_writes_a_config_the_training_job_accepts(ray_local, tmp_path):
    from clam_dist.train.config import TrainConfig
    from clam_dist.train.trainer import check_method_config

    summary = _tiny_search(
        tmp_path, "dcam", "dcam.latent_dim=4", "dcam.hidden=[16]", "dcam.pretrain_epochs=2"
    )
    chosen = _check_protocol(summary, tmp_path)
    assert chosen["silhouette_latent"] is not None  # reported, not the criterion
    point = chosen["point"]
    assert set(point) == {"beta_scale", "lr", "mask_ratio", "alpha", "recon_weight"}
    train = load_config(TrainConfig, tmp_path / "out" / "best.toml")
    check_method_config(train, 16)  # the encoder fits the data, phases are valid
    assert train.model.method == "dcam" and train.model.n_clusters == 7
    assert (train.dcam.latent_dim, train.dcam.hidden, train.dcam.pretrain_epochs) == (4, [16], 2)
    # optim.epochs counts JOINT epochs in the training job, as budget.max_epochs in trials
    assert train.optim.epochs == 2 and train.optim.lr == pytest.approx(point["lr"])
    assert train.dcam.recon_weight == pytest.approx(point["recon_weight"])
    assert train.model.mask_ratio == pytest.approx(point["mask_ratio"])
    assert train.model.alpha == pytest.approx(point["alpha"])
    assert train.model.steps == max(1, round(1 / point["alpha"]))
    # scale 1: the training job derives beta from its own latents (what was scored)
    if point["beta_scale"] == 1.0:
        assert train.model.beta is None
    else:
        assert train.model.beta == pytest.approx(chosen["beta"])
