"""Issue 24, B11: the data plane's failures as a person meets them, through a real
`clam-dist` subprocess (tests/cli_harness.py): storage without credentials, an endpoint
that cannot be reached, a ragged list column and null ids. Each failure is one line that
names the URL or file (and rows counted within the file), with the exit code of the rule
in clam_dist/errors.py: storage that cannot be used at all is exit 2 in every command."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cli_harness import CliResult, cli_env, run_cli

from clam_dist import ClAM
from clam_dist.artifacts import save_artifact

pytestmark = pytest.mark.ray

N, D = 4_000, 4
ROW_GROUP = 1_000  # row 2500 is row 500 of the third row group: a later batch
SHORT_ROW = 2_500
NULL_ROWS = (1_234, 3_000)


def no_aws_credentials_env() -> dict[str, str]:
    """The CLI's environment with no AWS credentials anywhere botocore looks: no AWS_*
    variables, no shared files, no instance metadata service (it would be waited on)."""
    env = {k: v for k, v in cli_env().items() if not k.startswith("AWS_")}
    env.update(
        AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
        AWS_CONFIG_FILE="/nonexistent",
        AWS_EC2_METADATA_DISABLED="true",
    )
    return env


def closed_port() -> int:
    """A loopback port that was bound and closed again: connections to it are refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def vectors(rng: np.random.Generator) -> list[list[float]]:
    return rng.normal(size=(N, D)).astype(np.float32).tolist()


def write_list_column(folder: Path, rows: list, ids: list | np.ndarray) -> Path:
    """One Parquet file whose vectors are a variable-length list column, in row groups of
    ROW_GROUP rows (so each row group is its own read batch)."""
    folder.mkdir(parents=True)
    table = pa.table({"id": ids, "x": pa.array(rows, type=pa.list_(pa.float32()))})
    path = folder / "part-00000.parquet"
    pq.write_table(table, path, row_group_size=ROW_GROUP)
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A small model of width D, built in-process (setup, not the CLI under test)."""
    root = tmp_path_factory.mktemp("b11-model")
    x = np.random.default_rng(1).normal(size=(300, D)).astype(np.float32)
    fitted = ClAM(n_clusters=2, epochs=1, batch_size=100, random_state=0).fit(x)
    save_artifact(fitted.to_artifact(), str(root / "model"))
    return root / "model"


def assign_args(data: Path | str, model: Path, out: Path, *more: str) -> list[str]:
    return ["assign", "--input", str(data), "--model", str(model), "--output", str(out), *more]


def pipeline_args(data: Path, run_dir: Path, *more: str) -> list[str]:
    """A pipeline that reads ``data`` and trains on a sample (no Ray before it fails)."""
    return [
        "pipeline",
        "--run-dir",
        str(run_dir),
        "--set",
        f"data.url={data}",
        "--set",
        "train.trainer=sample",
        "--set",
        "model.n_clusters=2",
        *more,
    ]


def last_line(r: CliResult) -> str:
    """The pipeline's failure line (its stage lines come before it)."""
    lines = r.human_lines()
    assert lines and "Traceback" not in r.err, r.describe()
    return lines[-1]


def message(line: str) -> str:
    """What follows the command's prefix ("assign failed: DataError: ...")."""
    assert "DataError: " in line, line
    return line.split("DataError: ", 1)[1]


# -- missing credentials ---------------------------------------------------------------


def test_missing_credentials_are_exit_2_naming_the_url_and_how(s3_server, model, tmp_path):
    """Before: make-dataset exit 1 "NoCredentialsError: Unable to locate credentials",
    inspect a line that said neither which URL nor what to do."""
    env = no_aws_credentials_env()
    endpoint = s3_server.endpoint_url
    url = s3_server.url("b11-nocreds/mix")
    runs = {
        "make-dataset": run_cli(
            "make-dataset", url, "--n", "100", "--d", "4", "--k", "2",
            "--endpoint-url", endpoint, env=env,
        ),
        "inspect": run_cli("inspect", url, "--endpoint-url", endpoint, env=env),
    }  # fmt: skip
    for command, r in runs.items():
        assert r.code == 2, r.describe()
        line = r.one_line(url, "no AWS credentials", "AWS_ACCESS_KEY_ID", "storage_options")
        assert s3_server.secret not in line and "NoCredentialsError" not in line, command
    # nothing was written: the bucket has no such prefix
    import s3fs

    fs = s3fs.S3FileSystem(**s3_server.storage_options)
    assert not fs.exists(url), fs.find(s3_server.url("b11-nocreds"))


