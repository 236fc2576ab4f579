"""Assignment at scale with a real local Ray and the local S3 server: labels equal the
in-memory estimator's; crashes injected inside the pipeline and before the commit, then a
re-run gives exactly n rows; bad input is refused before any work; a new partition with an
existing model and its drift figure. (The last two tests cover the end-to-end pipeline.)"""

from __future__ import annotations

import json

import numpy as np
import pytest

from clam_dist import ClAM
from clam_dist.artifacts import ArtifactError, save_artifact
from clam_dist.assign.commit import (
    ForeignOutputError,
    IncompleteOutputError,
    OutputExistsError,
    OutputPrefix,
)
from clam_dist.assign.pipeline import (
    AssignConfig,
    InjectedCrash,
    read_assignments,
    run_assignment,
)
from clam_dist.config import ConfigError
from clam_dist.data.errors import DataError
from clam_dist.data.writer import write_vectors
from clam_dist.datasets.synthetic import make_gaussian_mixture

pytestmark = pytest.mark.ray

N = 2_000


@pytest.fixture(scope="module")
def fitted():
    x, y, _ = make_gaussian_mixture(N, 5, 4, separation=6.0, seed=2)
    # a short fit on a subset: the test is about the pipeline reproducing predict()
    model = ClAM(n_clusters=4, epochs=1, batch_size=200, random_state=0).fit(x[:400])
    return x, y, model


@pytest.fixture(scope="module")
def s3_setup(fitted, s3_server):
    x, y, model = fitted
    opts = s3_server.storage_options
    write_vectors(s3_server.url("assign/in"), x, labels=y, rows_per_file=700, storage_options=opts)
    meta = {"energy_p99": float(np.percentile(model.energy(x), 99))}
    save_artifact(model.to_artifact(meta=meta), s3_server.url("assign/model"), opts)
    return s3_server, opts


def test_cli_assign_through_s3_equals_in_memory_predict(ray_local, fitted, s3_setup, tmp_path):
    """Config file + flags -> Ray Data actors reading and writing the local S3 server."""
    from clam_dist.cli import main

    x, y, model = fitted
    server, opts = s3_setup
    cfg = tmp_path / "assign.toml"
    cfg.write_text(
        f'input = "{server.url("assign/in")}"\nmodel = "{server.url("assign/model")}"\n'
        'id_column = "id"\nlabel_column = "label"\npassthrough = ["label"]\n'
        'outputs = ["margin", "probs"]\nbatch_size = 300\nconcurrency = 2\n'
        # credentials in the config (the actors' environment has none); endpoint by flag
        f'[storage_options]\nkey = "{opts["key"]}"\nsecret = "{opts["secret"]}"\n'
    )
    argv = [
        "assign",
        "--config",
        str(cfg),
        "--output",
        server.url("assign/out"),
        "--endpoint-url",
        server.endpoint_url,
        "--summary",
        str(tmp_path / "summary.json"),
    ]
    assert main(argv) == 0
    table = read_assignments(server.url("assign/out"), opts)
    assert table.column_names == ["id", "cluster", "distance", "energy", "margin", "probs", "label"]
    ids = table.column("id").to_numpy()
    assert table.num_rows == N and np.unique(ids).size == N
    order = np.argsort(ids)
    np.testing.assert_array_equal(table.column("cluster").to_numpy()[order], model.predict(x))
    np.testing.assert_array_equal(table.column("label").to_numpy()[order], y)
    np.testing.assert_allclose(
        table.column("energy").to_numpy()[order], model.energy(x), rtol=1e-4, atol=1e-4
    )
    probs = np.stack(table.column("probs").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    assert (table.column("margin").to_numpy() >= 0).all()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["rows"] == N and summary["batch_size"] == 300
    assert set(summary["timings_s"]) >= {"checks", "assign_write", "drift", "commit"}
    # read -> assign -> write ran fused in one task per row range (the vectors never went
    # through the object store), and the job's CPU limit was lifted again afterwards
    assert "read_compute_write_task_s" in summary["timings_s"]
    import ray.data

    assert ray.data.DataContext.get_current().execution_options.resource_limits.cpu == float("inf")
    # drift vs the training energy's 99th percentile on the same data: about 1%
    assert summary["drift"]["rows_above"] == pytest.approx(0.01 * N, abs=3)
    # a committed output is never silently replaced (bad input found before work: 2)
    assert main(argv) == 2


def _assert_actor_pool_released(ray, seconds: float = 15.0) -> None:
    """After an assignment, failed or not, its actors give their CPUs back (else a later
    Ray Train run on the same cluster waits for them forever)."""
    import time

    deadline = time.monotonic() + seconds
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) == 2


