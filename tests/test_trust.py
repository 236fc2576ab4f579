"""What a new user meets in the first hour must never lose a file, leak a credential or
end in a traceback, judged from the user's seat: every test runs `clam-dist` as a real
subprocess (tests/cli_harness.py) and reads stdout and stderr at the descriptor level,
so Ray's own loggers, worker output and stack dumps are seen as a shell shows them.

Every CLI run in this file asserts its exit code and that nothing of Ray's reaches either
stream (``no_ray_lines``); every failure asserts exactly one line on stderr naming the
problem, nothing on stdout and no traceback (``one_line``). Every test that runs against
files that already exist (the shared data set and model, a user's folder, a committed
output, a run directory) asserts that each of those files is byte-for-byte unchanged
(``checksums``), unless replacing it is the point of the test (``--overwrite``,
``--fresh``), and that nothing half-written is presented as complete.

Commands that need Ray join the module's cluster (the ``ray_address`` fixture), except
where a test's point is what a new user sees: a local Ray started by the command itself
(the worker-error tests and one training run)."""

from __future__ import annotations

import json
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cli_harness import checksums, fails, ok, run_cli, start_cli

from clam_dist import ClAM, __version__
from clam_dist.artifacts import load_artifact, save_artifact
from clam_dist.assign.commit import read_assignments
from clam_dist.data.writer import write_vectors
from clam_dist.datasets.synthetic import make_gaussian_mixture

pytestmark = pytest.mark.ray

N, D, K = 1_500, 6, 3


@dataclass
class World:
    """A data set and a model shared by the module's tests; read, never written."""

    root: Path
    x: np.ndarray
    sums: dict[str, dict[str, str]] = field(default_factory=dict)

    def checksums(self) -> dict[str, dict[str, str]]:
        return {name: checksums(self.root / name) for name in ("data", "model")}

    def assert_unchanged(self) -> None:
        assert self.checksums() == self.sums


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    """A data set written as make-dataset writes it and a model trained on it, both built
    in-process (setup, not the CLI under test)."""
    root = tmp_path_factory.mktemp("trust")
    x, y, _ = make_gaussian_mixture(N, D, K, separation=6.0, seed=3)
    write_vectors(str(root / "data"), x, labels=y, rows_per_file=600)
    model = ClAM(n_clusters=K, epochs=1, batch_size=100, random_state=0).fit(x[:300])
    save_artifact(model.to_artifact(), str(root / "model"))
    w = World(root, x)
    w.sums = w.checksums()
    return w


def assign_args(
    world: World, out: Path, *more: str, data: Path | None = None, model: Path | None = None
) -> list[str]:
    """`assign` of ``data`` (default: the world's) with ``model`` (default: the world's)."""
    return [
        "assign",
        "--input",
        str(data or world.root / "data"),
        "--model",
        str(model or world.root / "model"),
        "--output",
        str(out),
        "--id-column",
        "id",
        *more,
    ]


def train_args(world: World, store: Path, *more: str) -> list[str]:
    """A small `train` of the world's data into ``store``."""
    return [
        "train",
        "--data",
        str(world.root / "data"),
        "--k",
        str(K),
        "--workers",
        "1",
        "--set",
        f"run.storage_path={store}",
        "--set",
        "data.init_sample=500",
        *more,
    ]


# -- 1, 2: assignment outputs ----------------------------------------------------------


def test_01_assign_never_deletes_a_users_part_files(ray_address, world, tmp_path):
    mine = tmp_path / "mine"
    ok(run_cli("make-dataset", mine, "--source", "ecoli"))
    before = checksums(mine)
    for extra in ([], ["--overwrite"]):
        r = run_cli(*assign_args(world, mine, *extra), ray_address=ray_address)
        fails(r, 2, "ForeignOutputError", "part-00000.parquet")
        assert r.out == ""
        assert checksums(mine) == before
    world.assert_unchanged()


