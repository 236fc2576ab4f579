"""Row ranges as the unit of work: one Parquet file (even one with a single huge row
group) feeds any number of lanes, shards, Ray Data read tasks and Dask tasks, disjointly
and covering every row once, with the same '<file>:<row>' ids as a whole-file read."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clam_dist.data import stats as stats_module
from clam_dist.data.errors import DataError
from clam_dist.data.row_keys import row_keys
from clam_dist.data.source import VectorSource
from clam_dist.data.stream import iter_batches, read_rows
from clam_dist.data.units import Unit, deal, even_parts, plan_parts, plan_units, segments
from clam_dist.train.step import LaneStream, lane_units, steps_in_epoch, take_step

D = 3
# file name -> (rows, row-group size): several row groups, one huge row group, a tiny
# file, and row groups that do not divide the rows.
LAYOUT = {"a.parquet": (300, 50), "b.parquet": (1000, 1000), "c.parquet": (7, 7)}
LAYOUT["d.parquet"] = (130, 64)


def _write(path, x: np.ndarray, row_group_size: int) -> None:
    col = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])
    pq.write_table(pa.table({"x": col}), path, row_group_size=row_group_size)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A folder with the LAYOUT files; returns (source, {id: vector})."""
    root = tmp_path_factory.mktemp("units")
    rng = np.random.default_rng(3)
    truth = {}
    for name, (rows, rg) in LAYOUT.items():
        x = rng.standard_normal((rows, D)).astype(np.float32)
        _write(root / name, x, rg)
        truth.update({f"{name}:{i}": x[i] for i in range(rows)})
    return VectorSource(str(root)), truth


@pytest.fixture(scope="module")
def one_file(tmp_path_factory):
    """ONE file, ONE row group of 2,001 rows (what `pipeline --set data.n=...` writes)."""
    root = tmp_path_factory.mktemp("one")
    x = np.random.default_rng(5).standard_normal((2_001, 4)).astype(np.float32)
    _write(root / "only.parquet", x, 2_001)
    return VectorSource(str(root)), x


def test_footers_give_row_groups(mixed):
    source, _ = mixed
    groups = source.row_group_rows()
    assert groups[source.files()[0]] == (50,) * 6
    assert groups[source.files()[1]] == (1000,)
    assert groups[source.files()[3]] == (64, 64, 2)


def test_plan_units_merges_small_and_splits_huge_row_groups():
    units = plan_units(["a", "b"], {"a": (50,) * 6, "b": (1000,)}, max_rows=120)
    assert [(u.file, u.start, u.stop) for u in units[:3]] == [
        ("a", 0, 100),
        ("a", 100, 200),
        ("a", 200, 300),
    ]
    b = [u for u in units if u.file == "b"]
    assert [u.rows for u in b] == [111, 111, 111, 111, 111, 111, 111, 111, 112]
    assert all(x.stop == y.start for x, y in zip(b, b[1:]))
    assert b[0].start == 0 and b[-1].stop == 1000
    with pytest.raises(ValueError, match="max_rows must be >= 1"):
        plan_units(["a"], {"a": 3}, max_rows=0)


