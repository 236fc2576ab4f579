"""Assignment at scale with a real local Ray and the local S3 server; crash recovery;
the end-to-end pipeline and its report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clam_dist import ClAM
from clam_dist.artifacts import ArtifactError, save_artifact
from clam_dist.assign.commit import IncompleteOutputError, OutputExistsError
from clam_dist.assign.pipeline import AssignConfig, read_assignments, run_assignment
from clam_dist.data.errors import DataError
from clam_dist.data.writer import write_vectors
from clam_dist.datasets.synthetic import make_gaussian_mixture

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def fitted(ray_local):
    x, y, _ = make_gaussian_mixture(3_000, 5, 4, separation=6.0, seed=2)
    model = ClAM(n_clusters=4, epochs=3, batch_size=128, random_state=0).fit(x)
    return x, y, model


@pytest.fixture(scope="module")
def s3_setup(fitted, s3_server):
    x, y, model = fitted
    opts = s3_server.storage_options
    write_vectors(s3_server.url("assign/in"), x, labels=y, rows_per_file=700, storage_options=opts)
    meta = {"energy_p99": float(np.percentile(model.energy(x), 99))}
    save_artifact(model.to_artifact(meta=meta), s3_server.url("assign/model"), opts)
    return s3_server, opts


def test_labels_equal_in_memory_predict_through_s3(fitted, s3_setup):
    x, y, model = fitted
    server, opts = s3_setup
    cfg = AssignConfig(
        input=server.url("assign/in"),
        output=server.url("assign/out"),
        model=server.url("assign/model"),
        id_column="id",
        label_column="label",
        passthrough=["label"],
        outputs=["margin", "probs"],
        storage_options=opts,
        batch_size=500,
        concurrency=1,
    )
    res = run_assignment(cfg)
    assert res.rows == 3_000 and res.files >= 1
    table = read_assignments(cfg.output, opts)
    ids = table.column("id").to_numpy(zero_copy_only=False)
    assert np.unique(ids).size == 3_000
    order = np.argsort(ids)
    np.testing.assert_array_equal(table.column("cluster").to_numpy()[order], model.predict(x))
    np.testing.assert_array_equal(table.column("label").to_numpy()[order], y)
    probs = np.stack(table.column("probs").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    # drift vs the training energy's 99th percentile on the same data: about 1%
    assert 0.0 <= res.drift_share <= 0.03
    with pytest.raises(OutputExistsError, match="already holds a committed result"):
        run_assignment(cfg)


def test_crash_inside_the_pipeline_then_rerun_gives_exactly_n_rows(fitted, tmp_path):
    x, _, model = fitted
    write_vectors(str(tmp_path / "in"), x, rows_per_file=500)
    save_artifact(model.to_artifact(), str(tmp_path / "model"))
    cfg = AssignConfig(
        input=str(tmp_path / "in"),
        output=str(tmp_path / "out"),
        model=str(tmp_path / "model"),
        batch_size=250,
        concurrency=1,
        fail_after_batches=3,
    )
    with pytest.raises(Exception, match="injected failure"):
        run_assignment(cfg)
    assert not (tmp_path / "out" / "_SUCCESS").exists()
    with pytest.raises(IncompleteOutputError, match="no _SUCCESS"):
        read_assignments(cfg.output)
    cfg.fail_after_batches = 0
    res = run_assignment(cfg)
    table = read_assignments(cfg.output)
    ids = table.column("id").to_numpy(zero_copy_only=False)
    assert res.rows == table.num_rows == 3_000 and np.unique(ids).size == 3_000
    leftovers = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert leftovers == [
        "_SUCCESS",
        "_manifest.json",
        *[f"part-{i:05d}.parquet" for i in range(res.files)],
    ]


def test_crash_during_commit_then_rerun(fitted, tmp_path, monkeypatch):
    x, _, model = fitted
    write_vectors(str(tmp_path / "in"), x, rows_per_file=500)
    save_artifact(model.to_artifact(), str(tmp_path / "model"))
    cfg = AssignConfig(
        input=str(tmp_path / "in"), output=str(tmp_path / "out"), model=str(tmp_path / "model")
    )
    from fsspec.implementations.local import LocalFileSystem

    real_mv, calls = LocalFileSystem.mv, []

    def failing_mv(self, *a, **kw):
        # the first file lands in the output prefix, then the driver "dies" mid-commit
        calls.append(a)
        real_mv(self, *a, **kw)
        raise OSError("disk went away mid-commit")

    monkeypatch.setattr(LocalFileSystem, "mv", failing_mv)
    with pytest.raises(OSError, match="mid-commit"):
        run_assignment(cfg)
    monkeypatch.setattr(LocalFileSystem, "mv", real_mv)
    assert (tmp_path / "out" / "part-00000.parquet").exists()  # half-committed ...
    assert not (tmp_path / "out" / "_SUCCESS").exists()  # ... and not presented as output
    with pytest.raises(IncompleteOutputError):
        read_assignments(cfg.output)
    res = run_assignment(cfg)
    assert read_assignments(cfg.output).num_rows == res.rows == 3_000


def test_foreign_files_in_the_output_prefix_are_never_deleted(tmp_path):
    from clam_dist.assign.commit import OutputPrefix

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.csv").write_text("user data")
    with pytest.raises(FileExistsError, match="not written by clam-dist"):
        OutputPrefix(str(tmp_path / "out")).prepare(overwrite=True)
    assert (tmp_path / "out" / "precious.csv").read_text() == "user data"


def test_bad_inputs_are_named(fitted, tmp_path):
    x, _, model = fitted
    write_vectors(str(tmp_path / "in3"), x[:, :3])
    save_artifact(model.to_artifact(), str(tmp_path / "model"))
    with pytest.raises(DataError, match="width 3, but model .* expects 5 features"):
        run_assignment(
            AssignConfig(str(tmp_path / "in3"), str(tmp_path / "o"), str(tmp_path / "model"))
        )
    with pytest.raises(ArtifactError, match="no model.json"):
        run_assignment(
            AssignConfig(str(tmp_path / "in3"), str(tmp_path / "o"), str(tmp_path / "missing"))
        )
    (tmp_path / "notmodel").mkdir()
    (tmp_path / "notmodel" / "model.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ArtifactError, match="not a clam-dist model"):
        run_assignment(
            AssignConfig(str(tmp_path / "in3"), str(tmp_path / "o"), str(tmp_path / "notmodel"))
        )


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
        "model.epochs=3",
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
    assert "model.n_clusters: expected an integer, got 'many'" in capsys.readouterr().out
    assert not (tmp_path / "r").exists()