def test_02_failed_overwrite_keeps_the_committed_result(ray_address, world, tmp_path):
    out = tmp_path / "out"
    ok(run_cli(*assign_args(world, out), ray_address=ray_address))
    before = checksums(out)
    bad = tmp_path / "bad"
    x_bad = world.x.copy()
    x_bad[5, 2] = np.nan
    write_vectors(str(bad), x_bad, rows_per_file=600)
    bad_before = checksums(bad)
    r = run_cli(*assign_args(world, out, "--overwrite", data=bad), ray_address=ray_address)
    fails(r, 1, "DataError", "NaN", "part-00000.parquet")
    assert checksums(out) == before  # the old result, byte for byte, and no _staging
    assert read_assignments(str(out)).num_rows == N
    assert checksums(bad) == bad_before
    world.assert_unchanged()


# -- 3, 13: make-dataset ---------------------------------------------------------------


def test_03_make_dataset_refuses_an_existing_dataset_and_replaces_it_whole(tmp_path):
    target = tmp_path / "ds"
    ok(run_cli("make-dataset", target, "--n", 9000, "--rows-per-file", 3000))
    before = checksums(target)
    r = run_cli("make-dataset", target, "--n", 2000, "--seed", 1)
    fails(r, 2, "OutputExistsError", "--overwrite")
    assert checksums(target) == before
    ok(run_cli("make-dataset", target, "--n", 2000, "--seed", 1, "--overwrite"))
    tables = [pq.read_table(p) for p in sorted(target.glob("*.parquet"))]
    assert sum(t.num_rows for t in tables) == 2000  # the old 9,000 rows are all gone
    assert json.loads((target / "_centers.json").read_text())["seed"] == 1
    (target / "notes.txt").write_text("mine")
    before = checksums(target)
    r = run_cli("make-dataset", target, "--n", 100, "--overwrite")
    fails(r, 2, "ForeignOutputError", "notes.txt")
    assert (target / "notes.txt").read_text() == "mine"
    assert checksums(target) == before  # the refusal touched none of the data set either


@pytest.mark.parametrize(
    "flag, value", [("--n", 0), ("--d", 0), ("--k", 0), ("--rows-per-file", 0), ("--k", 50)]
)
def test_13_make_dataset_bad_sizes_are_one_line(flag, value, tmp_path):
    r = run_cli("make-dataset", tmp_path / "x", "--n", 40, flag, value)
    fails(r, 2, "config error", flag)
    assert r.out == ""
    assert not (tmp_path / "x").exists()


# -- 4: credentials --------------------------------------------------------------------

KEY, SECRET = "AKIACLAMTRUSTKEY0042", "clam-trust-secret-value-9d1f"


def test_04_artifacts_checkpoints_and_summaries_carry_no_credentials(ray_address, world, tmp_path):
    """One Ray Train fit from a RELATIVE --data path (item 9) with credentials in its
    storage options; then every file it wrote is searched for the key and the secret."""
    opts = json.dumps({"key": KEY, "secret": SECRET, "endpoint_url": "http://127.0.0.1:1"})
    r = run_cli(
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
        cwd=world.root,
        ray_address=ray_address,
    )
    ok(r)
    written = [p for p in (tmp_path / "store").rglob("*") if p.is_file()]
    assert any(p.name == "model.json" for p in written)
    assert any(p.name == "state.json" for p in written)
    for p in written:
        data = p.read_bytes()
        assert KEY.encode() not in data and SECRET.encode() not in data, p
    meta = json.loads(next(p for p in written if p.name == "model.json").read_text())
    kept = meta["meta"]["config"]["data"]["storage_options"]
    assert kept == {"endpoint_url": "http://127.0.0.1:1"}  # where, never how to get in
    assert KEY not in r.out + r.err and SECRET not in r.out + r.err
    world.assert_unchanged()


def test_04_pipeline_run_directory_carries_no_credentials(ray_address, world, tmp_path):
    opts = json.dumps({"key": KEY, "secret": SECRET})
    run_dir = tmp_path / "run"
    r = run_cli(
        "pipeline",
        "--run-dir",
        run_dir,
        "--set",
        f"data.url={world.root / 'data'}",
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
        ray_address=ray_address,
    )
    ok(r)
    written = [p for p in run_dir.rglob("*") if p.is_file()]
    assert len(written) > 10
    for p in written:
        data = p.read_bytes()
        assert KEY.encode() not in data and SECRET.encode() not in data, p
    assert KEY not in r.out + r.err and SECRET not in r.out + r.err
    world.assert_unchanged()


