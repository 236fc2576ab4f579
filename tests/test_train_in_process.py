"""The distributed loop's Trainer in one process (issue 25 item 2): rows in memory read in
the lanes' plan give exactly LaneStream's batches; the in-process run equals the step math
written out over the Parquet lanes and a real 1-worker Ray Train run over the same rows
(written one file per ``row_chunk`` rows, ids in the ``id`` column); a non-finite step
stops it at that step; DCAM's two phases and k-means' closed form run in process."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_train_ray import config  # the Ray tests' TrainConfig: 2 lanes, 2 epochs, lr 0.05

from clam_dist.data.source import VectorSource
from clam_dist.data.writer import write_vectors
from clam_dist.datasets.synthetic import make_gaussian_mixture
from clam_dist.models.clam import beta_from_data, clam_loss
from clam_dist.models.kmeans import apply_lloyd, batch_sums_counts, kmeans_plus_plus
from clam_dist.train.config import TrainConfig
from clam_dist.train.in_process import InProcessTrainer, train_in_process
from clam_dist.train.memory_batches import MemoryRows, memory_steps, plan_steps
from clam_dist.train.step import (
    LaneStream,
    batch_mask,
    resolve_lanes,
    steps_in_epoch,
    take_step,
    worker_lanes,
)
from clam_dist.train.verify import TrainingDiverged

CHUNK = 300  # rows per Parquet file, and the in-process run's row_chunk
K, D = 4, 6


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """2,400 rows written as 8 files of CHUNK rows, with the row number as ``id``."""
    x, _, _ = make_gaussian_mixture(2_400, D, K, separation=7.0, seed=3)
    root = tmp_path_factory.mktemp("in_process")
    write_vectors(str(root / "data"), x, rows_per_file=CHUNK)
    return root, x.astype(np.float32)


def in_process_config(root, *extra: str) -> TrainConfig:
    """One worker reading both lanes: the global batch of the Ray tests' 2 x 100."""
    return config(root, "run.num_workers=1", "optim.batch_size=200", "data.id_column=id", *extra)


def make_init(x: np.ndarray, seed: int = 0) -> dict:
    """What sources.initialise returns, computed here without Dask."""
    mean, scale = x.mean(0, dtype=np.float64), x.std(0, dtype=np.float64)
    z = torch.from_numpy(((x - mean) / scale).astype(np.float32))
    protos = kmeans_plus_plus(z, K, torch.Generator().manual_seed(seed))
    return {
        "prototypes": protos.numpy(),
        "beta": float(beta_from_data(z, protos, "euclidean")),
        "mean": mean,
        "scale": scale,
        "fill": np.zeros(D, np.float32),
        "rows": len(x),
    }


def standardised(x: np.ndarray, init: dict) -> tuple[np.ndarray, dict]:
    """Rows in the model's space and the init that says so (mean 0, scale 1)."""
    z = ((x - init["mean"]) / init["scale"]).astype(np.float32)
    return z, {**init, "mean": np.zeros(D), "scale": np.ones(D)}


# --------------------------------------------------------------------------- batches


def _lane_stream_steps(source, rank, world, n_lanes, lane_batch, epoch, seed, skip, steps):
    streams = [
        LaneStream(
            source, lane, n_lanes, epoch, seed, read_rows=37, skip_rows=skip * lane_batch,
            row_counts=source.file_row_counts(),
        )
        for lane in worker_lanes(rank, world, n_lanes)
    ]  # fmt: skip
    return [take_step(streams, lane_batch) for _ in range(steps)]


