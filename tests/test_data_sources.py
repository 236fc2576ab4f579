"""Data plane, second part: credentials and storage options, memory:// and column layouts,
partitioned prefixes, the Ray Data dataset on S3, and the dataset writer job."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clam_dist.data.errors import DataError
from clam_dist.data.source import VectorSource, normalize_storage_options
from clam_dist.data.stats import feature_stats, sample_rows
from clam_dist.data.stream import iter_batches
from clam_dist.data.writer import write_vectors
from clam_dist.datasets.synthetic import make_gaussian_mixture


def read_all(source, **kw):
    batches = list(iter_batches(source, batch_rows=100, shuffle=False, **kw))
    return np.concatenate([b.ids for b in batches]), np.concatenate([b.x for b in batches])


def test_wrong_credentials_name_the_url_and_never_the_secret(monkeypatch):
    """A server that checks signatures (moto with auth on) refuses an unknown key."""
    from clam_dist.data.local_s3 import local_s3

    # Only the bucket creation goes through without auth; every later request is checked.
    monkeypatch.setenv("INITIAL_NO_AUTH_ACTION_COUNT", "1")
    with local_s3(bucket="locked") as s3:
        opts = {**s3.storage_options, "secret": "s3cr3t-value"}
        with pytest.raises(DataError, match=r"listing s3://locked/data: access denied") as err:
            VectorSource(s3.url("data"), storage_options=opts).files()
    assert "s3cr3t-value" not in str(err.value)


def test_friendly_s3_options_reach_the_server(s3_server):
    write_vectors(
        s3_server.url("friendly"),
        np.eye(3),
        rows_per_file=2,
        storage_options=s3_server.storage_options,
    )
    opts = {
        "key": s3_server.key,
        "secret": s3_server.secret,
        "endpoint_url": s3_server.endpoint_url,
        "region": "us-east-1",
    }
    src = VectorSource(s3_server.url("friendly"), storage_options=opts)
    assert src.num_rows() == 3 and src.dim() == 3
    assert normalize_storage_options("s3", {"anonymous": True, "region": "eu-west-1"}) == {
        "anon": True,
        "client_kwargs": {"region_name": "eu-west-1"},
    }
    # Other protocols get the dict untouched.
    assert normalize_storage_options("memory", {"region": "x"}) == {"region": "x"}


def test_unknown_or_missing_filesystem_is_a_clear_error():
    with pytest.raises(DataError, match=r"nope://b/x: cannot open this URL"):
        VectorSource("nope://b/x").files()
    try:
        import gcsfs  # noqa: F401
    except ImportError:
        with pytest.raises(DataError, match=r"gs://b/x: the gs:// filesystem is not installed"):
            VectorSource("gs://b/x").files()


def test_memory_url_with_feature_columns_matches_numpy():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(333, 5)) * [1, 10, 100, 0.1, 3] + [0, -5, 50, 1, 2]
    url = "memory://data-plane-test/cols"
    write_vectors(url, x, rows_per_file=50, vector_layout="columns")
    src = VectorSource(url, id_column="id")  # auto-detect: every numeric column but the id
    ids, got = read_all(src)
    np.testing.assert_array_equal(got, x.astype(np.float32))
    np.testing.assert_array_equal(ids, np.arange(333))
    st = feature_stats(src)
    ref = x.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(st.mean, ref.mean(0), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(st.std, ref.std(0), rtol=1e-9)
    assert st.count == 333 and st.to_dict()["count"] == 333
    again = type(st).from_dict(json.loads(json.dumps(st.to_dict())))
    np.testing.assert_array_equal(again.max, st.max)


def test_partition_folders_get_distinct_ids_and_hidden_files_are_skipped(tmp_path):
    for day in ("date=1", "date=2"):
        write_vectors(str(tmp_path / "p" / day), np.ones((4, 2)) * int(day[-1]))
    write_vectors(str(tmp_path / "p" / "_staging"), np.zeros((9, 2)))  # unfinished output
    src = VectorSource(str(tmp_path / "p"))
    assert [src.file_key(f) for f in src.files()] == [
        "date=1/part-00000.parquet",
        "date=2/part-00000.parquet",
    ]
    ids, x = read_all(src)
    assert len(set(ids.tolist())) == 8 and ids[0] == "date=1/part-00000.parquet:0"
    assert x.sum() == 4 * 2 * 1 + 4 * 2 * 2
    # Ids depend on the URL given, not on which partitions exist yet.
    one_file = VectorSource(str(tmp_path / "p" / "date=1" / "part-00000.parquet"))
    assert next(iter_batches(one_file)).ids[0] == "part-00000.parquet:0"
    one_of_two = VectorSource([str(tmp_path / "p" / "date=1"), str(tmp_path / "p" / "date=2")])
    assert read_all(one_of_two)[0][0] == "date=1/part-00000.parquet:0"


def test_ambiguous_list_columns_and_null_ids(tmp_path):
    import pyarrow as pa

    from clam_dist.data.writer import write_table

    two_lists = pa.table({"a": [[1.0, 2.0]], "b": [[3.0, 4.0]]})
    write_table(two_lists, str(tmp_path / "two" / "t.parquet"))
    with pytest.raises(DataError, match=r"several list columns \['a', 'b'\].*vector_column"):
        VectorSource(str(tmp_path / "two")).dim()
    assert VectorSource(str(tmp_path / "two"), vector_column="b").dim() == 2
    null_ids = pa.table({"id": [1, None], "v": [1.0, 2.0]})
    write_table(null_ids, str(tmp_path / "nid" / "t.parquet"))
    with pytest.raises(
        DataError, match=r"t.parquet: id column 'id' has 1 null value\(s\) \(first rows: \[1\]\)"
    ):
        list(iter_batches(VectorSource(str(tmp_path / "nid"), id_column="id")))


def test_drop_policy_statistics_report_dropped_rows(tmp_path):
    x = np.arange(30, dtype=np.float64).reshape(10, 3)
    x[4, 2] = np.nan
    write_vectors(str(tmp_path / "n"), x, rows_per_file=3)
    st = feature_stats(VectorSource(str(tmp_path / "n"), nan_policy="drop"))
    keep = np.isfinite(x).all(1)
    assert st.count == 9 and st.dropped == 1
    np.testing.assert_allclose(st.mean, x[keep].mean(0))
    with pytest.raises(DataError, match=r"part-00001.parquet: 1 row\(s\) contain NaN/inf"):
        feature_stats(VectorSource(str(tmp_path / "n")))


def test_sample_is_uniform_over_rows(tmp_path):
    """Files of very different sizes: each row, not each file, is equally likely."""
    write_vectors(str(tmp_path / "u"), np.zeros((900, 1)), prefix="big")
    write_vectors(str(tmp_path / "u"), np.zeros((100, 1)), prefix="small")
    src = VectorSource(str(tmp_path / "u"))
    small = [
        np.mean([i.startswith("small") for i in sample_rows(src, 100, seed=s).ids])
        for s in range(20)
    ]
    assert abs(np.mean(small) - 0.1) < 0.03  # 2000 draws: std of the mean ~0.007


def test_ray_dataset_from_local_s3(ray_local, s3_server):
    x, y, _ = make_gaussian_mixture(1_000, 4, 3, seed=2)
    url = s3_server.url("ray-ds")
    write_vectors(url, x, labels=y, rows_per_file=300, storage_options=s3_server.storage_options)
    src = VectorSource(url, label_column="label", storage_options=s3_server.storage_options)
    from clam_dist.data.ray_dataset import to_ray_dataset

    ds = to_ray_dataset(src, columns_extra=["id"])
    ids, xs, labels = [], [], []
    for batch in ds.iter_batches(batch_size=256, batch_format="numpy"):
        assert batch["x"].dtype == np.float32 and batch["x"].shape[1] == 4
        ids.append(batch["id"])
        xs.append(batch["x"])
        labels.append(batch["label"])
    ids = np.concatenate(ids).astype(np.int64)
    order = np.argsort(ids)
    np.testing.assert_array_equal(ids[order], np.arange(1_000))
    np.testing.assert_array_equal(np.concatenate(xs)[order], x)
    np.testing.assert_array_equal(np.concatenate(labels)[order], y)


def test_make_dataset_job_writes_mixture_and_paper_sets(s3_server, monkeypatch):
    from clam_dist.cli import main
    from clam_dist.datasets.clam_paper import load_clam_paper

    # Credentials through the standard chain (environment), only the endpoint as a flag.
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    url = s3_server.url("made/mix")
    args = ["--n", "2500", "--d", "3", "--k", "4", "--rows-per-file", "1000", "--seed", "7"]
    assert main(["make-dataset", url, *args, "--endpoint-url", s3_server.endpoint_url]) == 0
    src = VectorSource(url, label_column="label", storage_options=s3_server.storage_options)
    assert len(src.files()) == 3 and src.num_rows() == 2500
    meta = json.loads(src.filesystem().cat(f"{s3_server.bucket}/made/mix/_centers.json"))
    centers = np.asarray(meta["centers"])
    _, x = read_all(src)
    labels = np.concatenate([b.labels for b in iter_batches(src, shuffle=False)])
    # The true centres are the per-label means (unit noise, 2500 rows).
    for j in range(4):
        np.testing.assert_allclose(x[labels == j].mean(0), centers[j], atol=0.25)

    assert main(["make-dataset", "memory://made/ecoli", "--source", "ecoli"]) == 0
    ref_x, ref_y = load_clam_paper("ecoli")
    paper = VectorSource("memory://made/ecoli", label_column="label")
    got = list(iter_batches(paper, shuffle=False))
    np.testing.assert_array_equal(np.concatenate([b.x for b in got]), ref_x.astype(np.float32))
    np.testing.assert_array_equal(np.concatenate([b.labels for b in got]), ref_y)


def test_writer_checks_shapes_and_leaves_no_temporary_files(tmp_path):
    with pytest.raises(ValueError, match=r"labels has 2 entries but x has 3 rows"):
        write_vectors(str(tmp_path / "w"), np.zeros((3, 2)), labels=np.zeros(2))
    with pytest.raises(ValueError, match=r"2-D"):
        write_vectors(str(tmp_path / "w"), np.zeros(3))
    urls = write_vectors(str(tmp_path / "w"), np.zeros((5, 2)), rows_per_file=2)
    assert len(urls) == 3
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == [
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]


def test_width_of_a_variable_length_list_is_read_once(tmp_path, monkeypatch):
    """A list<float> column has no width in its schema: dim() decodes the first row group
    for it, once per source however often a job asks (checks, read plan, batch sizes)."""
    rows = pa.array([[1.0, 2.0, 3.0]] * 4, type=pa.list_(pa.float32()))
    pq.write_table(pa.table({"v": rows}), tmp_path / "a.parquet")
    source = VectorSource(str(tmp_path))
    opened = []
    real = VectorSource.parquet_file
    monkeypatch.setattr(
        VectorSource, "parquet_file", lambda self, path: opened.append(path) or real(self, path)
    )
    assert source.dim() == 3
    assert opened, "the first call decodes the first file's first row group"
    opened.clear()
    assert source.dim() == 3 and source.dim() == 3
    assert opened == []


def _without_aws_credentials(monkeypatch) -> None:
    """No credentials anywhere botocore's chain looks (nor the instance metadata service,
    which it would wait on)."""
    import os

    for name in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def test_an_s3_url_without_any_credentials_is_refused_naming_it(s3_server, monkeypatch):
    """Refused when the filesystem is opened, before any request; options that carry
    their own credentials (or need none) are left to s3fs."""
    from clam_dist.data.source import open_filesystem

    _without_aws_credentials(monkeypatch)
    url = s3_server.url("nocreds/data")
    endpoint = {"endpoint_url": s3_server.endpoint_url}
    with pytest.raises(DataError, match=r"s3://clam-test/nocreds/data: no AWS credentials") as e:
        open_filesystem(url, endpoint)
    assert "AWS_ACCESS_KEY_ID" in str(e.value) and "storage_options" in str(e.value)
    with pytest.raises(DataError, match="no AWS credentials"):
        VectorSource(url, storage_options=endpoint).files()
    assert open_filesystem(url, s3_server.storage_options)[1] == "clam-test/nocreds/data"
    assert open_filesystem(url, {**endpoint, "anon": True})[1] == "clam-test/nocreds/data"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret)
    assert open_filesystem(url, endpoint)[1] == "clam-test/nocreds/data"


def _ragged(tmp_path, short_row: int = 2_500, n: int = 4_000):
    """A variable-length list column, row groups of 1000 rows, one short row."""
    rows = np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32).tolist()
    rows[short_row] = rows[short_row][:3]
    folder = tmp_path / "ragged"
    folder.mkdir()
    table = pa.table({"x": pa.array(rows, type=pa.list_(pa.float32()))})
    pq.write_table(table, folder / "part-0.parquet", row_group_size=1_000)
    return VectorSource(str(folder)), str(folder / "part-0.parquet")


@pytest.mark.parametrize("short_row", [2_500, 2_000], ids=["inside", "first-of-batch"])
def test_a_ragged_row_is_counted_in_the_file_by_every_reader(tmp_path, short_row):
    """The row is the file's (not the batch's), also when it is a batch's first row (the
    width most rows have is the norm, not the first row's)."""
    from clam_dist.data.stats import validate

    source, file = _ragged(tmp_path, short_row)
    want = f"{file}: column 'x' mixes vector widths: row {short_row} has 3 values"
    with pytest.raises(DataError, match=want):
        read_all(source)
    assert validate(source, scheduler="sync").problems[0].startswith(want)


def test_null_ids_are_one_message_from_the_reader_and_the_duplicate_check(tmp_path):
    from clam_dist.data.duplicates import find_duplicates
    from clam_dist.data.stats import validate

    ids = [f"r{i}" for i in range(3_000)]
    ids[1_500] = ids[2_999] = None
    x = np.zeros((3_000, 2), np.float32)
    (tmp_path / "ids").mkdir()
    table = pa.table({"id": ids, "x": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 2)})
    pq.write_table(table, tmp_path / "ids" / "p.parquet", row_group_size=1_000)
    source = VectorSource(str(tmp_path / "ids"), id_column="id")
    messages = set()
    for read in (
        read_all,
        lambda s: find_duplicates(s, "id"),
        lambda s: validate(s).raise_if_bad(),
    ):
        with pytest.raises(DataError) as e:
            read(source)
        messages.add(str(e.value))
    assert len(messages) == 1, messages
    assert (
        "p.parquet: id column 'id' has 2 null value(s) (first rows: [1500, 2999])" in messages.pop()
    )