# -- 5: pipeline stages are skipped only for the same inputs ---------------------------

# What a re-run whose every stage is skipped still writes: its summary and its records.
RERUN_WRITES = ("summary.json", "logs/")


def _kept(sums: dict[str, str]) -> dict[str, str]:
    return {p: s for p, s in sums.items() if not p.startswith(RERUN_WRITES)}


def test_05_pipeline_rerun_with_another_config_is_refused(ray_address, world, tmp_path):
    run_dir = tmp_path / "run"
    base = [
        "pipeline",
        "--run-dir",
        run_dir,
        "--set",
        f"data.url={world.root / 'data'}",
        "--set",
        "train.trainer=sample",
        "--set",
        "optim.epochs=1",
        "--set",
        "eval_sample=300",
    ]
    ok(run_cli(*base, "--set", "model.n_clusters=3", ray_address=ray_address))
    before = checksums(run_dir)
    r = run_cli(*base, "--set", "model.n_clusters=4", ray_address=ray_address)
    fails(r, 2, "model.n_clusters: 3 -> 4", "--fresh")
    assert checksums(run_dir) == before
    # the same config: every stage skipped, nothing rewritten but the summary
    ok(run_cli(*base, "--set", "model.n_clusters=3", ray_address=ray_address))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert all(rec.get("skipped") for rec in summary["stages"].values())
    assert _kept(checksums(run_dir)) == _kept(before)
    # --fresh re-runs every stage with the new k
    ok(run_cli(*base, "--set", "model.n_clusters=4", "--fresh", ray_address=ray_address))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stages"]["evaluate"]["metrics"]["k"] == 4
    assert not any(rec.get("skipped") for rec in summary["stages"].values())
    world.assert_unchanged()


def test_05_pipeline_refuses_a_run_dir_of_other_files(tmp_path):
    run_dir = tmp_path / "mine"
    run_dir.mkdir()
    (run_dir / "thesis.tex").write_text("years of work")
    before = checksums(run_dir)
    r = run_cli("pipeline", "--run-dir", run_dir)
    fails(r, 2, "ForeignOutputError", "thesis.tex")
    assert [p.name for p in run_dir.iterdir()] == ["thesis.tex"]
    assert checksums(run_dir) == before


# -- 6, 7, 10: numeric guards, duplicate ids, errors from inside Ray -------------------


def test_06_float32_overflow_is_refused_or_dropped(ray_address, world, tmp_path):
    big = tmp_path / "big"
    x64 = world.x.astype(np.float64)
    x64[7] = 1e20  # finite, but its squared distance overflows float32
    table = pa.table(
        {
            "id": np.arange(N),
            "x": pa.FixedSizeListArray.from_arrays(pa.array(x64.reshape(-1)), D),
        }
    )
    big.mkdir()
    pq.write_table(table, big / "part-0.parquet")
    big_before = checksums(big)
    argv = assign_args(world, tmp_path / "out", data=big)
    r = run_cli(*argv, ray_address=ray_address)
    fails(r, 1, "DataError", "non-finite", "'7'", "nan_policy=drop")
    assert not (tmp_path / "out").exists()  # nothing half-written, not even a folder
    ok(run_cli(*argv, "--nan-policy", "drop", ray_address=ray_address))
    table = read_assignments(str(tmp_path / "out"))
    assert table.num_rows == N - 1 and 7 not in table.column("id").to_pylist()
    assert np.isfinite(table.column("distance").to_numpy()).all()
    assert checksums(big) == big_before
    world.assert_unchanged()


def test_07_duplicate_ids_are_refused_before_any_work(ray_address, world, tmp_path):
    dup = tmp_path / "dup"
    write_vectors(str(dup), world.x, ids=np.arange(N) % 100, rows_per_file=600)
    dup_before = checksums(dup)
    argv = assign_args(world, tmp_path / "out", data=dup)
    r = run_cli(*argv, ray_address=ray_address)
    fails(r, 2, "100 duplicated value(s)", "x15", "--set allow_duplicate_ids=true")
    assert not (tmp_path / "out").exists()
    ok(run_cli(*argv, "--allow-duplicate-ids", ray_address=ray_address))
    assert checksums(dup) == dup_before
    world.assert_unchanged()


