"""Model selection with Ray Tune: space validation, the per-epoch trial, and a tiny real
search on a paper data set whose best config the training job's config loader accepts."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from clam_dist.config import ConfigError, load_config
from clam_dist.datasets.clam_paper import load_clam_paper, standardize
from clam_dist.methods.clam.fit import ClAMConfig, fit_clam
from clam_dist.methods.clam.trial import ClAMTrial, TrialParams
from clam_dist.tune.command import add_arguments, load_tune_config
from clam_dist.tune.config import TuneJobConfig, TuneSearch
from clam_dist.tune.space import SearchSpaceError, check_search_space
from clam_dist.tune.trial import TrialData, split_sample


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize(
    "override, message",
    [
        ("search.lr=[0.1,0.001]", "search.lr is inverted: low 0.1 > high 0.001"),
        ("search.beta_scale=[]", "search.beta_scale is empty"),
        ("search.mask_ratio=[0.2,1.0]", "search.mask_ratio: high must be < 1.0"),
        ("search.alpha=[0,0.5]", "search.alpha: low must be > 0.0"),
        ("search.lr=[0.01]", "search.lr must be [low, high]"),
        ("budget.num_samples=0", "budget.num_samples must be >= 1"),
        ("budget.grace_period=99", "budget.grace_period must be in [1, max_epochs=15]"),
    ],
)
def test_bad_search_space_is_refused_before_any_work(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_tune_config(_args("--dataset", "ecoli", "--set", override))


def test_a_space_with_every_parameter_fixed_is_empty():
    fixed = TuneSearch(beta_scale=[1, 1], lr=[0.01, 0.01], mask_ratio=[0.2, 0.2], alpha=[0.1, 0.1])
    with pytest.raises(SearchSpaceError, match="search space is empty"):
        check_search_space(fixed)


def test_data_source_must_be_exactly_one():
    with pytest.raises(ConfigError, match="exactly one of data.dataset"):
        load_tune_config(_args())
    with pytest.raises(ConfigError, match="model.n_clusters must be given"):
        load_tune_config(_args("--data", "/tmp/x"))


def test_tune_command_exit_code_2_on_bad_space(capsys):
    from clam_dist.cli import run_logged
    from clam_dist.tune.command import run

    # through the CLI's error handling, as `clam-dist tune` runs it
    args = _args("--dataset", "ecoli", "--set", "search.alpha=[0.5,0.1]")
    assert run_logged("tune", lambda: run(args)) == 2
    assert "config error: search.alpha is inverted" in capsys.readouterr().err


def test_trial_at_the_default_point_matches_the_in_memory_fit():
    """The stepper is the same optimisation as fit_clam: same init, beta, loss curve."""
    x, _ = load_clam_paper("zoo")
    x = standardize(x).astype(np.float32)
    ref = fit_clam(x, ClAMConfig(n_clusters=7, epochs=2, seed=3))
    # Rows in file order, as the in-memory fit sees them.
    trial = ClAMTrial(
        TrialData(train=x, score_rows=x, holdout=x[:0]), TrialParams(n_clusters=7, seed=3)
    )
    losses = [trial.step()["train_loss"] for _ in range(2)]
    assert trial.am.beta == pytest.approx(ref.beta, rel=1e-6)
    np.testing.assert_allclose(losses, ref.loss_history, rtol=1e-4)
    assert "heldout_loss" not in trial.evaluate()


def test_heldout_loss_is_reported_on_fixed_masks():
    x, _ = load_clam_paper("ecoli")
    data = split_sample(standardize(x), 0.2, 200, 0)
    assert data.holdout.shape[0] == 67 and data.score_rows.shape[0] == 200
    a = ClAMTrial(data, TrialParams(n_clusters=8)).evaluate()["heldout_loss"]
    b = ClAMTrial(data, TrialParams(n_clusters=8)).evaluate()["heldout_loss"]
    assert a == b and a > 0  # same masks, same init -> same score


def test_jobs_entrypoint_refuses_an_inverted_space_before_any_work(tmp_path):
    """What `ray job submit -- python jobs/tune.py ...` runs: exit 2 in seconds, the
    message and a JSON job_done record on stderr, nothing written."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "jobs/tune.py", "--dataset", "ecoli", "--set", "search.lr=[0.1,0.001]",
         "--output", str(tmp_path / "best.toml"), "--log-format", "json"],
        cwd=repo, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2, out.stdout + out.stderr
    assert "config error: search.lr is inverted: low 0.1 > high 0.001" in out.stderr
    done = [json.loads(line) for line in out.stderr.splitlines() if line.startswith("{")][-1]
    assert done["event"] == "job_done" and done["job"] == "tune" and done["exit_code"] == 2
    assert "Started a local Ray instance" not in out.stderr
    assert list(tmp_path.iterdir()) == []


