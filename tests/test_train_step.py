"""Distributed-training math and data plan without Ray: masks, lanes, the all-reduce
average, schedules, checkpoint files. Fast; the Ray Train fits are in test_train_ray.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clam_dist.data.source import VectorSource
from clam_dist.data.writer import write_vectors
from clam_dist.datasets.synthetic import make_gaussian_mixture
from clam_dist.models.clam import clam_loss
from clam_dist.train import checkpoint as ckpt
from clam_dist.train.step import (
    LaneStream,
    batch_mask,
    fingerprint,
    local_loss_sum,
    lr_factor,
    prefetch_steps,
    resolve_lanes,
    row_keys,
    row_masks,
    steps_in_epoch,
    take_step,
    worker_lanes,
)


def _worker_loss(p, x, mask, fill, beta, alpha, steps):
    """A worker's loss as the loop's GradientUpdate.forward_backward builds it: the SUM
    of its rows' masked loss; zero (in the graph) when the worker has no rows this step."""
    if x.shape[0] == 0:
        return (p * 0).sum()
    mean = clam_loss(x, p, beta, alpha, steps, "euclidean", mask, fill)
    return local_loss_sum(mean, x.shape[0])


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    x, _, _ = make_gaussian_mixture(700, 5, 3, separation=5.0, seed=1)
    root = tmp_path_factory.mktemp("lanes")
    # uneven files so lanes differ in length and some steps are short
    write_vectors(str(root / "data"), x, rows_per_file=90)
    return VectorSource(str(root / "data"))


def test_masks_depend_on_row_not_on_batching():
    ids = np.array([f"part-0.parquet:{i}" for i in range(40)], dtype=object)
    full = row_masks(row_keys(ids), 10, 0.3, epoch=2, seed=1)
    halves = torch.cat(
        [row_masks(row_keys(ids[:17]), 10, 0.3, 2, 1), row_masks(row_keys(ids[17:]), 10, 0.3, 2, 1)]
    )
    assert torch.equal(full, halves)
    assert (full.sum(1) == 3).all()
    assert not torch.equal(full, row_masks(row_keys(ids), 10, 0.3, epoch=3, seed=1))
    shared = batch_mask(ids, 10, 0.3, shared_every=3, epoch=2, step=4, seed=1)
    assert (shared == shared[0]).all() and shared[0].sum() == 3  # epoch 3 of 3: one mask
    assert batch_mask(ids, 10, 0.0, 3, 0, 0, 1) is None  # unmasked ablation


def test_row_keys_of_text_ids_are_fnv1a_of_the_text_whatever_the_array():
    """A text id's key is 64-bit FNV-1a over its code points (a plain Python reference),
    the same in an object array, a narrow or a wide fixed-width array (NUL padding is not
    part of the id), so masks do not depend on which ids a row was batched with."""

    def fnv1a(text: str) -> int:
        h = 0xCBF29CE484222325
        for ch in text:
            h = ((h ^ ord(ch)) * 0x100000001B3) % (1 << 64)
        return h

    ids = ["part-0.parquet:7", "part-0.parquet:123456", "x", "é:1"]
    expected = np.array([fnv1a(t) for t in ids], dtype=np.uint64)
    assert np.array_equal(row_keys(np.array(ids, dtype=object)), expected)
    assert np.array_equal(row_keys(np.array(ids)), expected)
    assert row_keys(np.array(ids[:1]))[0] == expected[0]  # narrower array, same key
    assert np.array_equal(row_keys(np.array([5, 9], dtype=np.int64)), np.array([5, 9], np.uint64))
    assert row_keys(np.array([], dtype=object)).shape == (0,)


def test_row_masks_hide_the_h_smallest_hash_scores_of_each_row():
    """The partition picks exactly the coordinates a full sort of the row's hash scores
    puts first (the definition the masks had before: runs stay reproducible)."""
    from clam_dist.models.clam import hidden_count
    from clam_dist.train.step import _splitmix64

    keys = row_keys(np.arange(500, dtype=np.int64) * 7919)
    d, ratio, epoch, seed = 64, 0.2, 3, 5
    with np.errstate(over="ignore"):
        base = _splitmix64(keys * np.uint64(1_000_003) + np.uint64(epoch) * np.uint64(7919)
                           + np.uint64(seed))  # fmt: skip
        scores = _splitmix64(base[:, None] + np.arange(d, dtype=np.uint64)[None, :])
    expected = np.zeros((500, d), dtype=np.float32)
    first = np.argsort(scores, axis=1, kind="stable")[:, : hidden_count(d, ratio)]
    np.put_along_axis(expected, first, 1.0, axis=1)
    assert torch.equal(row_masks(keys, d, ratio, epoch, seed), torch.from_numpy(expected))


