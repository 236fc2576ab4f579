"""Figures that compare like with like (issue 25, item 6): the benchmarks' own logic,
tested without running them at size.

- jobs/bench_vs_peers.py: the target of "time to target" is pooled over every run (or
  stated), so any method, the winner and ours included, can show "not reached".
- jobs/bench_am_step.py: SGEMM is timed on the row blocks clam_loss really trains in.
- jobs/bench_assign.py: the in-memory reference computes the columns the pipeline writes.
- clam_dist/tune/search.py: searched vs default is chosen on the selection seeds; the
  confirmation seeds are disjoint from them and from the search's, and cannot change it.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

JOBS = Path(__file__).resolve().parents[1] / "jobs"


def _job(name: str):
    """A job script as a module (jobs/ is not a package); importing runs no benchmark."""
    spec = importlib.util.spec_from_file_location(f"job_{name}", JOBS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# --- jobs/bench_vs_peers.py ----------------------------------------------------------


def _run(method: str, table: str, fit_s: float, inertia: float) -> dict:
    return {"method": method, "table": table, "fit_s": fit_s, "inertia": inertia}


def test_the_target_is_pooled_over_both_tables_so_our_default_can_miss_it():
    peers = _job("bench_vs_peers")
    defaults = [_run("kmeans", "defaults", 2.0, 103.0), _run("faiss", "defaults", 5.0, 104.0)]
    kernel = [_run("ours", "kernel", 9.0, 100.0), _run("sklearn", "kernel", 30.0, 100.5)]
    pooled = defaults + kernel
    target = peers.quality_target([r["inertia"] for r in pooled])
    assert target == pytest.approx(101.0)  # 1% above the best of ANY run, here a kernel's
    peers.add_time_to_target(pooled, target)
    # our own default is best among the defaults, and still "not reached"
    assert [r["time_to_target_s"] for r in defaults] == [None, None]
    assert [r["time_to_target_s"] for r in kernel] == [9.0, 30.0]
    assert "best: kernel ours, 100" in peers.target_note(target, None, pooled)


def test_a_stated_target_can_fail_the_winner_too():
    peers = _job("bench_vs_peers")
    runs = [_run("kmeans", "defaults", 2.0, 100.0), _run("faiss", "defaults", 5.0, 120.0)]
    target = peers.quality_target([r["inertia"] for r in runs], stated=99.0)
    assert target == 99.0
    peers.add_time_to_target(runs, target)
    assert all(r["time_to_target_s"] is None for r in runs)  # nobody, the best included
    assert "stated" in peers.target_note(target, 99.0, runs)
    assert peers.time_to_target(3.0, 99.0, 99.0) == 3.0  # reaching it exactly counts
    with pytest.raises(ValueError, match="no inertia"):
        peers.quality_target([])


def test_the_kernels_run_the_same_lloyd_from_the_same_start():
    """Same init, same iterations, all rows: from one start, our Lloyd and scikit-learn's
    land on the same inertia (faiss too when installed)."""
    peers = _job("bench_vs_peers")
    x, _ = peers.make_mixture(3000, 8, 6, seed=1)
    init = peers.shared_init(x, 6, seed=1)
    np.testing.assert_array_equal(init, peers.shared_init(x, 6, seed=1))
    kernels = ["ours", "sklearn"] + (["faiss"] if importlib.util.find_spec("faiss") else [])
    inertia = {}
    for name in kernels:
        centers, labels, iters = peers.kernel_runners(init, 5)[name](x)
        assert labels.shape == (3000,) and 1 <= iters <= 5
        c = torch.from_numpy(np.ascontiguousarray(centers, dtype=np.float32))
        inertia[name] = float(torch.cdist(torch.from_numpy(x), c).min(1).values.pow(2).sum())
    for name in kernels:
        assert inertia[name] == pytest.approx(inertia["ours"], rel=1e-3), inertia


# --- jobs/bench_am_step.py -----------------------------------------------------------


def test_sgemm_blocks_are_the_row_blocks_clam_loss_trains_in(monkeypatch):
    """The rows of every block clam_loss evolves (with gradients) equal the blocks the
    benchmark times SGEMM on: derived from the same constant, not a copy of a figure."""
    from clam_dist.models import clam
    from clam_dist.models.am import TRAIN_BLOCK_ELEMS

    am_step = _job("bench_am_step")
    assert am_step.step_block_rows(8192, 4096) == [512] * 16  # the README's k = 4,096 case
    assert am_step.step_block_rows(8192, 256) == [8192]  # one direct block
    k = 4096
    batch = TRAIN_BLOCK_ELEMS // k * 2 + 37  # two full blocks and a remainder
    seen: list[int] = []
    real = clam._loss_sum

    def spy(x, *args):
        seen.append(x.shape[0])
        return real(x, *args)

    monkeypatch.setattr(clam, "_loss_sum", spy)
    g = torch.Generator().manual_seed(0)
    protos = torch.randn(k, 2, generator=g).requires_grad_(True)
    clam.clam_loss(torch.randn(batch, 2, generator=g), protos, 0.1, 0.1, 1).backward()
    assert seen == am_step.step_block_rows(batch, k)
    seen.clear()
    small = torch.randn(64, 2, generator=g)
    clam.clam_loss(small, protos, 0.1, 0.1, 1).backward()
    assert seen == am_step.step_block_rows(64, k) == [64]


# --- jobs/bench_assign.py ------------------------------------------------------------


def test_the_in_memory_reference_computes_what_the_pipeline_writes():
    from clam_dist.assign.pipeline import BASE_COLUMNS

    assign = _job("bench_assign")
    with_drift = assign.computed_outputs({"energy_p99": 1.0})
    assert with_drift == ["energy", "margin"]  # the pipeline's default outputs
    assert set(assign.computed_outputs({})) == {"energy", "margin"}
    # A manifest naming other columns stops the comparison instead of skewing it.
    assign._check_columns({"columns": [*BASE_COLUMNS, *with_drift]}, with_drift)
    with pytest.raises(SystemExit, match="in-memory reference computes"):
        assign._check_columns({"columns": [*BASE_COLUMNS, "energy"]}, with_drift)


# --- clam_dist/tune/search.py --------------------------------------------------------


def _fake_compare(scores: dict, calls: list):
    """final_compare's stand-in: the score of a point is scores[(point name, seed set)],
    with per-seed records as _paired needs them."""

    def compare(points: list[dict], seeds: list[int]) -> list[dict]:
        calls.append(list(seeds))
        which = "select" if seeds[0] < 10 else "confirm"
        out = []
        for p in points:
            value = scores[(p["name"], which)]
            per_seed = [{"seed": s, "silhouette": value} for s in seeds]
            out.append({"silhouette": value, "per_seed": per_seed, "beta": 1.0})
        return out

    return compare


def _select(confirm_scores: dict):
    from clam_dist.tune.search import select_and_confirm

    finalists = [{"trial": 1, "point": {"name": "a"}}, {"trial": 2, "point": {"name": "b"}}]
    scores = {("a", "select"): 0.50, ("b", "select"): 0.40, ("default", "select"): 0.45}
    scores.update(confirm_scores)
    calls: list = []
    sel = select_and_confirm(
        finalists, {"name": "default"}, _fake_compare(scores, calls), [1, 2, 3], [10, 11],
        "silhouette", "max",
    )  # fmt: skip
    return sel, calls


def test_the_choice_is_made_on_the_selection_seeds_and_only_confirmed_after():
    # The confirmation seeds favour the default by far: the choice stays the searched one.
    sel, calls = _select({("a", "confirm"): 0.10, ("default", "confirm"): 0.90})
    assert sel.search_wins and sel.chosen_point == {"name": "a"}
    assert calls == [[1, 2, 3], [10, 11]]  # the confirmation runs after the choice
    conf = sel.confirmation("silhouette", "max")
    assert conf == {
        "seeds": [10, 11], "chosen": 0.10, "default": 0.90,
        "gain_vs_default": pytest.approx(-0.8), "holds": False,
    }  # fmt: skip
    assert sel.chosen_select["silhouette"] == 0.50  # what is written comes from selection
    # The same selection with the confirmation reversed: the same choice.
    again, _ = _select({("a", "confirm"): 0.90, ("default", "confirm"): 0.10})
    assert again.chosen_point == sel.chosen_point and again.search_wins
    assert again.chosen_select == sel.chosen_select
    assert again.confirmation("silhouette", "max")["holds"]


def test_overlapping_selection_and_confirmation_seeds_are_refused():
    from clam_dist.tune.search import select_and_confirm

    with pytest.raises(ValueError, match="overlap"):
        select_and_confirm([], {"name": "default"}, None, [1, 2], [2, 3], "silhouette", "max")


@pytest.mark.parametrize("seed, n_sel, n_conf", [(0, 3, 5), (7, 1, 1), (41, 4, 2)])
def test_confirmation_seeds_are_disjoint_from_the_search_and_selection_seeds(seed, n_sel, n_conf):
    from clam_dist.config import load_config
    from clam_dist.tune.config import TuneJobConfig
    from clam_dist.tune.search import final_seeds

    config = load_config(
        TuneJobConfig,
        None,
        [
            "data.dataset=ecoli",
            f"run.seed={seed}",
            f"score.final_seeds={n_sel}",
            f"score.confirm_seeds={n_conf}",
        ],
    )
    select, confirm = final_seeds(config)
    assert len(select) == n_sel and len(confirm) == n_conf
    assert not set(select) & set(confirm)
    assert seed not in select and seed not in confirm  # the trials' own seed