@pytest.mark.parametrize("id_kind", ["row numbers", "text"])
def test_memory_reader_yields_exactly_lane_streams_batches(tmp_path, id_kind):
    x = np.random.default_rng(0).normal(size=(1_000, 3)).astype(np.float32)
    ids = None if id_kind == "row numbers" else np.array([f"row-{i}" for i in range(1_000)])
    # 90 rows per file: 12 files, the last one short, so lanes differ in length
    write_vectors(str(tmp_path / "data"), x, ids=ids, rows_per_file=90)
    source = VectorSource(str(tmp_path / "data"), id_column="id")
    rows = MemoryRows.of(x, ids, row_chunk=90)
    assert [f.rsplit("/", 1)[1] for f in source.files()] == rows.files()
    assert list(source.row_group_rows().values()) == list(rows.row_group_rows().values())
    # (world, rank, lanes, rows per worker, epoch, steps already taken): one lane, several,
    # rank 1 of 2 resuming mid-epoch, and the whole shard in one step
    for world, rank, lanes, batch, epoch, skip in [
        (1, 0, 1, 64, 0, 0),
        (1, 0, 3, 96, 1, 0),
        (2, 1, 4, 50, 2, 3),
        (1, 0, 2, 0, 0, 0),
    ]:
        n_lanes, lane_batch = resolve_lanes(lanes, world, batch)
        total = steps_in_epoch(
            source.files(), source.row_group_rows(), n_lanes, lane_batch, epoch, 7
        )
        want = _lane_stream_steps(
            source, rank, world, n_lanes, lane_batch, epoch, 7, skip, total - skip
        )
        got = list(
            memory_steps(
                rows, worker_lanes(rank, world, n_lanes), n_lanes, lane_batch, epoch, 7, skip,
                total - skip,
            )
        )  # fmt: skip
        assert len(got) == len(want) == total - skip > 0
        for (gx, gids), (wx, wids) in zip(got, want):
            assert np.array_equal(gx, wx) and gx.dtype == wx.dtype == np.float32
            assert np.array_equal(gids, wids) and gids.dtype == wids.dtype


def test_virtual_files_have_the_writers_row_groups(tmp_path):
    x = np.zeros((70_000, 1), np.float32)  # more than one 65,536-row group per file
    write_vectors(str(tmp_path / "data"), x, rows_per_file=70_000)
    source = VectorSource(str(tmp_path / "data"))
    rows = MemoryRows.of(x, row_chunk=70_000)
    assert list(source.row_group_rows().values()) == list(rows.row_group_rows().values())
    assert list(rows.row_group_rows().values()) == [(65_536, 4_464)]


# --------------------------------------------------------------------------- equal runs


def _reference(
    cfg: TrainConfig, source: VectorSource, init: dict, epochs: int
) -> list[torch.Tensor]:
    """ClAM's step written out, without the Trainer: the Parquet lanes, masks by row key,
    the loss SUM divided by the rows, Adam (constant rate); the prototypes after each
    epoch."""
    m, seed = cfg.model, cfg.run.seed
    n_lanes, lane_batch = resolve_lanes(cfg.data.lanes, 1, cfg.optim.batch_size)
    mean, scale, fill = (
        torch.tensor(init[k], dtype=torch.float32) for k in ("mean", "scale", "fill")
    )
    protos = torch.nn.Parameter(torch.tensor(init["prototypes"], dtype=torch.float32))
    opt = torch.optim.Adam([protos], lr=cfg.optim.lr)
    after = []
    for epoch in range(epochs):
        steps = steps_in_epoch(
            source.files(), source.row_group_rows(), n_lanes, lane_batch, epoch, seed
        )
        for step, (xb, ids) in enumerate(
            _lane_stream_steps(source, 0, 1, n_lanes, lane_batch, epoch, seed, 0, steps)
        ):
            x = (torch.from_numpy(xb) - mean) / scale
            mask = batch_mask(ids, D, m.mask_ratio, m.shared_every, epoch, step, seed)
            loss = clam_loss(x, protos, init["beta"], m.alpha, m.steps, m.metric, mask, fill)
            opt.zero_grad()
            (loss * len(x)).backward()
            protos.grad = protos.grad / len(x)
            opt.step()
        after.append(protos.detach().clone())
    return after