def test_sharded_scaled_gradients_average_to_the_full_batch_gradient():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 5, generator=g, dtype=torch.float64)
    protos0 = torch.randn(4, 5, generator=g, dtype=torch.float64)
    mask = row_masks(np.arange(30), 5, 0.4, 0, 0).double()
    fill = x.mean(0)

    def grad(rows):
        p = protos0.clone().requires_grad_()
        _worker_loss(p, x[rows], mask[rows], fill, 0.7, 0.2, 5).backward()
        return p.grad

    p = protos0.clone().requires_grad_()
    clam_loss(x, p, 0.7, 0.2, 5, "euclidean", mask, fill).backward()
    full_mean = p.grad  # the gradient of the full batch's mean loss
    shards = [grad(slice(0, 11)), grad(slice(11, 25)), grad(slice(25, 30))]
    # the all-reduce: gradients summed with the rows (11 + 14 + 5), then divided by them
    torch.testing.assert_close(sum(shards) / 30, full_mean)
    empty = grad(slice(0, 0))
    assert torch.equal(empty, torch.zeros_like(empty))  # an idle worker contributes zero


def _simulate(
    source, world: int, n_lanes: int, batch: int, epochs: int, counts=None
) -> torch.Tensor:
    """The training loop's math with the all-reduce simulated (worker grads and rows
    summed, then divided)."""
    d = source.dim()
    files = source.files()
    counts = source.file_row_counts() if counts is None else counts
    n_lanes, lane_batch = resolve_lanes(n_lanes, world, batch)
    protos = torch.nn.Parameter(torch.linspace(-2, 2, 4 * d).reshape(4, d))
    opt = torch.optim.Adam([protos], lr=0.05)
    fill = torch.zeros(d)
    for epoch in range(epochs):
        streams = [
            [
                LaneStream(source, lane, n_lanes, epoch, 7, 32)
                for lane in worker_lanes(r, world, n_lanes)
            ]
            for r in range(world)
        ]
        for step in range(steps_in_epoch(files, counts, n_lanes, lane_batch, epoch, 7)):
            batches = [take_step(s, lane_batch) for s in streams]
            global_rows = sum(len(xb) for xb, _ in batches)
            grads = []
            for xb, ids in batches:
                mask = batch_mask(ids, d, 0.4, 2, epoch, step, 7)
                p = protos.detach().clone().requires_grad_()
                _worker_loss(p, torch.from_numpy(xb), mask, fill, 0.5, 0.2, 4).backward()
                grads.append(p.grad)
            protos.grad = sum(grads) / global_rows
            opt.step()
    return protos.detach()