def test_missing_credentials_in_assign_are_exit_2(s3_server, model, tmp_path, ray_address):
    env = no_aws_credentials_env()
    env["RAY_ADDRESS"] = ray_address
    url = s3_server.url("b11-nocreds/in")
    argv = assign_args(url, model, tmp_path / "out", "--endpoint-url", s3_server.endpoint_url)
    r = run_cli(*argv, env=env)
    assert r.code == 2, r.describe()
    r.one_line(url, "no AWS credentials", "AWS_ACCESS_KEY_ID", "storage_options")
    r.no_ray_lines()
    assert not (tmp_path / "out").exists()


# -- an endpoint that cannot be reached -------------------------------------------------


def test_an_unreachable_endpoint_is_exit_2_in_make_dataset_and_inspect(tmp_path):
    """One rule (clam_dist/errors.py): an endpoint that refuses every connection is a
    setup error, exit 2, in every command. Before: make-dataset exit 1, inspect exit 2.
    AWS_MAX_ATTEMPTS=1 keeps botocore from retrying, so each run returns in seconds."""
    port = closed_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = cli_env(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_MAX_ATTEMPTS="1",
        AWS_EC2_METADATA_DISABLED="true",
    )
    runs = {
        "make-dataset": run_cli(
            "make-dataset", "s3://b11-bucket/mix", "--n", "100", "--d", "4", "--k", "2",
            "--endpoint-url", endpoint, env=env, timeout=120,
        ),
        "inspect": run_cli(
            "inspect", "s3://b11-bucket/mix", "--endpoint-url", endpoint, env=env, timeout=120
        ),
    }  # fmt: skip
    for command, r in runs.items():
        assert r.code == 2, f"{command}\n{r.describe()}"
        line = r.one_line(f"127.0.0.1:{port}")
        assert "testing" not in line, line


# -- a ragged list column ----------------------------------------------------------------


@pytest.fixture
def ragged(tmp_path) -> Path:
    rows = vectors(np.random.default_rng(2))
    rows[SHORT_ROW] = rows[SHORT_ROW][:3]
    return write_list_column(tmp_path / "ragged", rows, np.arange(N))


def test_a_ragged_row_is_named_by_its_row_in_the_file(ragged, model, tmp_path, ray_address):
    """Before: "mixes vector widths (4 in row 0, 3 in row 500)", row 500 of the batch.
    Both readers say the same: the validation pass (pipeline's data stage) and the
    streaming reader (assign, inside Ray)."""
    want = (str(ragged), "column 'x'", f"row {SHORT_ROW} has 3 values", "mostly have 4")
    r = run_cli(*pipeline_args(ragged.parent, tmp_path / "run"))
    assert r.code == 1, r.describe()
    line = last_line(r)
    assert all(w in line for w in want), r.describe()
    r = run_cli(*assign_args(ragged.parent, model, tmp_path / "out"), ray_address=ray_address)
    assert r.code == 1, r.describe()
    r.one_line("assign failed: DataError", *want)
    r.no_ray_lines()
    assert not (tmp_path / "out").exists()


# -- null ids ----------------------------------------------------------------------------


@pytest.mark.parametrize("nulls", [NULL_ROWS, NULL_ROWS[:1]], ids=["two", "one"])
def test_null_string_ids_give_one_message_on_every_path(model, tmp_path, ray_address, nulls):
    """Before: the duplicate-id check said "1 duplicated value(s) ... None x2" (two
    nulls; one null passed it and failed later in a Ray worker), the reader "has 1 nulls"
    (the nulls of one batch). Now the same line from both: file, column, the file's null
    count and its first null rows; assign refuses it before any work (exit 2)."""
    ids = [f"row-{i}" for i in range(N)]
    for i in nulls:
        ids[i] = None
    path = write_list_column(tmp_path / "ids", vectors(np.random.default_rng(3)), ids)
    want = (str(path), "id column 'id'", f"{len(nulls)} null value(s)", str(list(nulls)))
    argv = assign_args(path.parent, model, tmp_path / "out", "--id-column", "id")
    r = run_cli(*argv, ray_address=ray_address)
    assert r.code == 2, r.describe()
    from_assign = r.one_line("assign failed: DataError", *want)
    r.no_ray_lines()
    assert not (tmp_path / "out").exists()
    r = run_cli(*pipeline_args(path.parent, tmp_path / "run", "--set", "data.id_column=id"))
    assert r.code == 1, r.describe()
    from_pipeline = last_line(r)
    assert message(from_assign) == message(from_pipeline), (from_assign, from_pipeline)