def test_assign_accepts_what_its_messages_advise(ray_address, world, tmp_path):
    """The `--set` forms the messages advise (nan_policy=drop, allow_duplicate_ids=true)
    are accepted as written, with a relative --input resolved on the driver."""
    both = tmp_path / "both"
    x_bad = world.x.copy()
    x_bad[11] = np.nan
    write_vectors(str(both), x_bad, ids=np.arange(N) % 100, rows_per_file=600)
    both_before = checksums(both)
    r = run_cli(
        *assign_args(world, tmp_path / "out", data=Path("both")),
        "--set",
        "nan_policy=drop",
        "--set",
        "allow_duplicate_ids=true",
        cwd=tmp_path,
        ray_address=ray_address,
    )
    ok(r)
    assert read_assignments(str(tmp_path / "out")).num_rows == N - 1
    assert checksums(both) == both_before
    world.assert_unchanged()


def test_10_errors_from_ray_workers_are_one_line_with_exit_1(ray_address, world, tmp_path):
    """The failing run starts its own local Ray, as a new user's does."""
    bad = tmp_path / "nan"
    x_bad = world.x.copy()
    x_bad[[3, 900]] = np.inf
    write_vectors(str(bad), x_bad, rows_per_file=600)
    bad_before = checksums(bad)
    argv = assign_args(world, tmp_path / "out", data=bad)
    r = run_cli(*argv, "--log-format", "json")  # job_done on stderr too
    line = fails(r, 1, "assign failed: DataError", "NaN/inf")
    assert r.out == ""
    # Tasks run side by side, so whichever bad file is read first names the failure; the
    # message names that file and its own bad row (row 900 is row 300 of the second file).
    assert ("part-00000.parquet" in line and "[3]" in line) or (
        "part-00001.parquet" in line and "[300]" in line
    ), line
    done = [e for e in r.events() if e["event"] == "job_done"]
    assert done[-1]["exit_code"] == 1
    assert not (tmp_path / "out").exists()
    # the advice it gives works
    ok(run_cli(*argv, "--set", "nan_policy=drop", ray_address=ray_address))
    assert read_assignments(str(tmp_path / "out")).num_rows == N - 2
    assert checksums(bad) == bad_before
    world.assert_unchanged()


# -- 8: artifacts whose numbers disagree -----------------------------------------------


@pytest.mark.parametrize("field, value", [("k", 7), ("beta", -5.0), ("d_model", 2)])
def test_08_inconsistent_model_json_is_refused(ray_address, world, tmp_path, field, value):
    model = tmp_path / "model"
    model.mkdir()
    for f in (world.root / "model").iterdir():
        (model / f.name).write_bytes(f.read_bytes())
    meta = json.loads((model / "model.json").read_text())
    meta[field] = value
    (model / "model.json").write_text(json.dumps(meta))
    model_before = checksums(model)
    r = run_cli(*assign_args(world, tmp_path / "out", model=model), ray_address=ray_address)
    fails(r, 2, "ArtifactError", "model.json", field)
    assert not (tmp_path / "out").exists()
    assert checksums(model) == model_before
    world.assert_unchanged()


# -- 9, 11, 12: paths and columns ------------------------------------------------------


def test_09_relative_paths_are_resolved_on_the_driver(ray_address, world, tmp_path):
    r = run_cli(
        "assign",
        "--input",
        "data",
        "--model",
        "model",
        "--output",
        "rel-out",
        cwd=world.root,
        ray_address=ray_address,
    )
    ok(r)
    assert read_assignments(str(world.root / "rel-out")).num_rows == N
    world.assert_unchanged()


def test_11_feature_column_globs_work_from_flags_and_configs(ray_address, world, tmp_path):
    cols = tmp_path / "cols"
    write_vectors(str(cols), world.x, rows_per_file=600, vector_layout="columns")
    cols_before = checksums(cols)
    argv = assign_args(world, tmp_path / "out", "--feature-columns", "f*", data=cols)
    ok(run_cli(*argv, ray_address=ray_address))
    expected = load_artifact(str(world.root / "model"))
    assert expected.n_features == D
    argv = assign_args(world, tmp_path / "out2", "--set", 'feature_columns=["f*"]', data=cols)
    ok(run_cli(*argv, ray_address=ray_address))
    assert read_assignments(str(tmp_path / "out2")).num_rows == N
    assert checksums(cols) == cols_before
    world.assert_unchanged()