def test_one_worker_batch_b_equals_two_workers_batch_half_b(source):
    one = _simulate(source, world=1, n_lanes=2, batch=40, epochs=2)  # includes a shared-mask epoch
    two = _simulate(source, world=2, n_lanes=2, batch=20, epochs=2)
    torch.testing.assert_close(one, two, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(one, torch.linspace(-2, 2, 20).reshape(4, 5))  # it trained


@pytest.mark.parametrize("row_group_rows", [700, 96])
def test_one_file_feeds_two_workers_exactly(tmp_path, row_group_rows):
    """One Parquet file (one huge row group, or several) split into row ranges: 1 worker
    with batch B trains on exactly the rows of 2 workers with B/2."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    x, _, _ = make_gaussian_mixture(700, 5, 3, separation=5.0, seed=2)
    col = pa.FixedSizeListArray.from_arrays(pa.array(x.astype(np.float32).reshape(-1)), 5)
    pq.write_table(pa.table({"x": col}), tmp_path / "one.parquet", row_group_size=row_group_rows)
    source = VectorSource(str(tmp_path / "one.parquet"))
    counts = source.row_group_rows()
    assert len(source.files()) == 1 and len(counts[source.files()[0]]) == -(-700 // row_group_rows)
    one = _simulate(source, world=1, n_lanes=2, batch=40, epochs=2, counts=counts)
    two = _simulate(source, world=2, n_lanes=2, batch=20, epochs=2, counts=counts)
    torch.testing.assert_close(one, two, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(one, torch.linspace(-2, 2, 20).reshape(4, 5))  # it trained
    lanes = [LaneStream(source, lane, 2, 0, 7, 64).take(10_000)[1] for lane in range(2)]
    assert min(len(ids) for ids in lanes) > 0  # both workers get rows of the one file
    assert np.unique(np.concatenate(lanes)).size == 700


def test_take_returns_one_writable_buffer_and_prefetch_matches(source):
    streams = [LaneStream(source, lane, 4, 0, 3, 25) for lane in (1, 3)]
    reference = [take_step(streams, 17) for _ in range(6)]
    xb, ids = reference[0]
    assert xb.flags.writeable and xb.flags.c_contiguous and xb.dtype == np.float32
    assert xb.shape == (34, 5) and len(ids) == 34
    torch.from_numpy(xb)  # a writable buffer: no "non-writable array" warning path
    again = [LaneStream(source, lane, 4, 0, 3, 25) for lane in (1, 3)]
    with prefetch_steps(again, 17, steps=6, depth=2) as reader:
        got = list(reader)
    assert len(got) == 6
    for (xa, ia), (xg, ig) in zip(reference, got):
        np.testing.assert_array_equal(xa, xg)
        np.testing.assert_array_equal(ia, ig)


def test_lanes_cover_every_row_once_and_resume_skips_exactly(source):
    files, counts = source.files(), source.file_row_counts()
    streams = [LaneStream(source, lane, 3, epoch=1, seed=2, read_rows=25) for lane in range(3)]
    seen, steps = [], 0
    while len(ids := take_step(streams, 17)[1]):
        seen.extend(ids.tolist())
        steps += 1
    assert len(seen) == len(set(seen)) == source.num_rows()  # disjoint and covering
    assert steps_in_epoch(files, counts, 3, 17, 1, 2) == steps  # the planned step count
    full = LaneStream(source, 0, 2, 0, 5, 25)
    head = [full.take(30) for _ in range(4)]
    tail_ids = np.concatenate([full.take(1000)[1]])
    for skip_by_counts in (counts, None):  # whole-file skip via footers, and read-and-discard
        resumed = LaneStream(source, 0, 2, 0, 5, 25, skip_rows=4 * 30, row_counts=skip_by_counts)
        np.testing.assert_array_equal(resumed.take(1000)[1], tail_ids)
    assert sum(len(h[0]) for h in head) == 120


def test_resolve_lanes_errors_name_the_numbers():
    assert resolve_lanes(0, 2, 64) == (2, 64)
    assert resolve_lanes(4, 2, 64) == (4, 32)
    with pytest.raises(ValueError, match=r"data.lanes=3 must be a multiple of run.num_workers=2"):
        resolve_lanes(3, 2, 64)
    with pytest.raises(
        ValueError, match=r"batch_size=5 rows per worker must split evenly over its 2"
    ):
        resolve_lanes(4, 2, 5)


def test_learning_rate_schedules():
    assert lr_factor(10, 100, "plateau") == 1.0
    assert lr_factor(0, 100, "cosine") == pytest.approx(1.0)
    assert lr_factor(50, 100, "cosine") == pytest.approx(0.5)
    assert lr_factor(100, 100, "cosine", min_factor=0.1) == pytest.approx(0.1)
    assert lr_factor(1, 100, "constant", warmup_steps=4) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="optim.schedule"):
        lr_factor(0, 10, "linear")


def test_fingerprint_is_exact():
    a = torch.randn(6, 4)
    b = a.clone()
    assert torch.equal(fingerprint(a), fingerprint(b))
    b[3, 2] = torch.nextafter(b[3, 2], torch.tensor(9.0))  # one ulp
    assert not torch.equal(fingerprint(a), fingerprint(b))
    h = fingerprint(a)
    assert int(h[0]) == -int(h[1])


def test_checkpoint_files_restore_adam_exactly(tmp_path):
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(3, 2))
    opt = torch.optim.Adam([p], lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        (p**3).sum().backward()
        opt.step()
    tensors, meta = ckpt.optimizer_to_files(opt)
    ckpt.save(str(tmp_path), {"prototypes": p, **tensors}, {"optimizer": meta, "k": 3, "d": 2})
    assert sorted(f.name for f in tmp_path.iterdir()) == ["state.json", "tensors.safetensors"]
    loaded, state = ckpt.load(str(tmp_path))
    q = torch.nn.Parameter(loaded["prototypes"].clone())
    opt2 = torch.optim.Adam([q], lr=0.5)
    ckpt.optimizer_from_files(opt2, loaded, state["optimizer"])
    for o, t in ((opt, p), (opt2, q)):
        o.zero_grad()
        (t**3).sum().backward()
        o.step()
    assert torch.equal(p, q)
    ckpt.check_shape(state, 3, 2)
    with pytest.raises(ValueError, match=r"checkpoint has k=3, d=2; this run has k=4, d=2"):
        ckpt.check_shape(state, 4, 2)
    with pytest.raises(ValueError, match="not a clam-dist checkpoint"):
        ckpt.load(str(tmp_path / "nothing"))