@pytest.mark.parametrize("parts", [1, 2, 3, 4, 5])
def test_parts_are_disjoint_covering_and_balanced(mixed, parts):
    source, _ = mixed
    files, groups = source.files(), source.row_group_rows()
    plan = plan_parts(files, groups, parts, epoch=2, seed=9)
    assert len(plan) == parts and all(plan)  # no lane goes empty
    rows = {f: np.zeros(sum(groups[f]), dtype=int) for f in files}
    for part in plan:
        for u in part:
            rows[u.file][u.start : u.stop] += 1
    assert all((r == 1).all() for r in rows.values())
    sizes = [sum(u.rows for u in part) for part in plan]
    cap = -(-sum(sizes) // parts)  # units are at most this large: parts differ by <= 2 units
    assert max(sizes) - min(sizes) <= 2 * cap


@pytest.mark.parametrize("parts", [1, 2, 3, 7, 8, 40])
def test_even_parts_are_contiguous_covering_and_equal(mixed, parts):
    """Read tasks run side by side: equal rows (within the snap to a row-group edge),
    every row once, in file order, each part one contiguous run."""
    source, _ = mixed
    files, groups = source.files(), source.row_group_rows()
    plan = even_parts(files, groups, parts)
    assert len(plan) == parts and all(plan)
    flat = [(u.file, u.start, u.stop) for part in plan for u in part]
    expect_pos = {f: 0 for f in files}
    order = []
    for f, a, b in flat:  # consecutive and gap-free within each file, files in order
        assert a == expect_pos[f] and b > a
        expect_pos[f] = b
        if not order or order[-1] != f:
            order.append(f)
    assert order == files and all(expect_pos[f] == sum(groups[f]) for f in files)
    total = sum(sum(groups[f]) for f in files)
    sizes = [sum(u.rows for u in part) for part in plan]
    slack = 1 + int(total / parts * 0.05)  # SNAP: a cut may move to a nearby row-group edge
    assert max(sizes) - min(sizes) <= 2 * slack


def test_even_parts_snap_to_row_group_edges_and_cut_inside_when_far():
    # 10 files of 100 rows in row groups of 64 + 36: 8 parts of 125 rows.
    files = [f"f{i}" for i in range(10)]
    plan = even_parts(files, {f: (64, 36) for f in files}, 8)
    assert [sum(u.rows for u in p) for p in plan] == [125] * 8  # dealt whole files: 100/200
    assert [(u.file, u.start, u.stop) for u in plan[0]] == [("f0", 0, 100), ("f1", 0, 25)]
    # An edge within 5% of the exact cut (500 of 1,000 rows) is taken: file a ends at
    # 496, so the first part is all of a, and nobody decodes a row group twice.
    plan = even_parts(["a", "b"], {"a": (64, 432), "b": (504,)}, 2)
    assert [[(u.file, u.start, u.stop) for u in p] for p in plan] == [
        [("a", 0, 496)],
        [("b", 0, 504)],
    ]
    plan = even_parts(["a"], {"a": (470, 530)}, 2)  # the nearest edge is 30 rows away: cut
    assert [(u.start, u.stop) for p in plan for u in p] == [(0, 500), (500, 1000)]
    plan = even_parts(["a"], {"a": (1000,)}, 3)  # one huge row group: cut inside it
    assert [(u.start, u.stop) for p in plan for u in p] == [(0, 333), (333, 666), (666, 1000)]
    for groups, parts in [((2,), 5), ((1, 1), 2), ((1, 1, 1), 3), ((3, 1), 4)]:
        plan = even_parts(["a"], {"a": groups}, parts)  # never an empty part
        assert len(plan) == min(parts, sum(groups)) and all(u.rows > 0 for p in plan for u in p)
        assert sum(u.rows for p in plan for u in p) == sum(groups)
    with pytest.raises(ValueError, match="parts must be >= 1"):
        even_parts(["a"], {"a": 3}, 0)


@pytest.mark.parametrize("read_threads", [1, 3])
@pytest.mark.parametrize("n_lanes", [1, 2, 3, 4, 5])
def test_lanes_read_every_row_once_with_whole_file_ids(mixed, n_lanes, read_threads):
    """Every row once, with its own vector, whatever the lanes and however many row
    groups decode at once. Lanes hand out row KEYS (what masks need), here mapped back
    to the generated whole-file ids of the truth."""
    source, by_id = mixed
    ids = np.array(list(by_id))
    truth = dict(zip(row_keys(ids).tolist(), by_id.values()))
    streams = [
        LaneStream(source, lane, n_lanes, epoch=1, seed=4, read_rows=40, read_threads=read_threads)
        for lane in range(n_lanes)
    ]
    seen, xs, steps = [], [], 0
    while len(ids := (got := take_step(streams, 33))[1]):
        seen.extend(ids.tolist())
        xs.append(got[0])
        steps += 1
    assert len(seen) == len(set(seen)) == len(truth) == source.num_rows()
    np.testing.assert_array_equal(np.concatenate(xs), np.stack([truth[i] for i in seen]))
    files, groups = source.files(), source.row_group_rows()
    assert steps == steps_in_epoch(files, groups, n_lanes, 33, 1, 4)


def test_reading_a_row_range_inside_row_groups(mixed):
    source, truth = mixed
    d_file = source.files()[3]  # row groups 0-63, 64-127, 128-129
    got = list(read_rows(source, d_file, 60, 129, batch_rows=16))
    ids = np.concatenate([b.ids for b in got]).tolist()
    assert ids == [f"d.parquet:{i}" for i in range(60, 129)]
    np.testing.assert_array_equal(
        np.concatenate([b.x for b in got]), np.stack([truth[i] for i in ids])
    )


def test_one_file_shards_and_lanes(one_file):
    source, x = one_file
    for n in (2, 3):
        ids = []
        for i in range(n):
            batches = list(iter_batches(source, 256, shard_index=i, num_shards=n, epoch=1))
            assert batches, f"shard {i} of {n} got no rows"
            ids.append(np.concatenate([b.ids for b in batches]))
        all_ids = np.concatenate(ids)
        assert all_ids.size == np.unique(all_ids).size == len(x)
        lanes = [lane_units(source, lane, n, 0, 0) for lane in range(n)]
        assert sorted(u.rows for lane in lanes for u in lane) == sorted(
            u.rows for u in plan_units(source.files(), source.row_group_rows(), -(-2001 // n))
        )


def test_segments_merge_adjacent_units_of_a_file():
    units = [Unit("a", 0, 5), Unit("a", 5, 9), Unit("b", 0, 2), Unit("a", 9, 12)]
    assert segments(units) == [Unit("a", 0, 9), Unit("b", 0, 2), Unit("a", 9, 12)]
    three = [Unit("a", i, i + 1) for i in range(3)]
    assert [len(p) for p in deal(three, 5)] == [1, 0, 1, 0, 1]  # fewer units than parts
    assert [len(p) for p in deal([Unit("a", 0, 10), *three[1:]], 2)] == [1, 2]  # by rows


def test_dask_passes_split_one_file_into_row_range_tasks(one_file, monkeypatch):
    source, x = one_file
    monkeypatch.setattr(stats_module, "TASK_ROWS", 300)  # 2,001 rows: 7 tasks
    assert len(stats_module._units(source)) == 7
    st = stats_module.feature_stats(source, scheduler="sync")
    ref = x.astype(np.float64)
    assert st.count == len(x)
    np.testing.assert_allclose(st.mean, ref.mean(0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(st.std, ref.std(0), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(st.min, ref.min(0))
    sample = stats_module.sample_rows(source, 500, seed=1, scheduler="sync")
    assert len(sample) == 500 and np.unique(sample.ids).size == 500
    again = stats_module.sample_rows(source, 500, seed=1, scheduler="threads")
    np.testing.assert_array_equal(sample.ids, again.ids)  # the scheduler does not matter
    rows = np.array([int(i.split(":")[1]) for i in sample.ids])
    np.testing.assert_array_equal(sample.x, x[rows])


def test_ray_dataset_reads_one_file_with_two_read_tasks(ray_local, one_file):
    from clam_dist.data.ray_dataset import read_plan, to_ray_dataset

    source, x = one_file
    plan = read_plan(source, 2)
    assert len(plan) == 2 and all(p for p in plan)
    ds = to_ray_dataset(source, read_tasks=2, batch_rows=128)
    ids, xs = [], []
    for batch in ds.iter_batches(batch_size=500, batch_format="numpy"):
        ids.append(batch["id"])
        xs.append(batch["x"])
    ids = np.concatenate(ids)
    assert ids.size == len(x) and np.unique(ids).size == len(x)
    rows = np.array([int(str(i).split(":")[1]) for i in ids])
    np.testing.assert_array_equal(np.concatenate(xs), x[rows])


def test_a_corrupt_row_group_is_named_by_file_and_row_range(tmp_path):
    x = np.random.default_rng(0).standard_normal((3_000, 8)).astype(np.float32)
    path = tmp_path / "f.parquet"
    _write(path, x, 1_000)
    chunk = pq.ParquetFile(path).metadata.row_group(1).column(0)  # rows 1000-1999
    data = bytearray(path.read_bytes())
    at = chunk.data_page_offset + 100
    data[at : at + 2_000] = bytes(2_000)  # zeroed pages; the footer stays readable
    path.write_bytes(bytes(data))
    source = VectorSource(str(path))
    ok = np.concatenate([b.x for b in read_rows(source, source.files()[0], 0, 1_000)])
    np.testing.assert_array_equal(ok, x[:1_000])  # ranges before the damage still read
    with pytest.raises(DataError, match=r"f.parquet: failed reading rows 1000-2500 \(corrupt"):
        list(read_rows(source, source.files()[0], 500, 2_500, batch_rows=256))


def test_validate_splits_one_file_and_sums_per_file(tmp_path, monkeypatch):
    x = np.random.default_rng(2).standard_normal((900, 3)).astype(np.float32)
    x[[5, 450, 899], [0, 1, 1]] = np.nan
    ids = np.arange(900, dtype=np.int64)
    ids[800] = 3  # a duplicate across units
    col = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 3)
    pq.write_table(pa.table({"id": ids, "x": col}), tmp_path / "v.parquet", row_group_size=900)
    (tmp_path / "w.parquet").write_bytes(b"PAR1 not really")
    monkeypatch.setattr(stats_module, "TASK_ROWS", 200)  # 5 tasks for the one row group
    source = VectorSource(str(tmp_path), id_column="id")
    units, problems = stats_module._readable_units(source)
    assert len(units) == 5 and len(problems) == 1 and "w.parquet" in problems[0]
    rep = stats_module.validate(source, scheduler="sync")
    assert rep.rows == 900 and rep.widths == {source.files()[0]: 3}
    assert rep.nonfinite_rows == {source.files()[0]: 3} and rep.nonfinite_by_feature == [1, 2, 0]
    assert rep.duplicate_ids == 1
    assert any("w.parquet: not a readable Parquet file" in p for p in rep.problems)