def test_crashes_then_rerun_give_exactly_n_rows(ray_local, fitted, tmp_path):
    """A new partition of a date-partitioned input, assigned with an existing model whose
    artifact has no energy_p99 (drift skipped with a note). Crash 1: an actor fails after
    3 batches. Crash 2: the job stops after the staged write, before the commit. Neither
    leaves anything presented as output; the re-run gives exactly n unique rows."""
    x, _, model = fitted
    write_vectors(str(tmp_path / "events" / "date=2026-05-01"), x, rows_per_file=500)
    save_artifact(model.to_artifact(), str(tmp_path / "model"))
    cfg = AssignConfig(
        input=str(tmp_path / "events" / "{partition}"),
        output=str(tmp_path / "clusters" / "{partition}"),
        model=str(tmp_path / "model"),
        partition="date=2026-05-01",
        batch_size=250,
        concurrency=1,
        fail_after_batches=3,
    )
    out = tmp_path / "clusters" / "date=2026-05-01"
    with pytest.raises(Exception, match="injected failure after 3 batches"):
        run_assignment(cfg)
    _assert_actor_pool_released(ray_local)
    assert not (out / "_SUCCESS").exists()
    with pytest.raises(IncompleteOutputError, match="no _SUCCESS"):
        read_assignments(str(out))
    cfg.fail_after_batches, cfg.crash_before_commit = 0, True
    with pytest.raises(InjectedCrash, match="before the commit"):
        run_assignment(cfg)
    staged = list((out / "_staging").rglob("*.parquet"))
    assert staged and not (out / "_SUCCESS").exists() and not list(out.glob("part-*"))
    with pytest.raises(IncompleteOutputError):
        read_assignments(str(out))
    cfg.crash_before_commit = False
    res = run_assignment(cfg)
    _assert_actor_pool_released(ray_local)
    table = read_assignments(str(out))
    ids = table.column("id").to_numpy(zero_copy_only=False)
    assert res.rows == table.num_rows == N and np.unique(ids).size == N
    assert ids[0].startswith("part-") and ":" in ids[0]  # generated '<file>:<row>' ids
    assert sorted(p.name for p in out.iterdir()) == [
        "_SUCCESS",
        "_manifest.json",
        *[f"part-{i:05d}.parquet" for i in range(res.files)],
    ]
    assert res.drift_share is None and "energy_p99" in res.drift["note"]
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["partition"] == "date=2026-05-01" and sum(manifest["file_rows"]) == N