def test_finalists_are_searched_survivors_best_first():
    from clam_dist.tune.search import pick_finalists

    def rec(trial, epochs, score, is_default=False):
        return {"trial": trial, "epochs": epochs, "is_default": is_default,
                "last": {"silhouette": score}}  # fmt: skip

    records = [rec(0, 15, 0.9, True), rec(1, 3, 0.8), rec(2, 15, 0.3), rec(3, 15, 0.5)]
    records += [rec(4, 9, 0.2), rec(5, 3, 0.7)]
    picked = pick_finalists(records, "silhouette", "max", 15, 4)
    # survivors first (best first), then the trial ASHA let run furthest; never the default
    assert [r["trial"] for r in picked] == [3, 2, 4, 1]
    assert [r["trial"] for r in pick_finalists(records, "silhouette", "min", 15, 1)] == [2]


def test_tiny_search_writes_a_config_the_training_job_accepts(ray_local, tmp_path, capsys):
    from clam_dist.train.config import TrainConfig
    from clam_dist.tune.search import run_tune

    config = load_config(
        TuneJobConfig,
        None,
        [
            "data.dataset=ecoli",
            "budget.num_samples=2",
            "budget.max_epochs=3",
            "budget.grace_period=1",
            "budget.reduction_factor=2",
            f"run.storage_path={tmp_path / 'tune'}",
            f"run.output={tmp_path / 'out' / 'best.toml'}",
        ],
    )
    summary = run_tune(config)
    events = [json.loads(line)["event"] for line in capsys.readouterr().err.splitlines()
              if line.startswith("{")]  # fmt: skip
    assert events.count("trial_done") == 3 and events.count("finalist") == 2
    assert events[-2:] == ["confirmed", "tune_done"]
    assert len(summary["trials"]) == 3  # 2 sampled + the default configuration
    assert sum(r["is_default"] for r in summary["trials"]) == 1
    assert max(r["epochs"] for r in summary["trials"]) == 3
    fin = summary["final"]
    # finalists and the default re-trained on fresh seeds (not the search's seed 0), the best
    # finalist confirmed against the default on further, disjoint seeds
    assert fin["select_seeds"] == [1, 2, 3] and fin["confirm_seeds"] == [4, 5, 6, 7, 8]
    assert len(fin["finalists"]) == 2
    for rec in [*fin["finalists"], fin["default_select"]]:
        assert [r["seed"] for r in rec["per_seed"]] == [1, 2, 3]
    for rec in (fin["search_best"], fin["default"]):
        assert [r["seed"] for r in rec["per_seed"]] == [4, 5, 6, 7, 8]
        sil = np.mean([r["silhouette"] for r in rec["per_seed"]])
        assert rec["silhouette"] == pytest.approx(sil)
    best = max(fin["finalists"], key=lambda r: r["silhouette"])
    assert fin["search_best"]["point"] == best["point"]
    gain = fin["search_best"]["silhouette"] - fin["default"]["silhouette"]
    assert fin["search_best"]["gain_vs_default"] == pytest.approx(gain)
    # the choice is made on the selection seeds, the confirmation seeds take no part in it
    choice = fin["choice"]
    assert choice["seeds"] == [1, 2, 3] and summary["chosen_on"] == "select_seeds"
    assert choice["search_best"]["point"] == best["point"]
    assert choice["search_best"]["silhouette"] == best["silhouette"]
    select_gain = best["silhouette"] - fin["default_select"]["silhouette"]
    assert summary["chosen"] == choice["chosen"] == ("search" if select_gain >= 0 else "default")
    chosen = choice["search_best"] if summary["chosen"] == "search" else fin["default_select"]
    assert chosen["silhouette"] >= fin["default_select"]["silhouette"]
    assert chosen["n_nonempty"] == 8
    # the confirmation reports the chosen configuration against the default, as it came out
    confirmed = fin["search_best"] if summary["chosen"] == "search" else fin["default"]
    conf = fin["confirmation"]
    assert conf["seeds"] == [4, 5, 6, 7, 8] and conf["chosen"] == confirmed["silhouette"]
    assert conf["default"] == fin["default"]["silhouette"]
    assert summary["confirmed"] == conf["holds"] == (conf["chosen"] >= conf["default"])
    assert confirmed["n_nonempty"] == 8
    train = load_config(TrainConfig, tmp_path / "out" / "best.toml")
    assert train.model.n_clusters == 8 and train.optim.epochs == 3
    assert train.model.beta == pytest.approx(chosen["beta"])
    assert train.optim.lr == pytest.approx(chosen_lr := chosen["point"]["lr"]) and chosen_lr > 0
    on_disk = json.loads((tmp_path / "out" / "tune_summary.json").read_text())
    assert set(on_disk["timings_s"]) == {"load_data", "search", "final_check"}
    # Ray's TensorBoard integration wrote event files for every trial.
    events = list((tmp_path / "tune").rglob("events.out.tfevents.*"))
    assert len(events) == 3
