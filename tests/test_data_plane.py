"""Data plane against the real local S3 server and local disk: round trips, sharding,
statistics, sampling, and every bad input the issue lists."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clam_dist.data.errors import DataError
from clam_dist.data.source import VectorSource, redact
from clam_dist.data.stats import feature_stats, sample_rows, validate
from clam_dist.data.stream import iter_batches
from clam_dist.data.writer import write_table, write_vectors
from clam_dist.datasets.synthetic import make_gaussian_mixture


@pytest.fixture(scope="module")
def mixture():
    return make_gaussian_mixture(2_000, 6, 4, seed=1)


@pytest.fixture(scope="module")
def s3_dataset(s3_server, mixture):
    x, y, _ = mixture
    url = s3_server.url("mixture")
    write_vectors(url, x, labels=y, rows_per_file=170, storage_options=s3_server.storage_options)
    return VectorSource(url, label_column="label", storage_options=s3_server.storage_options)


def read_all(source, **kw):
    batches = list(iter_batches(source, batch_rows=64, **kw))
    return (
        np.concatenate([b.ids for b in batches]),
        np.concatenate([b.x for b in batches]),
        np.concatenate([b.labels for b in batches]),
    )


def test_round_trip_through_s3(s3_dataset, mixture):
    x, y, _ = mixture
    assert (
        len(s3_dataset.files()) == 12 and s3_dataset.dim() == 6 and s3_dataset.num_rows() == 2_000
    )
    ids, got, labels = read_all(s3_dataset, shuffle=False)
    np.testing.assert_array_equal(got, x)
    np.testing.assert_array_equal(labels, y)
    assert got.dtype == np.float32 and ids[0] == "part-00000.parquet:0"


@pytest.mark.parametrize("num_shards", [1, 2, 3, 7])
def test_shards_are_disjoint_and_cover_every_row(s3_dataset, num_shards):
    seen = []
    for i in range(num_shards):
        ids, _, _ = read_all(s3_dataset, shard_index=i, num_shards=num_shards, epoch=3, seed=5)
        seen.append(ids)
    all_ids = np.concatenate(seen)
    assert all_ids.size == 2_000 and np.unique(all_ids).size == 2_000


def test_statistics_match_numpy_and_sample_is_uniform_and_deterministic(s3_dataset, mixture):
    x, y, _ = mixture
    st = feature_stats(s3_dataset)
    assert st.count == 2_000
    np.testing.assert_allclose(st.mean, x.astype(np.float64).mean(0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(st.std, x.astype(np.float64).std(0), rtol=1e-6)
    np.testing.assert_array_equal(st.min, x.min(0))
    np.testing.assert_array_equal(st.max, x.max(0))
    a, b = sample_rows(s3_dataset, 500, seed=2), sample_rows(s3_dataset, 500, seed=2)
    np.testing.assert_array_equal(a.ids, b.ids)
    assert np.unique(a.ids).size == 500
    # rows come from every file, in proportion (170 rows/file of 2000 -> 42.5 expected)
    files = np.array([i.split(":")[0] for i in a.ids])
    counts = np.unique(files, return_counts=True)[1]
    assert counts.size == 12 and counts.min() > 15
    assert sample_rows(s3_dataset, 10_000).x.shape == (2_000, 6)


def test_feature_columns_by_glob_and_explicit_id(tmp_path):
    x = np.arange(12, dtype=np.float64).reshape(4, 3)
    write_vectors(
        str(tmp_path / "cols"), x, ids=np.array([10, 11, 12, 13]), vector_layout="columns"
    )
    src = VectorSource(str(tmp_path / "cols"), feature_columns="f*", id_column="id")
    batch = next(iter_batches(src, shuffle=False))
    np.testing.assert_array_equal(batch.x, x.astype(np.float32))
    assert batch.ids.tolist() == [10, 11, 12, 13]
    auto = VectorSource(str(tmp_path / "cols"), id_column="id")
    assert auto.dim() == 3


def test_redact_hides_secrets():
    opts = {"key": "AK", "secret": "SK", "client_kwargs": {"endpoint_url": "http://127.0.0.1:1"}}
    assert redact(opts) == {
        "key": "***",
        "secret": "***",
        "client_kwargs": {"endpoint_url": "http://127.0.0.1:1"},
    }


# ---------------------------------------------------------------- bad input


def test_prefix_without_parquet(s3_server, s3_options, tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match="no Parquet files"):
        VectorSource(str(tmp_path)).files()
    with pytest.raises(DataError, match="no such file or prefix"):
        VectorSource(s3_server.url("nothing-here"), storage_options=s3_options).files()


def test_missing_and_non_numeric_columns(tmp_path):
    table = pa.table({"id": [1, 2], "name": ["a", "b"], "v": [1.0, 2.0]})
    write_table(table, str(tmp_path / "t" / "a.parquet"))
    with pytest.raises(DataError, match=r"a.parquet: vector column 'emb' not found"):
        VectorSource(str(tmp_path / "t"), vector_column="emb").dim()
    with pytest.raises(DataError, match=r"non-numeric feature column\(s\) \{'name': 'string'\}"):
        VectorSource(str(tmp_path / "t"), feature_columns=["v", "name"]).dim()
    with pytest.raises(DataError, match="expected a list of numbers"):
        VectorSource(str(tmp_path / "t"), vector_column="name").dim()


def test_mixed_widths_across_files(tmp_path):
    write_vectors(str(tmp_path / "m"), np.zeros((3, 4)), prefix="a")
    write_vectors(str(tmp_path / "m"), np.zeros((3, 5)), prefix="b")
    src = VectorSource(str(tmp_path / "m"))
    with pytest.raises(
        DataError, match=r"b-00000.parquet: vectors have width 5, but .*a-00000.parquet has 4"
    ):
        list(iter_batches(src, shuffle=False))
    report = validate(src)
    assert not report.ok and "mixed vector widths" in "; ".join(report.problems)


def test_corrupt_and_truncated_files(tmp_path):
    write_vectors(str(tmp_path / "c"), np.ones((50, 3)))
    good = (tmp_path / "c" / "part-00000.parquet").read_bytes()
    (tmp_path / "c" / "part-00001.parquet").write_bytes(good[: len(good) // 2])
    src = VectorSource(str(tmp_path / "c"))
    with pytest.raises(DataError, match=r"part-00001.parquet: not a readable Parquet file"):
        list(iter_batches(src, shuffle=False))
    assert any("part-00001.parquet" in p for p in validate(src).problems)


def test_nan_rows_error_by_default_and_drop_reports_count(tmp_path):
    x = np.ones((10, 3), dtype=np.float32)
    x[2, 1] = np.nan
    x[7, 0] = np.inf
    write_vectors(str(tmp_path / "n"), x)
    with pytest.raises(
        DataError, match=r"part-00000.parquet: 2 row\(s\) contain NaN/inf \(first rows: \[2, 7\]\)"
    ):
        list(iter_batches(VectorSource(str(tmp_path / "n"))))
    batches = list(iter_batches(VectorSource(str(tmp_path / "n"), nan_policy="drop")))
    assert sum(len(b) for b in batches) == 8 and sum(b.dropped for b in batches) == 2
    rep = validate(VectorSource(str(tmp_path / "n")))
    assert rep.nonfinite_by_feature == [1, 1, 0] and not rep.ok


def test_duplicate_ids(tmp_path):
    write_vectors(str(tmp_path / "d"), np.zeros((4, 2)), ids=np.array([1, 2, 2, 3]))
    rep = validate(VectorSource(str(tmp_path / "d"), id_column="id"))
    assert rep.duplicate_ids == 1
    with pytest.raises(DataError, match=r"id column 'id' has 1 duplicated value\(s\), e.g. \[2\]"):
        rep.raise_if_bad()


def test_unreachable_endpoint_fails_after_bounded_retries(s3_server, monkeypatch):
    from clam_dist.data import source as source_module

    monkeypatch.setattr(source_module, "RETRY_DELAY_S", 0.01)  # the count is what matters
    unreachable = {
        "key": "a",
        "secret": "b",
        "client_kwargs": {"endpoint_url": "http://127.0.0.1:9"},
        "config_kwargs": {"retries": {"max_attempts": 1}},
    }
    with pytest.raises(
        DataError, match=r"failed after 3 attempts \(endpoint unreachable\?\)"
    ) as err:
        VectorSource(s3_server.url("mixture"), storage_options=unreachable).files()
    assert "'b'" not in str(err.value)  # the secret never appears in the message


def test_pyarrow_written_list_column_is_read(tmp_path):
    table = pa.table({"emb": pa.array([[1.0, 2.0], [3.0, 4.0]], type=pa.list_(pa.float64()))})
    pq.write_table(table, tmp_path / "l.parquet")
    batch = next(iter_batches(VectorSource(str(tmp_path / "l.parquet"))))
    np.testing.assert_array_equal(batch.x, [[1, 2], [3, 4]])
