"""`clam-dist inspect`: real artifacts, a real (Ray-free) pipeline run, a real committed
assignment output, on local disk and the local S3 server; unrecognised and missing paths
exit 2 with one line; inspecting never changes a byte."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clam_dist import ClAM
from clam_dist.artifacts import META_FILE, load_artifact, save_artifact
from clam_dist.assign.commit import MANIFEST, SUCCESS, OutputPrefix
from clam_dist.cli import main
from clam_dist.commands.inspect import inspect_path, render
from clam_dist.models.predictor import ClusterPredictor

REPO = Path(__file__).resolve().parents[1]


def _blobs(k: int = 3, n: int = 40, d: int = 4, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(3.0 * c, 0.3, (n, d)) for c in range(k)]).astype(np.float32)


def _human_lines(err: str) -> list[str]:
    """stderr minus the structured JSON log lines every command writes (clam_dist.logs)."""
    return [line for line in err.splitlines() if line.strip() and not line.startswith('{"ts"')]


def _fields(out: str) -> dict[str, str]:
    """The label/value lines of the table (labels contain single spaces, columns two+)."""
    rows = {}
    for line in out.splitlines():
        parts = [p for p in line.split("  ") if p.strip()]
        if len(parts) == 2:
            rows[parts[0].strip()] = parts[1].strip()
    return rows


def _snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under root with its size, mtime and content hash."""
    snap = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            snap[str(p)] = (st.st_size, st.st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        else:
            snap[str(p)] = (0, 0, "dir")
    return snap


def _inspect(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["inspect", *argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory) -> Path:
    """A real pipeline run without Ray: data generation and in-memory training only, so
    the run directory has data/train markers, a summary and a model with energy p99."""
    from clam_dist.pipeline.config import PipelineConfig, PipelineData, PipelineTrain
    from clam_dist.pipeline.stages import run_pipeline
    from clam_dist.sections import ModelSection, OptimSection

    run_dir = tmp_path_factory.mktemp("run") / "r1"
    config = PipelineConfig(
        run_dir=str(run_dir),
        data=PipelineData(n=600, d=4, k=3, rows_per_file=200),
        model=ModelSection(n_clusters=3),
        optim=OptimSection(epochs=2, batch_size=64),
        train=PipelineTrain(trainer="sample"),
    )
    summary = run_pipeline(config, only=["data", "train"])
    assert summary["status"] == "succeeded", summary.get("error")
    return run_dir


@pytest.fixture(scope="module")
def assignments(tmp_path_factory, pipeline_run) -> tuple[Path, int]:
    """A committed assignment output of the run's model over 150 rows, written with the
    commit protocol (stage, verify, commit) and the predictor, as `assign` does per batch."""
    model_url = str(pipeline_run / "model")
    artifact = load_artifact(model_url)
    x = _blobs(n=50)
    out = tmp_path_factory.mktemp("assign") / "out"
    prefix = OutputPrefix(str(out))
    staging = prefix.prepare(overwrite=False)
    spath = prefix.staging_path(staging)
    prefix.fs.makedirs(spath, exist_ok=True)
    predictor = ClusterPredictor.from_artifact(artifact)
    for i, rows in enumerate(np.array_split(np.arange(len(x)), 2)):
        pred = predictor.predict(x[rows], ("energy",))
        table = pa.table(
            {"id": rows, "cluster": pred["cluster"], "distance": pred["distance"]}
            | {"energy": pred["energy"]}
        )
        pq.write_table(table, f"{spath}/batch-{i}.parquet")
    prefix.commit(
        staging,
        len(x),
        {
            "input": "memory-test-input",
            "input_files": 1,
            "partition": None,
            "model": model_url,
            "model_method": artifact.method,
            "k": artifact.k,
            "columns": ["id", "cluster", "distance", "energy"],
            "drift": {"energy_p99": artifact.meta["energy_p99"], "share_above": 0.02},
        },
    )
    return out, len(x)


def test_model_artifact_from_the_estimator(tmp_path, capsys):
    x = _blobs()
    est = ClAM(n_clusters=3, epochs=2, random_state=0).fit(x)
    url = str(tmp_path / "model")
    save_artifact(est.to_artifact(), url)
    before = _snapshot(tmp_path)
    code, out, err = _inspect(capsys, url)
    assert code == 0, err
    fields = _fields(out)
    assert fields["kind"] == "model artifact"
    assert fields["status"] == "complete"
    assert fields["method"] == "clam"
    assert fields["k (clusters)"] == "3"
    assert fields["d (model space)"] == "4"
    assert fields["T (AM steps)"] == str(est.steps)
    assert fields["alpha"] == f"{est.alpha:.6g}"
    assert fields["beta"] == f"{est.beta_:.6g}"
    assert fields["metric"] == "euclidean"
    assert fields["epochs"] == "2"
    # The estimator records neither training data nor energy p99.
    assert fields["training data"] == "not recorded"
    assert fields["energy p99"] == "not recorded"
    assert fields["tensors"] == "prototypes 3x4"
    size = (tmp_path / "model" / "model.safetensors").stat().st_size
    assert f"model.safetensors {size} B" in fields["file sizes"]
    assert _human_lines(err) == []
    assert _snapshot(tmp_path) == before

    code, out, _ = _inspect(capsys, url, "--json")
    data = json.loads(out)
    assert code == 0
    assert data["kind"] == "model artifact"
    assert (data["k"], data["d"], data["am_steps"]) == (3, 4, est.steps)
    assert data["beta"] == pytest.approx(est.beta_)
    assert data["training_data"] is None and data["energy_p99"] is None
    assert data["file_bytes"]["model.safetensors"] == size


def test_model_from_the_pipeline_records_energy_p99_and_rows(pipeline_run, capsys):
    artifact = load_artifact(str(pipeline_run / "model"))
    code, out, err = _inspect(capsys, str(pipeline_run / "model"), "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["energy_p99"] == pytest.approx(artifact.meta["energy_p99"])
    assert data["rows_seen"] == artifact.meta["train_sample_size"] == 600
    assert data["trained_with"] == "in-memory sample"
    assert data["final_loss"] == pytest.approx(artifact.meta["loss_history"][-1])
    code, out, _ = _inspect(capsys, str(pipeline_run / "model"))
    assert _fields(out)["energy p99"].startswith(f"{artifact.meta['energy_p99']:.6g} (on 600")


def test_an_older_artifact_missing_fields_says_not_recorded(tmp_path, capsys):
    """An artifact without the fields a load does not need (no meta, no library version,
    no d_model) is shown, not a crash; one without a field a load needs (steps, alpha,
    tensor_shapes) is refused as load_artifact refuses it (issue 24, B8)."""
    url = tmp_path / "old"
    save_artifact(
        ClAM(n_clusters=2, epochs=1, random_state=0).fit(_blobs(k=2)).to_artifact(), str(url)
    )
    full = json.loads((url / META_FILE).read_text())
    meta = {k: v for k, v in full.items() if k not in ("meta", "library_version", "d_model")}
    (url / META_FILE).write_text(json.dumps(meta))
    code, out, err = _inspect(capsys, str(url))
    assert code == 0, err
    fields = _fields(out)
    assert fields["method"] == "clam" and fields["k (clusters)"] == "2"
    for label in ("d (model space)", "library version", "epochs", "rows seen", "final loss"):
        assert fields[label] == "not recorded", label
    for key in ("steps", "alpha", "tensor_shapes"):
        (url / META_FILE).write_text(json.dumps({k: v for k, v in meta.items() if k != key}))
        with pytest.raises(ValueError) as refused:
            load_artifact(str(url))
        code, out, err = _inspect(capsys, str(url))
        assert code == 2 and out == "", (key, out)
        lines = _human_lines(err)
        assert len(lines) == 1 and "refused" in lines[0] and str(refused.value) in lines[0]


def test_attention_kmeans_and_dcam_artifacts_show_their_own_fields(tmp_path, capsys):
    from clam_dist import DCAM, AttentionClustering, KMeans

    x = _blobs()
    fitted = {
        "attention": AttentionClustering(n_clusters=3, similarity="dot", epochs=2, random_state=0),
        "kmeans": KMeans(n_clusters=3, n_init=1, random_state=0),
        "dcam": DCAM(
            n_clusters=3, latent_dim=2, hidden=(8,), pretrain_epochs=2, epochs=1, random_state=0
        ),
    }
    for name, est in fitted.items():
        save_artifact(est.fit(x).to_artifact(), str(tmp_path / name))
        code, out, err = _inspect(capsys, str(tmp_path / name), "--json")
        assert code == 0, err
        data = json.loads(out)
        assert data["method"] == name and data["k"] == 3 and data["n_features"] == 4
        if name == "attention":
            assert data["attention_score"] == "dot" and data["am_steps"] == 1
        if name == "kmeans":
            assert data["am_steps"] == 0
            _, table, _ = _inspect(capsys, str(tmp_path / name))
            assert _fields(table)["T (AM steps)"] == "0 (nearest prototype, no dynamics)"
        if name == "dcam":
            assert data["d"] == 2  # prototypes live in the 2-D latent space
            assert data["encoder"]["kind"] == "mlp" and data["encoder"]["latent_dim"] == 2
            assert any(t.startswith("extra.encoder.") for t in data["tensor_shapes"])


def test_model_json_of_another_format_is_refused(tmp_path, capsys):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / META_FILE).write_text(json.dumps({"format": "someone-else"}))
    code, out, err = _inspect(capsys, str(tmp_path / "m"))
    assert code == 2 and out == ""
    lines = _human_lines(err)
    assert len(lines) == 1 and "not a clam-dist model" in lines[0] and str(tmp_path) in lines[0]


def test_pipeline_run_directory(pipeline_run, capsys):
    before = _snapshot(pipeline_run)
    code, out, err = _inspect(capsys, str(pipeline_run))
    assert code == 0, err
    fields = _fields(out)
    assert fields["kind"] == "pipeline run directory"
    assert fields["status"] == "succeeded"
    summary = json.loads((pipeline_run / "summary.json").read_text())
    stage_lines = {line.split()[0]: line for line in out.splitlines()[-4:]}
    assert set(stage_lines) == {"data", "train", "assign", "evaluate"}
    assert "rows=600" in stage_lines["data"] and " done " in stage_lines["data"]
    assert f"model={pipeline_run / 'model'}" in stage_lines["train"]
    assert "not done" in stage_lines["assign"] and "not done" in stage_lines["evaluate"]
    assert _snapshot(pipeline_run) == before

    code, out, _ = _inspect(capsys, str(pipeline_run), "--json")
    data = json.loads(out)
    assert data["status"] == "succeeded"
    assert data["seconds"] == summary["seconds"]
    assert data["stages"]["train"]["seconds"] == summary["stages"]["train"]["seconds"]
    assert data["stages"]["data"]["outputs"]["files"] == 3
    assert data["stages"]["assign"] == {"status": "not done", "seconds": None, "outputs": {}}


def test_run_directory_without_summary_is_unknown_status(pipeline_run, tmp_path, capsys):
    """A run killed mid-way: markers but no summary.json (a copy; the fixture is shared)."""
    copy = tmp_path / "killed"
    shutil.copytree(pipeline_run / "stages", copy / "stages")
    (copy / "stages" / "train.json").unlink()
    code, out, err = _inspect(capsys, str(copy))
    assert code == 0, err
    assert _fields(out)["status"].startswith("unknown (no summary.json")
    stage_lines = {line.split()[0]: line for line in out.splitlines()[-4:]}
    assert " done " in stage_lines["data"] and "not done" in stage_lines["train"]


def test_failed_pipeline_run_shows_its_error(tmp_path, capsys):
    """A run whose train stage failed (no data: the data stage was not run)."""
    from clam_dist.pipeline.config import PipelineConfig, PipelineData, PipelineTrain
    from clam_dist.pipeline.stages import run_pipeline
    from clam_dist.sections import ModelSection, OptimSection

    run_dir = tmp_path / "failed"
    summary = run_pipeline(
        PipelineConfig(
            run_dir=str(run_dir),
            data=PipelineData(url=str(tmp_path / "no-such-data")),
            model=ModelSection(n_clusters=3),
            optim=OptimSection(epochs=1),
            train=PipelineTrain(trainer="sample"),
        ),
        only=["train"],
    )
    assert summary["status"] == "failed"
    code, out, err = _inspect(capsys, str(run_dir))
    assert code == 0, err
    fields = _fields(out)
    assert fields["status"] == "failed"
    assert fields["error"] == summary["error"].splitlines()[0]
    stage_lines = {line.split()[0]: line for line in out.splitlines()[-4:]}
    assert all("not done" in stage_lines[s] for s in ("data", "train", "assign", "evaluate"))


def test_committed_assignment_output(assignments, capsys):
    out_dir, rows = assignments
    before = _snapshot(out_dir)
    code, out, err = _inspect(capsys, str(out_dir))
    assert code == 0, err
    fields = _fields(out)
    manifest = json.loads((out_dir / MANIFEST).read_text())
    assert fields["kind"] == "assignment output"
    assert fields["status"] == "committed"
    assert fields["rows"] == str(rows) == str(manifest["rows"])
    assert fields["files"] == "2"
    assert fields["committed at"] == manifest["committed_at"]
    assert fields["model"] == manifest["model"]
    assert fields["input"] == "memory-test-input"
    assert fields["columns"] == "id, cluster, distance, energy"
    assert fields["drift share > train p99"] == "0.02"
    assert "missing files" not in fields
    assert _snapshot(out_dir) == before
    data = json.loads(_inspect(capsys, str(out_dir), "--json")[1])
    assert data["committed"] is True and data["rows"] == rows and data["manifest"] == manifest


def test_uncommitted_assignment_output_is_incomplete(assignments, tmp_path, capsys):
    out_dir, _ = assignments
    copy = tmp_path / "out"
    shutil.copytree(out_dir, copy)
    (copy / SUCCESS).unlink()  # as if the job died between the manifest and the marker
    code, out, err = _inspect(capsys, str(copy))
    assert code == 0, err
    fields = _fields(out)
    assert fields["status"] == "incomplete (no _SUCCESS)"
    assert fields["part files present"] == "2"
    assert json.loads(_inspect(capsys, str(copy), "--json")[1])["committed"] is False
    # A committed prefix that lost a part file says so.
    shutil.copy(out_dir / SUCCESS, copy / SUCCESS)
    (copy / "part-00001.parquet").unlink()
    _, out, _ = _inspect(capsys, str(copy))
    assert _fields(out)["missing files"] == "part-00001.parquet"


@pytest.mark.parametrize("case", ["missing", "random_folder", "file", "empty", "half_saved"])
def test_unrecognised_paths_exit_2_with_one_line(tmp_path, capsys, case):
    target = tmp_path / "target"
    if case == "random_folder":
        target.mkdir()
        (target / "notes.txt").write_text("hello")
        (target / "data.csv").write_text("a,b\n1,2\n")
    elif case == "file":
        target.write_text("just a file")
    elif case == "empty":
        target.mkdir()
    elif case == "half_saved":
        target.mkdir()
        (target / "model.safetensors").write_bytes(b"\0" * 16)
    before = _snapshot(tmp_path)
    code, out, err = _inspect(capsys, str(target))
    assert code == 2
    assert out == ""
    lines = _human_lines(err)
    assert len(lines) == 1, lines
    assert str(target) in lines[0] and "Traceback" not in err
    if case != "half_saved":
        assert "expected a model artifact" in lines[0]
    assert _snapshot(tmp_path) == before
    assert case != "missing" or not target.exists()  # nothing created


def test_bad_storage_options_exit_2(tmp_path, capsys):
    code, out, err = _inspect(capsys, str(tmp_path), "--storage-options", "{not json")
    assert code == 2 and out == ""
    lines = _human_lines(err)
    assert len(lines) == 1 and "--storage-options" in lines[0]


def test_unreachable_endpoint_exit_2_with_one_line(capsys):
    """No S3 server on that port: one line naming the URL and the error, no traceback,
    and credentials passed in the URL are masked."""
    from clam_dist.data.local_s3 import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"
    creds = json.dumps({"key": "k", "secret": "s"})
    code, out, err = _inspect(
        capsys, "s3://bucket/model", "--endpoint-url", endpoint, "--storage-options", creds
    )
    assert code == 2 and out == ""
    lines = _human_lines(err)
    assert len(lines) == 1 and "s3://bucket/model: cannot read" in lines[0]
    assert "Traceback" not in err
    code, _, err = _inspect(capsys, "s3://user:pw@bucket/model", "--endpoint-url", endpoint)
    assert code == 2 and "user:pw" not in err and len(_human_lines(err)) == 1


def test_model_and_output_on_local_s3(s3_server, assignments, capsys):
    """Any fsspec URL: the artifact and the assignment output uploaded to the S3 server,
    inspected with --storage-options (credentials) and --endpoint-url."""
    out_dir, rows = assignments
    opts = s3_server.storage_options
    model_url = s3_server.url("inspect/model")
    save_artifact(
        ClAM(n_clusters=3, epochs=1, random_state=0).fit(_blobs()).to_artifact(), model_url, opts
    )
    prefix_url = s3_server.url("inspect/out")
    fs = OutputPrefix(prefix_url, opts).fs
    fs.put(str(out_dir) + "/", prefix_url.removeprefix("s3://") + "/", recursive=True)
    endpoint = opts["client_kwargs"]["endpoint_url"]
    cred = json.dumps({k: v for k, v in opts.items() if k != "client_kwargs"})
    code, out, err = _inspect(
        capsys, model_url, "--storage-options", cred, "--endpoint-url", endpoint
    )
    assert code == 0, err
    assert _fields(out)["method"] == "clam" and _fields(out)["k (clusters)"] == "3"
    code, out, err = _inspect(capsys, prefix_url, "--storage-options", json.dumps(opts), "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["committed"] is True and data["rows"] == rows and data["files"] == 2
    code, out, err = _inspect(
        capsys, s3_server.url("inspect/nothing-here"), "--storage-options", json.dumps(opts)
    )
    assert code == 2 and len(_human_lines(err)) == 1 and "does not exist" in err


def test_subprocess_prints_only_the_table(pipeline_run, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    model = str(pipeline_run / "model")
    proc = subprocess.run(
        [sys.executable, "-m", "clam_dist", "inspect", model],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == render(inspect_path(model)) + "\n"
    assert _human_lines(proc.stderr) == []
    proc = subprocess.run(
        [sys.executable, "-m", "clam_dist", "inspect", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert len(_human_lines(proc.stderr)) == 1 and "Traceback" not in proc.stderr


@pytest.mark.ray
def test_model_trained_with_ray_train_names_its_data(ray_local, tmp_path, capsys):
    """The distributed trainer records its config: the training data URL shows."""
    from clam_dist.config import load_config
    from clam_dist.data.writer import write_vectors
    from clam_dist.train.config import TrainConfig
    from clam_dist.train.trainer import run_training

    x = _blobs(n=100)
    write_vectors(str(tmp_path / "data"), x, rows_per_file=100)
    cfg = load_config(
        TrainConfig,
        None,
        [
            f"data.url={tmp_path / 'data'}",
            "model.n_clusters=3",
            "optim.epochs=1",
            "optim.batch_size=100",
            "run.num_workers=1",
            "run.name=one",
            f"run.storage_path={tmp_path / 'runs'}",
        ],
    )
    res = run_training(cfg)
    code, out, err = _inspect(capsys, res.artifact_url, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["training_data"] == str(tmp_path / "data")
    assert data["trained_with"] == "ray-train"
    assert data["epochs"] == 1
    assert data["energy_p99"] == pytest.approx(load_artifact(res.artifact_url).meta["energy_p99"])
    assert data["rows_seen"] is None  # the distributed trainer does not record it (yet)
