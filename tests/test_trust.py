"""What a new user meets in the first hour must never lose a file, leak a credential or
end in a traceback: one test per misuse, each asserting the exit code, the one-line
message, and that every file that existed before is unchanged (checksums), with nothing
half-written presented as complete. Assignment runs on a real local Ray."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clam_dist import ClAM
from clam_dist.artifacts import load_artifact, save_artifact
from clam_dist.assign.commit import read_assignments
from clam_dist.cli import main
from clam_dist.data.writer import write_vectors
from clam_dist.datasets.synthetic import make_gaussian_mixture

pytestmark = pytest.mark.ray

N, D, K = 1_500, 6, 3


def checksums(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def error_lines(err: str) -> list[str]:
    """stderr without the JSON-line log records: what a person reads."""
    return [line for line in err.splitlines() if line.strip() and not line.startswith("{")]


def assert_one_line(err: str, *needles: str) -> str:
    lines = error_lines(err)
    assert len(lines) == 1, lines
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A data set written by make-dataset and a model trained on it (in memory)."""
    root = tmp_path_factory.mktemp("trust")
    x, y, _ = make_gaussian_mixture(N, D, K, separation=6.0, seed=3)
    write_vectors(str(root / "data"), x, labels=y, rows_per_file=600)
    model = ClAM(n_clusters=K, epochs=1, batch_size=100, random_state=0).fit(x[:300])
    save_artifact(model.to_artifact(), str(root / "model"))
    return root, x


def assign_args(world_root: Path, out: Path, *more: str) -> list[str]:
    return [
        "assign",
        "--input",
        str(world_root / "data"),
        "--model",
        str(world_root / "model"),
        "--output",
        str(out),
        "--id-column",
        "id",
        *more,
    ]


# -- 1, 2: assignment outputs ----------------------------------------------------------


def test_01_assign_never_deletes_a_users_part_files(ray_local, world, tmp_path, capsys):
    root, _ = world
    mine = tmp_path / "mine"
    assert cli(capsys, "make-dataset", mine, "--source", "ecoli")[0] == 0
    before = checksums(mine)
    for extra in ([], ["--overwrite"]):
        code, out, err = cli(capsys, *assign_args(root, mine, *extra))
        assert code == 2
        assert_one_line(err, "ForeignOutputError", "part-00000.parquet")
        assert out == ""
        assert checksums(mine) == before


def test_02_failed_overwrite_keeps_the_committed_result(ray_local, world, tmp_path, capsys):
    root, x = world
    out = tmp_path / "out"
    assert cli(capsys, *assign_args(root, out))[0] == 0
    before = checksums(out)
    bad = tmp_path / "bad"
    x_bad = x.copy()
    x_bad[5, 2] = np.nan
    write_vectors(str(bad), x_bad, rows_per_file=600)
    argv = assign_args(root, out, "--overwrite")
    argv[argv.index("--input") + 1] = str(bad)
    code, _, err = cli(capsys, *argv)
    assert code == 1
    assert_one_line(err, "DataError", "NaN", "part-00000.parquet")
    assert checksums(out) == before  # the old result, byte for byte, and no _staging
    assert read_assignments(str(out)).num_rows == N


# -- 3, 13: make-dataset ---------------------------------------------------------------


def test_03_make_dataset_refuses_an_existing_dataset_and_replaces_it_whole(tmp_path, capsys):
    target = tmp_path / "ds"
    assert cli(capsys, "make-dataset", target, "--n", 9000, "--rows-per-file", 3000)[0] == 0
    before = checksums(target)
    code, _, err = cli(capsys, "make-dataset", target, "--n", 2000, "--seed", 1)
    assert code == 2
    assert_one_line(err, "OutputExistsError", "--overwrite")
    assert checksums(target) == before
    code = cli(capsys, "make-dataset", target, "--n", 2000, "--seed", 1, "--overwrite")[0]
    assert code == 0
    tables = [pq.read_table(p) for p in sorted(target.glob("*.parquet"))]
    assert sum(t.num_rows for t in tables) == 2000  # the old 9,000 rows are all gone
    assert json.loads((target / "_centers.json").read_text())["seed"] == 1
    (target / "notes.txt").write_text("mine")
    code, _, err = cli(capsys, "make-dataset", target, "--n", 100, "--overwrite")
    assert code == 2
    assert_one_line(err, "ForeignOutputError", "notes.txt")
    assert (target / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    "flag, value", [("--n", 0), ("--d", 0), ("--k", 0), ("--rows-per-file", 0), ("--k", 50)]
)
def test_13_make_dataset_bad_sizes_are_one_line(flag, value, tmp_path, capsys):
    argv = ["make-dataset", tmp_path / "x", "--n", 40, flag, value]
    code, out, err = cli(capsys, *argv)
    assert code == 2 and out == ""
    assert_one_line(err, "config error", flag)
    assert not (tmp_path / "x").exists()