def test_in_process_equals_the_step_math_over_the_parquet_lanes(dataset):
    from clam_dist.train.trainer import plan_steps as footer_plan

    root, x = dataset
    # epoch 1 is a shared-mask epoch; constant rate: the reference has no plateau. Three
    # epochs, compared after the first two: the last one ends with the method's choice of
    # the final state (which the Ray comparison below covers).
    cfg = in_process_config(
        root, "model.shared_every=2", "optim.schedule=constant", "optim.epochs=3"
    )
    source = VectorSource(str(root / "data"), id_column="id")
    init = make_init(x)
    plan = plan_steps(cfg, MemoryRows.of(x, row_chunk=CHUNK))
    assert list(plan.steps_per_epoch) == footer_plan(cfg, source)["steps_per_epoch"] == [12] * 3
    want = _reference(cfg, source, init, epochs=2)
    trainer = InProcessTrainer(cfg, x, init, row_chunk=CHUNK)
    for epoch in range(2):
        trainer.run_epoch()
        got = trainer.update.prototypes().numpy()
        np.testing.assert_allclose(got, want[epoch].numpy(), rtol=1e-5, atol=1e-5)
    assert not np.allclose(want[1].numpy(), init["prototypes"], atol=1e-3)  # it trained
    trainer.run_epoch()
    res = trainer.result()
    # reports as a Ray run makes them: windows of 4 steps, checkpoints every 5 (none is
    # written in process; the report is made), every epoch end
    assert [h["step"] for h in res.history] == [
        4,
        5,
        8,
        10,
        12,
        15,
        16,
        20,
        24,
        25,
        28,
        30,
        32,
        35,
        36,
    ]
    assert res.epoch_losses == [h["epoch_loss"] for h in res.history if "epoch_loss" in h]
    last = res.history[-1]
    assert last["workers"] == 1 and last["verified_steps"] == 1 + 36 + 3
    assert last["allreduce_bytes_per_step"] == 0 and last["prototype_divergence"] == 0.0


def test_in_process_steps_epoch_by_epoch(dataset):
    root, x = dataset
    z, init = standardised(x, make_init(x))
    trainer = InProcessTrainer(in_process_config(root), z, init, row_chunk=CHUNK)
    seen = []
    while not trainer.done():
        seen.append(trainer.run_epoch())
    assert [m["epoch"] for m in seen] == [0, 1]
    assert [m["epoch_loss"] for m in seen] == trainer.epoch_losses
    assert seen[1]["epoch_loss"] < seen[0]["epoch_loss"]
    with pytest.raises(RuntimeError, match="no epoch left"):
        trainer.run_epoch()
    whole = train_in_process(in_process_config(root), z, init, row_chunk=CHUNK)
    assert torch.equal(whole.update.prototypes(), trainer.update.prototypes())


@pytest.mark.ray
def test_in_process_equals_a_one_worker_ray_run(dataset, ray_local):
    from clam_dist.artifacts import load_artifact
    from clam_dist.train.sources import initialise
    from clam_dist.train.trainer import run_training

    root, x = dataset
    cfg = in_process_config(root, "run.name=one-worker-vs-in-process")
    ray_run = run_training(cfg)
    init = initialise(cfg)  # deterministic: the initialisation the Ray run used
    res = train_in_process(cfg, x, init, row_chunk=CHUNK)  # raw rows: init has the scaler
    got = res.update.prototypes().numpy()
    np.testing.assert_allclose(got, load_artifact(ray_run.artifact_url).prototypes, atol=1e-5)
    assert [h["step"] for h in res.history] == [h["step"] for h in ray_run.history]
    assert [sorted(h) for h in res.history] == [sorted(h) for h in ray_run.history]
    for mine, ray_side in zip(res.history, ray_run.history):
        assert mine["loss"] == pytest.approx(ray_side["loss"], rel=1e-5)
        assert mine["rows"] == ray_side["rows"]