def test_12_mixed_widths_name_both_files(ray_address, world, tmp_path):
    mixed = tmp_path / "mixed"
    write_vectors(str(mixed), world.x[:600], rows_per_file=600)
    write_vectors(str(mixed), world.x[600:, :4], rows_per_file=900, prefix="wide")
    mixed_before = checksums(mixed)
    argv = assign_args(world, tmp_path / "out", data=mixed)[:-2]  # generated ids
    r = run_cli(*argv, ray_address=ray_address)
    assert r.code in (1, 2), r.describe()
    r.one_line("part-00000.parquet", "wide-00000.parquet")
    r.no_ray_lines()
    assert not (tmp_path / "out").exists()
    assert checksums(mixed) == mixed_before
    world.assert_unchanged()


# -- 14, 15: after-commit failures and leftovers ---------------------------------------


def test_14_unwritable_summary_fails_before_any_work(ray_address, world, tmp_path):
    argv = assign_args(world, tmp_path / "out", "--summary", tmp_path / "no" / "such" / "s.json")
    r = run_cli(*argv, ray_address=ray_address)
    fails(r, 2, "--summary", "does not exist", "nothing was run")
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "no").exists()
    world.assert_unchanged()


def test_15_refused_training_leaves_no_empty_storage_folder(ray_address, world, tmp_path):
    store = tmp_path / "fresh" / "store"
    r = run_cli(
        "train",
        "--data",
        world.root / "data",
        "--k",
        N + 1,
        "--workers",
        1,
        "--set",
        f"run.storage_path={store}",
        ray_address=ray_address,
    )
    line = fails(r, 2, f"only {N} rows", f"at most {N}")
    assert r.out == ""
    assert "init_sample" not in line  # no advice that cannot help
    assert not (tmp_path / "fresh").exists()
    world.assert_unchanged()


def test_15_width_mismatch_names_the_file(ray_address, world, tmp_path):
    narrow = tmp_path / "narrow"
    write_vectors(str(narrow), world.x[:, :4], rows_per_file=600)
    narrow_before = checksums(narrow)
    r = run_cli(*assign_args(world, tmp_path / "out", data=narrow), ray_address=ray_address)
    fails(r, 2, "width 4", "part-00000.parquet", f"expects {D}")
    assert r.out == ""
    assert not (tmp_path / "out").exists()
    assert checksums(narrow) == narrow_before
    world.assert_unchanged()


# -- errors and -v ---------------------------------------------------------------------


def test_errors_never_reach_stdout_and_tracebacks_only_with_verbose(tmp_path):
    r = run_cli("make-dataset", tmp_path / "x", "--n", 0)
    fails(r, 2)
    assert r.out == "" and "Traceback" not in r.err
    r = run_cli("make-dataset", tmp_path / "x", "--n", 0, "-v")
    assert r.code == 2 and "Traceback" in r.err, r.describe()
    assert r.out == ""


def test_version_is_one_line_on_stdout():
    r = ok(run_cli("--version"))
    assert r.out == f"clam-dist {__version__}\n", r.describe()
    assert r.err == "", r.describe()


# -- 16: errors raised inside Ray workers, from a fresh local Ray (issue 24 A) ---------


def _one_nan_row(world: World, folder: Path) -> None:
    x_bad = world.x.copy()
    x_bad[42] = np.nan
    write_vectors(str(folder), x_bad, rows_per_file=600)


def _one_null_vector(world: World, folder: Path) -> None:
    """A variable-length list column whose row 42 is null (not a list of NaN)."""
    rows = [None if i == 42 else row.tolist() for i, row in enumerate(world.x)]
    folder.mkdir()
    table = pa.table({"id": np.arange(N), "x": pa.array(rows, type=pa.list_(pa.float32()))})
    pq.write_table(table, folder / "part-00000.parquet")