# -- 4: credentials --------------------------------------------------------------------

KEY, SECRET = "AKIACLAMTRUSTKEY0042", "clam-trust-secret-value-9d1f"


def test_04_artifacts_checkpoints_and_summaries_carry_no_credentials(
    ray_local, world, tmp_path, capsys, monkeypatch
):
    """One Ray Train fit from a RELATIVE --data path (item 9) with credentials in its
    storage options; then every file it wrote is searched for the key and the secret."""
    root, _ = world
    monkeypatch.chdir(root)
    opts = json.dumps({"key": KEY, "secret": SECRET, "endpoint_url": "http://127.0.0.1:1"})
    code, out, err = cli(
        capsys,
        "train",
        "--data",
        "data",  # relative, as in the README
        "--k",
        K,
        "--workers",
        2,
        "--set",
        f"data.storage_options={opts}",
        "--set",
        f"run.storage_path={tmp_path / 'store'}",
        "--set",
        "optim.epochs=1",
        "--set",
        "data.init_sample=500",
    )
    assert code == 0, error_lines(err)
    written = [p for p in (tmp_path / "store").rglob("*") if p.is_file()]
    assert any(p.name == "model.json" for p in written)
    assert any(p.name == "state.json" for p in written)
    for p in written:
        data = p.read_bytes()
        assert KEY.encode() not in data and SECRET.encode() not in data, p
    meta = json.loads(next(p for p in written if p.name == "model.json").read_text())
    kept = meta["meta"]["config"]["data"]["storage_options"]
    assert kept == {"endpoint_url": "http://127.0.0.1:1"}  # where, never how to get in
    assert KEY not in out + err and SECRET not in out + err


def test_04_pipeline_run_directory_carries_no_credentials(ray_local, world, tmp_path, capsys):
    root, _ = world
    opts = json.dumps({"key": KEY, "secret": SECRET})
    run_dir = tmp_path / "run"
    code, _, err = cli(
        capsys,
        "pipeline",
        "--run-dir",
        run_dir,
        "--set",
        f"data.url={root / 'data'}",
        "--set",
        f"data.storage_options={opts}",
        "--set",
        "train.trainer=sample",
        "--set",
        f"model.n_clusters={K}",
        "--set",
        "optim.epochs=1",
        "--set",
        "eval_sample=300",
    )
    assert code == 0, error_lines(err)
    written = [p for p in run_dir.rglob("*") if p.is_file()]
    assert len(written) > 10
    for p in written:
        data = p.read_bytes()
        assert KEY.encode() not in data and SECRET.encode() not in data, p


# -- 5: pipeline stages are skipped only for the same inputs ---------------------------


def test_05_pipeline_rerun_with_another_config_is_refused(ray_local, world, tmp_path, capsys):
    root, _ = world
    run_dir = tmp_path / "run"
    base = [
        "pipeline",
        "--run-dir",
        run_dir,
        "--set",
        f"data.url={root / 'data'}",
        "--set",
        "train.trainer=sample",
        "--set",
        "optim.epochs=1",
        "--set",
        "eval_sample=300",
    ]
    assert cli(capsys, *base, "--set", "model.n_clusters=3")[0] == 0
    before = checksums(run_dir)
    code, out, err = cli(capsys, *base, "--set", "model.n_clusters=4")
    assert code == 2
    assert_one_line(err, "model.n_clusters: 3 -> 4", "--fresh")
    assert checksums(run_dir) == before
    # the same config: every stage skipped, nothing rewritten but the summary
    assert cli(capsys, *base, "--set", "model.n_clusters=3")[0] == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert all(rec.get("skipped") for rec in summary["stages"].values())
    # --fresh re-runs every stage with the new k
    assert cli(capsys, *base, "--set", "model.n_clusters=4", "--fresh")[0] == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stages"]["evaluate"]["metrics"]["k"] == 4
    assert not any(rec.get("skipped") for rec in summary["stages"].values())