# --------------------------------------------------------------------------- divergence


def test_a_nan_row_stops_at_the_first_step_that_reads_it(dataset):
    root, x = dataset
    cfg = in_process_config(root)
    z, init = standardised(x, make_init(x))
    z[1_234, 2] = np.nan
    n_lanes, lane_batch = resolve_lanes(cfg.data.lanes, 1, cfg.optim.batch_size)
    rows = MemoryRows.of(z, row_chunk=CHUNK)
    steps = memory_steps(rows, [0, 1], n_lanes, lane_batch, 0, cfg.run.seed, 0, 12)
    bad = next(s for s, (_, keys) in enumerate(steps) if 1_234 in keys)
    assert bad > 0  # not trivially the first step
    trainer = InProcessTrainer(cfg, z, init, row_chunk=CHUNK)
    with pytest.raises(
        TrainingDiverged, match=rf"non-finite loss gradient at step {bad} \(epoch 0\)"
    ):
        trainer.run_epoch()
    assert torch.isfinite(trainer.update.prototypes()).all()  # never applied
    assert trainer.trainer.state.global_step == bad


def test_a_diverging_rate_stops_in_process_at_the_first_non_finite_step(dataset):
    root, x = dataset
    cfg = in_process_config(root, "optim.lr=1e30", "optim.schedule=constant")
    z, init = standardised(x, make_init(x))
    with pytest.raises(
        TrainingDiverged, match=r"clam: non-finite loss gradient at step 1 \(epoch 0\)"
    ):
        train_in_process(cfg, z, init, row_chunk=CHUNK)


# --------------------------------------------------------------------------- methods


def test_dcam_pretrains_then_trains_jointly_in_process(dataset):
    root, x = dataset
    cfg = in_process_config(
        root,
        "model.method=dcam",
        "model.mask_ratio=0.34",
        "model.steps=5",
        "model.alpha=0.2",
        "dcam.latent_dim=3",
        "dcam.hidden=16",
        "dcam.pretrain_epochs=1",
        "optim.epochs=1",
        "optim.lr=0.02",
    )
    z, init = standardised(x, make_init(x))
    # the latent prototypes are placeholders until the joint phase seeds them
    init = {**init, "prototypes": np.zeros((K, 3), np.float32), "beta": 1.0}
    res = train_in_process(cfg, z, init, sample=z[:600], row_chunk=CHUNK)
    phases = [h.get("phase") for h in res.history if "epoch_loss" in h]
    assert phases == ["pretrain", "joint"] and len(res.epoch_losses) == 2
    assert all(np.isfinite(res.epoch_losses))
    protos = res.update.prototypes()
    assert protos.shape == (K, 3) and torch.isfinite(protos).all() and protos.abs().sum() > 0
    assert "encoder" in res.update.artifact_fields()["meta"]  # what the artifact carries


def test_kmeans_lloyd_in_process_equals_full_batch_lloyd(dataset):
    root, x = dataset
    cfg = in_process_config(root, "model.method=kmeans", "kmeans.algorithm=lloyd", "optim.epochs=3")
    z, init = standardised(x, make_init(x))
    res = train_in_process(cfg, z, init, row_chunk=CHUNK)
    centers = torch.tensor(init["prototypes"])
    for _ in range(3):
        sums, counts, _ = batch_sums_counts(torch.from_numpy(z), centers)
        centers = apply_lloyd(centers, sums, counts)
    got = res.update.prototypes().numpy()
    np.testing.assert_allclose(got, centers.numpy(), rtol=1e-4, atol=1e-5)
    assert not np.allclose(got, init["prototypes"], atol=1e-3)  # it moved
    assert res.epoch_losses[-1] <= res.epoch_losses[0]
    minibatch = in_process_config(root, "model.method=kmeans")
    assert torch.isfinite(
        train_in_process(minibatch, z, init, row_chunk=CHUNK).update.prototypes()
    ).all()
