"""The schedule's parts without Ray: drift arithmetic, the gate, new-cluster discovery,
the warm refresh (ids, retiring, seeds), the reservoir, and the seeds' independence of
the clock and the order partitions run in."""

from __future__ import annotations

import numpy as np
import pytest

from clam_dist.config import load_config
from clam_dist.datasets.drifting import DriftingStream
from clam_dist.pipeline.run_store import RunStore
from clam_dist.registry.config import DriftSection, GateSection, PartitionConfig, RefreshSection
from clam_dist.registry.drift import measure
from clam_dist.registry.gate import decide
from clam_dist.registry.partition import seed_for
from clam_dist.registry.refresh import new_prototypes, refresh, train_first
from clam_dist.registry.reservoir import earlier_keys, read_samples, write_sample

STREAM = DriftingStream(d=8, k=8, rows=6_000, move_day=2, new_day=3, seed=5)


def _config(*overrides: str) -> PartitionConfig:
    return load_config(
        PartitionConfig, None, ["model.method=kmeans", "model.n_clusters=8", *overrides]
    )


def test_drift_counts_rows_above_the_threshold_and_rows_in_clusters_that_changed_size():
    shares = {str(i): 0.25 for i in range(4)}
    rows = {0: 250, 1: 250, 2: 100, 3: 400}  # 2 shrank to 0.10, 3 grew to 0.40
    above = {0: 5, 1: 5, 2: 3, 3: 50}  # rows above in changed clusters count once
    d = measure(rows, above, shares, DriftSection(threshold=0.1, size_change=0.5), 1.0)
    assert d["changed_clusters"] == [2, 3]
    assert d["size_change_share"] == pytest.approx(0.5)
    assert d["share"] == pytest.approx((100 + 400 + 5 + 5) / 1000)
    assert d["energy_share_above"] == pytest.approx(63 / 1000)
    assert d["drifted"]
    stable = measure({0: 260, 1: 240, 2: 250, 3: 250}, {0: 10}, shares, DriftSection(), 1.0)
    assert stable["changed_clusters"] == [] and not stable["drifted"]
    assert stable["share"] == pytest.approx(0.01)


def test_a_cluster_that_vanished_counts_as_changed():
    d = measure({0: 100}, {}, {"0": 0.5, "7": 0.5}, DriftSection(), None)
    assert d["changed_clusters"] == [0, 7] and d["share"] == 1.0


def test_the_gate_refuses_a_worse_challenger_and_passes_a_better_one():
    x, _, _ = STREAM.partition(1)
    config = _config()
    champion = train_first(config, x, seed=1)
    worse = train_first(config, x, seed=1)
    worse.prototypes = worse.prototypes[[0] * worse.k] + np.linspace(0, 1, worse.k)[:, None]
    verdict = decide(champion, worse, x[:1000], GateSection(), seed=0)
    assert not verdict["passed"] and verdict["challenger"] > verdict["champion"]
    verdict = decide(worse, champion, x[:1000], GateSection(), seed=0)
    assert verdict["passed"]
    sil = decide(worse, champion, x[:1000], GateSection(metric="silhouette"), seed=0)
    assert sil["passed"] and sil["challenger"] > sil["champion"]
    # A margin no challenger can meet.
    assert not decide(worse, champion, x[:1000], GateSection(margin=0.999), seed=0)["passed"]


def test_new_prototypes_one_per_new_group_and_none_from_scattered_tails():
    rng = np.random.default_rng(0)
    tight = 8.0  # mean squared distance per row of unit-variance rows in 8 dimensions
    groups = [rng.normal(size=(500, 8)) + c for c in (np.full(8, 20.0), np.full(8, -20.0))]
    tails = rng.normal(size=(300, 8)) * 6.0  # scattered: no tight group
    rows = np.vstack([*groups, tails]).astype(np.float32)
    found = new_prototypes(rows, 20_000, tight, RefreshSection(max_new_clusters=8), seed=1)
    assert len(found) == 2
    assert sorted(np.round(found.mean(axis=1) / 20).tolist()) == [-1.0, 1.0]
    assert len(new_prototypes(tails, 20_000, tight, RefreshSection(), seed=1)) == 0
    off = RefreshSection(max_new_clusters=0)
    assert len(new_prototypes(rows, 20_000, tight, off, seed=1)) == 0


def test_a_refresh_adds_clusters_for_moved_components_keeps_the_other_ids_and_is_seeded():
    config = _config()
    x1, _, _ = STREAM.partition(1)
    champion = train_first(config, x1, seed=1)
    x2, labels2, _ = STREAM.partition(2)
    a = refresh(config, champion, x2, x1[:2000], next_id=8, seed=7)
    b = refresh(config, champion, x2, x1[:2000], next_id=8, seed=7)
    np.testing.assert_array_equal(a.artifact.prototypes, b.artifact.prototypes)
    assert a.mapping.ids == b.mapping.ids
    assert a.added == STREAM.moved  # one new cluster per moved component
    assert len(a.mapping.new) >= STREAM.moved and min(a.mapping.new) >= 8
    ids = a.artifact.meta["cluster_ids"]
    assert len(set(ids)) == a.artifact.k and a.mapping.next_id > max(ids)
    assert "energy_p99" in a.artifact.meta