def test_05_pipeline_refuses_a_run_dir_of_other_files(tmp_path, capsys):
    run_dir = tmp_path / "mine"
    run_dir.mkdir()
    (run_dir / "thesis.tex").write_text("years of work")
    code, _, err = cli(capsys, "pipeline", "--run-dir", run_dir)
    assert code == 2
    assert_one_line(err, "ForeignOutputError", "thesis.tex")
    assert [p.name for p in run_dir.iterdir()] == ["thesis.tex"]


# -- 6, 7, 10: numeric guards, duplicate ids, errors from inside Ray -------------------


def test_06_float32_overflow_is_refused_or_dropped(ray_local, world, tmp_path, capsys):
    root, x = world
    big = tmp_path / "big"
    x64 = x.astype(np.float64)
    x64[7] = 1e20  # finite, but its squared distance overflows float32
    table = pa.table(
        {
            "id": np.arange(N),
            "x": pa.FixedSizeListArray.from_arrays(pa.array(x64.reshape(-1)), D),
        }
    )
    big.mkdir()
    pq.write_table(table, big / "part-0.parquet")
    argv = assign_args(root, tmp_path / "out")
    argv[argv.index("--input") + 1] = str(big)
    code, _, err = cli(capsys, *argv)
    assert code == 1
    assert_one_line(err, "DataError", "non-finite", "'7'", "nan_policy=drop")
    assert not (tmp_path / "out").exists()  # nothing half-written, not even a folder
    code, _, err = cli(capsys, *argv, "--nan-policy", "drop")
    assert code == 0, error_lines(err)
    table = read_assignments(str(tmp_path / "out"))
    assert table.num_rows == N - 1 and 7 not in table.column("id").to_pylist()
    assert np.isfinite(table.column("distance").to_numpy()).all()


def test_07_duplicate_ids_are_refused_before_any_work(ray_local, world, tmp_path, capsys):
    root, x = world
    dup = tmp_path / "dup"
    write_vectors(str(dup), x, ids=np.arange(N) % 100, rows_per_file=600)
    argv = assign_args(root, tmp_path / "out")
    argv[argv.index("--input") + 1] = str(dup)
    code, _, err = cli(capsys, *argv)
    assert code == 2
    assert_one_line(err, "100 duplicated value(s)", "x15", "--set allow_duplicate_ids=true")
    assert not (tmp_path / "out").exists()
    assert cli(capsys, *argv, "--allow-duplicate-ids")[0] == 0


def test_10_errors_from_ray_workers_are_one_line_with_exit_1(ray_local, world, tmp_path, capsys):
    root, x = world
    bad = tmp_path / "nan"
    x_bad = x.copy()
    x_bad[[3, 900]] = np.inf
    write_vectors(str(bad), x_bad, rows_per_file=600)
    argv = assign_args(root, tmp_path / "out")
    argv[argv.index("--input") + 1] = str(bad)
    code, out, err = cli(capsys, *argv, "--log-format", "json")  # job_done on stderr too
    assert code == 1 and out == ""
    line = assert_one_line(err, "assign failed: DataError", "NaN/inf")
    # Tasks run side by side, so whichever bad file is read first names the failure; the
    # message names that file and its own bad row (row 900 is row 300 of the second file).
    assert ("part-00000.parquet" in line and "[3]" in line) or (
        "part-00001.parquet" in line and "[300]" in line
    ), line
    done = [json.loads(line) for line in err.splitlines() if '"job_done"' in line]
    assert done[-1]["exit_code"] == 1
    # the advice it gives works
    assert cli(capsys, *argv, "--set", "nan_policy=drop")[0] == 0
    assert read_assignments(str(tmp_path / "out")).num_rows == N - 2


# -- 8: artifacts whose numbers disagree -----------------------------------------------


@pytest.mark.parametrize("field, value", [("k", 7), ("beta", -5.0), ("d_model", 2)])
def test_08_inconsistent_model_json_is_refused(ray_local, world, tmp_path, capsys, field, value):
    root, _ = world
    model = tmp_path / "model"
    model.mkdir()
    for f in (root / "model").iterdir():
        (model / f.name).write_bytes(f.read_bytes())
    meta = json.loads((model / "model.json").read_text())
    meta[field] = value
    (model / "model.json").write_text(json.dumps(meta))
    argv = assign_args(root, tmp_path / "out")
    argv[argv.index("--model") + 1] = str(model)
    code, _, err = cli(capsys, *argv)
    assert code == 2
    assert_one_line(err, "ArtifactError", "model.json", field)
    assert not (tmp_path / "out").exists()