@pytest.mark.parametrize("tty", [False, True], ids=["piped", "tty"])
@pytest.mark.parametrize("make_input", [_one_nan_row, _one_null_vector], ids=["nan", "null"])
def test_16_a_bad_row_is_one_line_and_nothing_else(world, tmp_path, make_input, tty):
    """No ray_address: the command starts its own Ray, as on a new user's laptop. In a
    pipe stderr is that one line and stdout is empty; in a terminal (stdout and stderr
    one pty) the whole screen is that one line."""
    bad = tmp_path / "bad"
    make_input(world, bad)
    bad_before = checksums(bad)
    r = run_cli(*assign_args(world, tmp_path / "out", data=bad), tty=tty)
    assert r.code == 1, r.describe()
    screen = r.out if tty else r.err
    lines = screen.strip("\n").split("\n")
    assert len(lines) == 1, r.describe()
    assert lines[0].startswith("assign failed: DataError"), r.describe()
    if not tty:
        assert r.out == "", r.describe()
    r.no_ray_lines()
    assert not (tmp_path / "out").exists()
    assert checksums(bad) == bad_before
    world.assert_unchanged()


# -- 17: training failures and successes, what a person sees ---------------------------


def test_17_diverging_training_is_one_line(ray_address, world, tmp_path):
    argv = train_args(
        world, tmp_path / "store", "--set", "optim.lr=1e30", "--set", "optim.epochs=2"
    )
    r = run_cli(*argv, ray_address=ray_address)
    fails(r, 1, "train failed", "TrainingDiverged")
    world.assert_unchanged()


def test_17_training_success_prints_only_its_summary(world, tmp_path):
    """No ray_address: a local Ray started by the command, as a new user runs it."""
    store = tmp_path / "store"
    r = ok(run_cli(*train_args(world, store, "--set", "optim.epochs=1")))
    summary = json.loads(r.out)  # stdout is our JSON summary and nothing else
    assert set(summary) == {"artifact", "checkpoint", "metrics"}, r.describe()
    assert (store / "clam-train" / "model" / "model.json").exists()
    world.assert_unchanged()


# -- 18: signals: one line, the exit code a shell expects, nothing half-committed -----


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    """300k x 32 rows and a model for them: an assignment that runs for a few seconds."""
    root = tmp_path_factory.mktemp("big")
    x, _, _ = make_gaussian_mixture(300_000, 32, 4, separation=6.0, seed=5)
    write_vectors(str(root / "data"), x, rows_per_file=50_000)
    model = ClAM(n_clusters=4, epochs=1, batch_size=100, random_state=0).fit(x[:2000])
    save_artifact(model.to_artifact(), str(root / "model"))
    return root


def test_18_sigterm_during_assign_commits_nothing(ray_address, big, tmp_path):
    before = {name: checksums(big / name) for name in ("data", "model")}
    out = tmp_path / "out"
    running = start_cli(
        "assign",
        "--input",
        big / "data",
        "--model",
        big / "model",
        "--output",
        out,
        ray_address=ray_address,
    )
    running.wait_for(out / "_staging")  # the attempt is recorded: the work has begun
    time.sleep(1.0)
    running.send(signal.SIGTERM)
    r = running.finish()
    assert r.code == 143, r.describe()
    line = r.one_line("nothing committed")
    assert line.startswith("interrupted:"), r.describe()
    r.no_ray_lines()  # no C++ stack dump ("*** SIGTERM received", "*** Aborted at")
    assert not (out / "_SUCCESS").exists()
    assert {name: checksums(big / name) for name in ("data", "model")} == before


def _has_checkpoint(store: Path) -> bool:
    return any(store.rglob("state.json"))


def test_18_ctrl_c_during_training_is_resumable(ray_address, world, tmp_path):
    store = tmp_path / "store"
    running = start_cli(
        *train_args(world, store, "--set", "optim.epochs=1000"), ray_address=ray_address
    )
    running.wait_until(lambda: _has_checkpoint(store), "a first checkpoint", timeout=180)
    running.interrupt()  # Ctrl-C: SIGINT to the whole process group
    r = running.finish()
    assert r.code == 130, r.describe()
    line = r.one_line("resumable")
    assert line.startswith("interrupted:"), r.describe()
    r.no_ray_lines()
    assert _has_checkpoint(store)  # what it would resume from is still there
    world.assert_unchanged()
