"""Outputs never take what is not ours, judged from the user's seat (issue 24, B2, B3, B5,
B11): every command runs as a real subprocess (tests/cli_harness.py).

- B2: `evaluate --report-dir` into a folder of the user's files replaces none of them;
  a re-run into its own report folder still works.
- B3: a missing bucket is the user's to create: make-dataset and assign refuse it, and
  the bucket still does not exist afterwards.
- B5: `--partition` is one path segment; `../../esc` is refused before anything is written.
- B11: a glob `--input` (and other inputs refused by cheap checks) is refused before Ray
  starts: these tests point RAY_ADDRESS at a port where nothing listens, so a command
  that reached for Ray first would fail to connect instead of printing our line.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cli_harness import checksums, fails, no_ray_env, run_cli

from clam_dist.artifacts import ModelArtifact, save_artifact
from clam_dist.assign.commit import OutputPrefix
from clam_dist.config import ConfigError
from clam_dist.data.source import VectorSource
from clam_dist.data.stream import iter_batches
from clam_dist.data.writer import write_vectors
from clam_dist.datasets.synthetic import make_gaussian_mixture
from clam_dist.models.predictor import ClusterPredictor

N, D, K = 600, 4, 3


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """Input, model and committed assignments, built in-process without Ray (setup: the
    same predictor and commit protocol the assign command uses)."""
    root = tmp_path_factory.mktemp("outputs")
    x, y, centers = make_gaussian_mixture(N, D, K, separation=5.0, seed=1)
    art = ModelArtifact(
        method="clam",
        prototypes=centers,
        n_features=D,
        beta=1.5,
        alpha=0.1,
        steps=10,
        metric="euclidean",
    )
    save_artifact(art, str(root / "model"))
    write_vectors(str(root / "in"), x, labels=y, rows_per_file=250)
    source = VectorSource(str(root / "in"), label_column="label")
    predictor = ClusterPredictor.from_artifact(art)
    prefix = OutputPrefix(str(root / "out"))
    staging = prefix.prepare(False)
    spath = prefix.staging_path(staging)
    prefix.fs.makedirs(spath, exist_ok=True)
    for i, b in enumerate(iter_batches(source, batch_rows=200, shuffle=False)):
        pred = predictor.predict(b.x, ("energy",))
        table = pa.table(
            {
                "id": pa.array(b.ids),
                "cluster": pred["cluster"],
                "distance": pred["distance"],
                "energy": pred["energy"],
            }
        )
        pq.write_table(table, f"{spath}/b{i:03d}.parquet")
    prefix.commit(staging, N, {"k": K, "columns": ["id", "cluster", "distance", "energy"]})
    return root


def evaluate_args(world: Path, report: Path) -> list[str]:
    return [
        "evaluate",
        "--input",
        str(world / "in"),
        "--assignments",
        str(world / "out"),
        "--model",
        str(world / "model"),
        "--report-dir",
        str(report),
        "--sample-size",
        "200",
        "--no-kmeans-baseline",
    ]


# -- B2: the report folder ---------------------------------------------------------------


def test_evaluate_refuses_a_folder_of_the_users_files(world, tmp_path):
    report = tmp_path / "mine"
    report.mkdir()
    (report / "index.html").write_text("<h1>my page</h1>")
    (report / "metrics.json").write_text('{"mine": true}')
    before = checksums(report)
    r = run_cli(*evaluate_args(world, report), env=no_ray_env())
    line = fails(r, 2, str(report), "index.html", "metrics.json")
    assert "did not write" in line
    assert checksums(report) == before


def test_evaluate_reruns_into_its_own_report_folder(world, tmp_path):
    report = tmp_path / "report"
    first = run_cli(*evaluate_args(world, report), env=no_ray_env())
    assert first.code == 0, first.describe()
    names = set(checksums(report))
    assert {"index.html", "metrics.json", "_SUCCESS", "_manifest.json"} <= names
    (report / "index.html").write_text("stale")
    again = run_cli(*evaluate_args(world, report), env=no_ray_env())
    assert again.code == 0, again.describe()
    again.no_ray_lines()
    assert (report / "index.html").read_text() != "stale"
    assert set(checksums(report)) == names  # replaced its own files, left nothing behind
    # a file of the user's added beside our report is never taken: refused, kept
    (report / "notes.txt").write_text("mine")
    third = run_cli(*evaluate_args(world, report), env=no_ray_env())
    fails(third, 2, "notes.txt")
    assert (report / "notes.txt").read_text() == "mine"


# -- B3: missing buckets -----------------------------------------------------------------


def _buckets(s3_server) -> set[str]:
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint_url,
        aws_access_key_id=s3_server.key,
        aws_secret_access_key=s3_server.secret,
        region_name=s3_server.region,
    )
    return {b["Name"] for b in client.list_buckets()["Buckets"]}


def _s3_env(s3_server) -> dict[str, str]:
    return no_ray_env(**s3_server.env())


def test_make_dataset_never_creates_a_bucket(s3_server):
    r = run_cli(
        "make-dataset",
        "s3://nobucket/mix",
        "--n",
        "100",
        "--d",
        "3",
        "--k",
        "2",
        "--endpoint-url",
        s3_server.endpoint_url,
        env=_s3_env(s3_server),
    )
    fails(r, 2, "nobucket", "does not exist")
    assert "nobucket" not in _buckets(s3_server)


def test_assign_never_creates_a_bucket(world, s3_server):
    r = run_cli(
        "assign",
        "--input",
        str(world / "in"),
        "--model",
        str(world / "model"),
        "--output",
        "s3://nobucket2/clusters",
        "--endpoint-url",
        s3_server.endpoint_url,
        env=_s3_env(s3_server),
    )
    fails(r, 2, "nobucket2", "does not exist")
    assert "nobucket2" not in _buckets(s3_server)


def test_a_model_is_never_saved_into_a_new_bucket(world, s3_server):
    """`train` and the pipeline save their model with save_artifact: the same rule."""
    from clam_dist.artifacts import load_artifact
    from clam_dist.data.buckets import BucketNotFoundError

    artifact = load_artifact(str(world / "model"))
    with pytest.raises(BucketNotFoundError, match="nobucket3"):
        save_artifact(artifact, "s3://nobucket3/model", s3_server.storage_options)
    assert "nobucket3" not in _buckets(s3_server)
    url = f"s3://{s3_server.bucket}/models/m1"  # an existing bucket: saved and loadable
    save_artifact(artifact, url, s3_server.storage_options)
    assert load_artifact(url, s3_server.storage_options).k == artifact.k


def test_make_dataset_into_an_existing_bucket_still_works(s3_server):
    url = s3_server.url("trust-outputs/mix")
    r = run_cli(
        "make-dataset",
        url,
        "--n",
        "100",
        "--d",
        "3",
        "--k",
        "2",
        "--endpoint-url",
        s3_server.endpoint_url,
        env=_s3_env(s3_server),
    )
    assert r.code == 0, r.describe()
    assert VectorSource(url, storage_options=s3_server.storage_options).num_rows() == 100


# -- B5: --partition is one path segment -------------------------------------------------


def test_partition_that_climbs_out_is_refused_before_anything(world, tmp_path):
    out = tmp_path / "w" / "parts" / "{partition}"
    r = run_cli(
        "assign",
        "--input",
        str(world / "in"),
        "--model",
        str(world / "model"),
        "--output",
        str(out),
        "--partition",
        "../../esc",
        env=no_ray_env(),
    )
    fails(r, 2, "--partition", "../../esc")
    assert not (tmp_path / "esc").exists() and not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    "value", ["../../esc", "..", ".", "", "a/b", "a\\b", "/abs", "x\n", "a\x00b", "tab\there"]
)
def test_partition_values_that_are_not_one_segment(value):
    from clam_dist.assign.commit import require_segment

    with pytest.raises(ConfigError, match="--partition"):
        require_segment(value, "--partition")


@pytest.mark.parametrize("value", ["date=2026-05-01", "2026-05-01", "eu_west.1", "a..b"])
def test_partition_values_that_stay_valid(value):
    from clam_dist.assign.commit import require_segment

    assert require_segment(value, "--partition") == value


# -- B11: inputs are checked before Ray starts -------------------------------------------


def test_glob_input_is_refused_before_ray(world, tmp_path):
    r = run_cli(
        "assign",
        "--input",
        str(world / "in" / "*.parquet"),
        "--model",
        str(world / "model"),
        "--output",
        str(tmp_path / "out"),
        env=no_ray_env(),
    )
    fails(r, 2, "*.parquet")
    assert not (tmp_path / "out").exists()


def test_input_of_the_wrong_width_is_refused_before_ray(world, tmp_path):
    x, _, _ = make_gaussian_mixture(50, D + 2, 2, separation=5.0, seed=2)
    write_vectors(str(tmp_path / "wide"), x)
    r = run_cli(
        "assign",
        "--input",
        str(tmp_path / "wide"),
        "--model",
        str(world / "model"),
        "--output",
        str(tmp_path / "out"),
        env=no_ray_env(),
    )
    fails(r, 2, "width", str(D + 2))
    assert not (tmp_path / "out").exists()


def test_foreign_output_is_refused_before_ray(world, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.csv").write_text("a,b\n")
    r = run_cli(
        "assign",
        "--input",
        str(world / "in"),
        "--model",
        str(world / "model"),
        "--output",
        str(out),
        env=no_ray_env(),
    )
    fails(r, 2, "keep.csv")
    assert sorted(p.name for p in out.iterdir()) == ["keep.csv"]


def test_missing_input_is_refused_before_ray(world, tmp_path):
    r = run_cli(
        "assign",
        "--input",
        str(tmp_path / "nothing"),
        "--model",
        str(world / "model"),
        "--output",
        str(tmp_path / "out"),
        env=no_ray_env(),
    )
    fails(r, 2, "nothing")