# -- 9, 11, 12: paths and columns ------------------------------------------------------


def test_09_relative_paths_are_resolved_on_the_driver(
    ray_local, world, tmp_path, capsys, monkeypatch
):
    root, _ = world
    monkeypatch.chdir(root)
    code, _, err = cli(
        capsys, "assign", "--input", "data", "--model", "model", "--output", "rel-out"
    )
    assert code == 0, error_lines(err)
    assert read_assignments(str(root / "rel-out")).num_rows == N


def test_11_feature_column_globs_work_from_flags_and_configs(ray_local, world, tmp_path, capsys):
    root, x = world
    cols = tmp_path / "cols"
    write_vectors(str(cols), x, rows_per_file=600, vector_layout="columns")
    argv = assign_args(root, tmp_path / "out", "--feature-columns", "f*")
    argv[argv.index("--input") + 1] = str(cols)
    assert cli(capsys, *argv)[0] == 0
    expected = load_artifact(str(root / "model"))
    assert expected.n_features == D
    argv = assign_args(root, tmp_path / "out2", "--set", 'feature_columns=["f*"]')
    argv[argv.index("--input") + 1] = str(cols)
    assert cli(capsys, *argv)[0] == 0
    assert read_assignments(str(tmp_path / "out2")).num_rows == N


def test_12_mixed_widths_name_both_files(ray_local, world, tmp_path, capsys):
    root, x = world
    mixed = tmp_path / "mixed"
    write_vectors(str(mixed), x[:600], rows_per_file=600)
    write_vectors(str(mixed), x[600:, :4], rows_per_file=900, prefix="wide")
    argv = assign_args(root, tmp_path / "out")[:-2]  # generated ids: no duplicates
    argv[argv.index("--input") + 1] = str(mixed)
    code, _, err = cli(capsys, *argv)
    assert code in (1, 2)
    assert_one_line(err, "part-00000.parquet", "wide-00000.parquet")
    assert not (tmp_path / "out").exists()


# -- 14, 15: after-commit failures and leftovers ---------------------------------------


def test_14_unwritable_summary_fails_before_any_work(ray_local, world, tmp_path, capsys):
    root, _ = world
    argv = assign_args(root, tmp_path / "out", "--summary", tmp_path / "no" / "such" / "s.json")
    code, _, err = cli(capsys, *argv)
    assert code == 2
    assert_one_line(err, "--summary", "does not exist", "nothing was run")
    assert not (tmp_path / "out").exists()


def test_15_refused_training_leaves_no_empty_storage_folder(ray_local, world, tmp_path, capsys):
    root, _ = world
    store = tmp_path / "fresh" / "store"
    code, out, err = cli(
        capsys,
        "train",
        "--data",
        root / "data",
        "--k",
        N + 1,
        "--workers",
        1,
        "--set",
        f"run.storage_path={store}",
    )
    assert code == 2 and out == "", error_lines(err)
    line = assert_one_line(err, f"only {N} rows", f"at most {N}")
    assert "init_sample" not in line  # no advice that cannot help
    assert not (tmp_path / "fresh").exists()


def test_15_width_mismatch_names_the_file(ray_local, world, tmp_path, capsys):
    root, x = world
    narrow = tmp_path / "narrow"
    write_vectors(str(narrow), x[:, :4], rows_per_file=600)
    argv = assign_args(root, tmp_path / "out")
    argv[argv.index("--input") + 1] = str(narrow)
    code, out, err = cli(capsys, *argv)
    assert code == 2 and out == ""
    assert_one_line(err, "width 4", "part-00000.parquet", f"expects {D}")


def test_errors_never_reach_stdout_and_tracebacks_only_with_verbose(tmp_path, capsys):
    code, out, err = cli(capsys, "make-dataset", tmp_path / "x", "--n", 0)
    assert code == 2 and out == "" and "Traceback" not in err
    code, out, err = cli(capsys, "make-dataset", tmp_path / "x", "--n", 0, "-v")
    assert code == 2 and "Traceback" in err


def test_assign_cli_accepts_what_its_messages_advise():
    from clam_dist.assign.pipeline import AssignConfig
    from clam_dist.config import load_config

    cfg = load_config(
        AssignConfig,
        None,
        ["input=a", "output=b", "model=c", "nan_policy=drop", "allow_duplicate_ids=true"],
    )
    assert cfg.nan_policy == "drop" and cfg.allow_duplicate_ids
    assert os.path.isabs(cfg.input)