def test_the_reservoir_keeps_samples_and_gives_the_latest_earlier_ones(tmp_path):
    store = RunStore(str(tmp_path / "m"))
    rng = np.random.default_rng(0)
    for day in ("2026-12-01", "2026-12-02", "2026-12-03", "2026-12-05"):
        write_sample(store, day, rng.normal(size=(10, 4)).astype(np.float32))
    assert earlier_keys(store, "2026-12-04", 2) == ["2026-12-02", "2026-12-03"]
    assert earlier_keys(store, "2026-12-01", 5) == []
    assert earlier_keys(store, "2026-12-09", 0) == []
    got = read_samples(store, ["2026-12-01", "2026-12-02"], 4)
    assert got.shape == (20, 4) and got.dtype == np.float32
    assert read_samples(store, [], 4).shape == (0, 4)


def test_seeds_depend_on_the_key_the_parent_and_the_config_seed_only():
    assert seed_for(0, "2026-12-02", 3) == seed_for(0, "2026-12-02", 3)
    assert len({seed_for(0, "2026-12-02", 3), seed_for(0, "2026-12-03", 3),
                seed_for(0, "2026-12-02", 4), seed_for(1, "2026-12-02", 3)}) == 4  # fmt: skip
    assert 0 <= seed_for(2**32 - 1, "x" * 128, 9999) < 2**31


@pytest.mark.parametrize("method", ["clam", "attention", "dcam", "kmeans"])
def test_every_method_trains_a_first_version_and_refreshes_it_warm(method, tmp_path):
    """The first version and a warm refresh for each registered method: the challenger
    is a complete artifact (saved, loaded, predicting with ids), trained from the parent
    (DCAM: its encoder too), with the parent's scaler."""
    from clam_dist.artifacts import load_artifact, save_artifact
    from clam_dist.models.predictor import ClusterPredictor

    small = DriftingStream(d=8, k=4, rows=1_500, move_day=2, new_day=9, seed=2)
    extra = ["dcam.latent_dim=4", "dcam.pretrain_epochs=2"] if method == "dcam" else []
    config = load_config(
        PartitionConfig,
        None,
        [f"model.method={method}", "model.n_clusters=4", "optim.epochs=2",
         "optim.batch_size=256", *extra],
    )  # fmt: skip
    x1, _, _ = small.partition(1)
    first = train_first(config, x1, seed=3)
    assert first.meta["cluster_ids"] == [0, 1, 2, 3] and first.method == method
    x2, _, _ = small.partition(2)
    new = refresh(config, first, x2, x1[:500], next_id=4, seed=4)
    art = new.artifact
    np.testing.assert_array_equal(art.scaler_mean, first.scaler_mean)
    assert len(art.meta["cluster_ids"]) == art.k and set(new.mapping.ids) == set(
        art.meta["cluster_ids"]
    )
    if method == "dcam":
        assert set(art.tensors) == set(first.tensors) | {
            k for k in art.tensors if k.startswith("decoder.")
        }
    save_artifact(art, str(tmp_path / "m"))
    loaded = load_artifact(str(tmp_path / "m"))
    labels = ClusterPredictor.from_artifact(loaded).predict(x2, ())["cluster"]
    assert labels.min() >= 0 and labels.max() < loaded.k


def test_a_dcam_refresh_adds_a_cluster_in_latent_space_for_a_new_component():
    """DCAM's prototypes live in its encoder's latent space: the rows the champion cannot
    explain are encoded and clustered there, so a component that appears gets its own
    prototype (latent width) and a new id, as for the methods in the input space."""
    from clam_dist.registry.refresh import predict

    stream = DriftingStream(d=8, k=4, rows=3_000, move_day=99, new_day=2, added=1, seed=2)
    config = load_config(
        PartitionConfig,
        None,
        ["model.method=dcam", "model.n_clusters=4", "optim.epochs=3", "optim.batch_size=256",
         "dcam.latent_dim=4", "dcam.pretrain_epochs=3"],
    )  # fmt: skip
    x1, _, _ = stream.partition(1)
    first = train_first(config, x1, seed=3)
    x2, labels, _ = stream.partition(2)
    new = refresh(config, first, x2, x1[:500], next_id=4, seed=4)
    assert new.added == 1 and new.artifact.prototypes.shape[1] == 4  # the latent width
    ids = np.asarray(new.artifact.meta["cluster_ids"])[predict(new.artifact, x2, ())["cluster"]]
    on_new_ids = ~np.isin(ids[labels == 4], first.meta["cluster_ids"])
    assert on_new_ids.mean() > 0.9