def test_bad_inputs_are_refused_before_any_work(fitted, tmp_path):
    """No Ray needed: every check runs on the driver before the dataset is built."""
    x, _, model = fitted
    write_vectors(str(tmp_path / "in3"), x[:50, :3])
    write_vectors(str(tmp_path / "in"), x[:50])
    save_artifact(model.to_artifact(), str(tmp_path / "model"))
    ok = dict(input=str(tmp_path / "in"), output=str(tmp_path / "o"), model=str(tmp_path / "model"))
    with pytest.raises(DataError, match="width 3, but model .* expects 5 features"):
        run_assignment(AssignConfig(**(ok | {"input": str(tmp_path / "in3")})))
    with pytest.raises(ArtifactError, match="no model.json"):
        run_assignment(AssignConfig(**(ok | {"model": str(tmp_path / "missing")})))
    (tmp_path / "notmodel").mkdir()
    (tmp_path / "notmodel" / "model.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ArtifactError, match="not a clam-dist model"):
        run_assignment(AssignConfig(**(ok | {"model": str(tmp_path / "notmodel")})))
    with pytest.raises(DataError, match=r"pass-through column\(s\) \['colour'\] not found"):
        run_assignment(AssignConfig(**ok, passthrough=["colour"]))
    with pytest.raises(DataError, match="vector column 'emb' not found"):
        run_assignment(AssignConfig(**ok, vector_column="emb"))
    with pytest.raises(DataError, match="overlap"):
        run_assignment(AssignConfig(**(ok | {"output": str(tmp_path / "in" / "out")})))
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "notes.txt").write_text("mine")
    with pytest.raises(ForeignOutputError, match="notes.txt"):
        run_assignment(AssignConfig(**ok))
    (tmp_path / "o" / "notes.txt").unlink()
    committed = OutputPrefix(str(tmp_path / "o"))  # a real committed result (a bare
    staging = committed.prepare(False)  # _SUCCESS that no manifest vouches for is foreign)
    write_vectors(staging, x[:5])
    committed.commit(staging, 5, {})
    with pytest.raises(OutputExistsError, match="pass --overwrite"):
        run_assignment(AssignConfig(**ok))
    (tmp_path / "blocker").write_text("")
    with pytest.raises(PermissionError, match="not writable"):
        run_assignment(AssignConfig(**(ok | {"output": str(tmp_path / "blocker" / "o")})))
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [  # untouched
        "_SUCCESS",
        "_manifest.json",
        "part-00000.parquet",
    ]


def test_config_errors_name_the_field(tmp_path, capsys):
    from clam_dist.cli import main

    bad = tmp_path / "bad.toml"
    bad.write_text('input = "a"\noutput = "b"\nmodel = "m"\nconcurrency = "many"\n')
    assert main(["assign", "--config", str(bad)]) == 2
    assert "concurrency: expected an integer, got 'many'" in capsys.readouterr().err
    assert main(["assign", "--config", str(bad), "--set", "concurrency=2", "--outputs", "nrg"]) == 2
    assert "outputs: unknown ['nrg']" in capsys.readouterr().err
    assert main(["assign", "--input", "a", "--model", "m"]) == 2
    assert "output: required" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="partition: given, but neither"):
        AssignConfig(input="a", output="b", model="m", partition="date=1")
    with pytest.raises(ConfigError, match="unknown field"):
        from clam_dist.config import load_config

        load_config(AssignConfig, None, ["input=a", "output=b", "model=m", "concurency=2"])


def test_pipeline_end_to_end_report_and_resume(ray_local, tmp_path, monkeypatch):
    from clam_dist.config import load_config
    from clam_dist.pipeline.config import PipelineConfig
    from clam_dist.pipeline.stages import run_pipeline

    monkeypatch.chdir(tmp_path)  # a RELATIVE run_dir, as the quickstart uses
    overrides = [
        "run_dir=run",
        "data.n=4000",
        "data.d=6",
        "data.k=4",
        "data.rows_per_file=1000",
        "model.n_clusters=4",
        "optim.epochs=3",
        "assign.concurrency=1",
        "eval_sample=1000",
    ]
    cfg = load_config(PipelineConfig, None, overrides)
    summary = run_pipeline(cfg)
    assert summary["status"] == "succeeded", summary.get("traceback")
    metrics = summary["stages"]["evaluate"]["metrics"]
    assert metrics["rows"] == 4000 and metrics["n_nonempty"] == 4 and metrics["nmi"] > 0.9
    report = tmp_path / "run" / "report"
    html = (report / "index.html").read_text()
    for name in ("cluster_sizes.png", "projection.png", "training.png"):
        assert (report / name).stat().st_size > 1000 and f'src="{name}"' in html
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert set(on_disk["stages"]) == {"data", "train", "assign", "evaluate"}
    again = run_pipeline(cfg)  # idempotent: every stage already done
    assert again["status"] == "succeeded" and all(
        s.get("skipped") for s in again["stages"].values()
    )


def test_pipeline_config_errors_name_the_field(tmp_path, capsys):
    from clam_dist.cli import main

    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\nn_clusters = 'many'\n")
    assert main(["pipeline", "--config", str(bad), "--run-dir", str(tmp_path / "r")]) == 2
    assert "model.n_clusters: expected an integer, got 'many'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
