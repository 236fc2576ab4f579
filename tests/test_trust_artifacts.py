"""Issue 24, B8 and B11 (inspect), from the user's seat: `clam-dist` as a real subprocess
(tests/cli_harness.py).

B8: a model file is checked (the safetensors header, model.json's declared sizes, the
file's size) with bounded reads before any tensor is read, so a 1 GB zero-filled
``model.safetensors`` costs no memory and a model.json claiming k = 10^12 is refused;
`inspect` refuses exactly what `load_artifact` refuses (one shared check).
B11: `inspect` recognises a training run folder and a make-dataset output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from cli_harness import REPO, CliResult, cli_env, fails, run_cli

from clam_dist import ClAM
from clam_dist.artifacts import ArtifactError, load_artifact, save_artifact
from clam_dist.data.writer import write_vectors
from clam_dist.datasets.synthetic import make_gaussian_mixture

GIB = 2**30
# A CLI process (Python, torch, pyarrow, a Ray driver) stays well under this; reading the
# 1 GB file whole took it past 1.09 GB.
PEAK_RSS_LIMIT = 600 * 2**20

# Runs the command given as its arguments with inherited stdout/stderr, then writes the
# child's peak RSS (bytes) to $PEAK_RSS_FILE and exits with the child's exit code. Its own
# waited-for children are the only ones RUSAGE_CHILDREN sees, unlike the test process's.
_PEAK_WRAPPER = (
    "import os, resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[1:]).returncode\n"
    "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024\n"
    "open(os.environ['PEAK_RSS_FILE'], 'w').write(str(peak))\n"
    "sys.exit(code)\n"
)


def run_measured(*args, ray_address: str | None = None) -> tuple[CliResult, int]:
    """``clam-dist ARGS`` as a real subprocess (as run_cli), plus its peak RSS in bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        peak_file = os.path.join(tmp, "peak")
        argv = [sys.executable, "-m", "clam_dist", *(str(a) for a in args)]
        proc = subprocess.run(
            [sys.executable, "-c", _PEAK_WRAPPER, *argv],
            cwd=str(REPO),
            env=cli_env(ray_address, PEAK_RSS_FILE=peak_file),
            capture_output=True,
            text=True,
            timeout=300,
            stdin=subprocess.DEVNULL,
        )
        peak = int(Path(peak_file).read_text())
    return CliResult(argv, proc.returncode, proc.stdout, proc.stderr), peak


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A small data set and a good model trained on it (setup, in-process)."""
    root = tmp_path_factory.mktemp("artifacts")
    x, y, _ = make_gaussian_mixture(300, 4, 3, separation=6.0, seed=1)
    write_vectors(str(root / "data"), x, labels=y, rows_per_file=150)
    model = ClAM(n_clusters=3, epochs=1, batch_size=100, random_state=0).fit(x)
    save_artifact(model.to_artifact(), str(root / "model"))
    return root


def copy_model(world: Path, dest: Path) -> Path:
    dest.mkdir(parents=True)
    for name in ("model.json", "model.safetensors"):
        (dest / name).write_bytes((world / "model" / name).read_bytes())
    return dest


def edit_meta(model: Path, **changes) -> None:
    meta = json.loads((model / "model.json").read_text())
    meta.update(changes)
    (model / "model.json").write_text(json.dumps(meta))


def assign_args(world: Path, model: Path, out: Path) -> list[str]:
    return ["assign", "--input", world / "data", "--model", model, "--output", out]


# -- B8: bounded reads -----------------------------------------------------------------


@pytest.fixture
def gigabyte_model(world, tmp_path) -> Path:
    """A good model.json beside a 1 GB zero-filled model.safetensors (sparse: no disk)."""
    model = copy_model(world, tmp_path / "big")
    with open(model / "model.safetensors", "wb") as f:
        f.truncate(GIB)
    return model


def test_inspect_refuses_a_zero_filled_gigabyte_model_without_reading_it(gigabyte_model):
    r, peak = run_measured("inspect", gigabyte_model)
    line = fails(r, 2, str(gigabyte_model / "model.safetensors"), "refused", "header")
    assert peak < PEAK_RSS_LIMIT, f"peak RSS {peak / 2**20:.0f} MiB\n{line}"


@pytest.mark.ray
def test_assign_refuses_a_zero_filled_gigabyte_model_without_reading_it(
    world, gigabyte_model, tmp_path, ray_address
):
    out = tmp_path / "out"
    r, peak = run_measured(*assign_args(world, gigabyte_model, out), ray_address=ray_address)
    line = fails(r, 2, str(gigabyte_model / "model.safetensors"), "header")
    assert peak < PEAK_RSS_LIMIT, f"peak RSS {peak / 2**20:.0f} MiB\n{line}"
    assert not out.exists()


@pytest.mark.ray
def test_a_model_json_claiming_a_trillion_clusters_is_refused_by_assign_and_inspect(
    world, tmp_path, ray_address
):
    model = copy_model(world, tmp_path / "huge-k")
    edit_meta(model, k=10**12)
    r = run_cli(*assign_args(world, model, tmp_path / "out"), ray_address=ray_address)
    fails(r, 2, str(model), "k = 1000000000000")
    r = run_cli("inspect", model)
    fails(r, 2, str(model), "refused", "k = 1000000000000")
    r = run_cli("inspect", model, "--json")
    fails(r, 2, "refused", "k = 1000000000000")


def _forged_header(model: Path) -> None:
    """model.json and the header both claim 10^12 prototypes (a 4 TB tensor) in a file of
    a few hundred bytes: only the file's size gives it away."""
    raw = (model / "model.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    rows, d = header["prototypes"]["shape"]
    header["prototypes"]["shape"] = [10**12, d]
    start = header["prototypes"]["data_offsets"][0]
    header["prototypes"]["data_offsets"] = [start, start + 10**12 * d * 4]
    text = json.dumps(header).encode()
    (model / "model.safetensors").write_bytes(len(text).to_bytes(8, "little") + text)
    meta = json.loads((model / "model.json").read_text())
    meta["tensor_shapes"]["prototypes"] = [10**12, d]
    edit_meta(model, k=10**12, tensor_shapes=meta["tensor_shapes"])


CORRUPTIONS = {
    "huge header length": lambda m: (m / "model.safetensors").write_bytes(
        (2**62).to_bytes(8, "little") + b"{}"
    ),
    "header not JSON": lambda m: (m / "model.safetensors").write_bytes(
        (4).to_bytes(8, "little") + b"{{{{"
    ),
    "truncated tensors": lambda m: (m / "model.safetensors").write_bytes(
        (m / "model.safetensors").read_bytes()[:-8]
    ),
    "forged 4 TB prototypes": _forged_header,
    "d_model edited": lambda m: edit_meta(m, d_model=7),
    "steps missing": lambda m: edit_meta(m, steps=None),
    "unknown method": lambda m: edit_meta(m, method="magic"),
    "model.json too large": lambda m: (m / "model.json").write_bytes(b" " * (65 * 2**20)),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_inspect_refuses_exactly_what_load_artifact_refuses(world, tmp_path, case):
    """In-process for each corruption (one shared check, the same message); the CLI's
    one line for two of them."""
    from clam_dist.commands.inspect import InspectError, inspect_path

    model = copy_model(world, tmp_path / "m")
    CORRUPTIONS[case](model)
    with pytest.raises(ArtifactError) as refused:
        load_artifact(str(model))
    with pytest.raises(InspectError) as shown:
        inspect_path(str(model))
    assert str(shown.value) == f"refused: {refused.value}"
    if case in ("forged 4 TB prototypes", "unknown method"):
        line = fails(run_cli("inspect", model), 2, "refused")
        assert str(refused.value) in line, (case, line)


def test_inspect_still_shows_a_good_model(world):
    r = run_cli("inspect", world / "model", "--json")
    assert r.code == 0, r.describe()
    data = json.loads(r.out)
    assert data["kind"] == "model artifact" and data["complete"] is True
    assert data["status"] == "complete" and data["k"] == 3


# -- B11: what inspect recognises ---------------------------------------------------------


def _fields(out: str) -> dict[str, str]:
    rows = {}
    for line in out.splitlines():
        parts = [p for p in line.split("  ") if p.strip()]
        if len(parts) == 2:
            rows[parts[0].strip()] = parts[1].strip()
    return rows


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A data set written by `clam-dist make-dataset` (a real subprocess)."""
    url = tmp_path_factory.mktemp("made") / "mix"
    r = run_cli(
        "make-dataset", url, "--n", 400, "--d", 5, "--k", 3, "--rows-per-file", 150, "--seed", 2
    )
    assert r.code == 0, r.describe()
    return url


def test_inspect_describes_a_make_dataset_output_as_a_data_set(dataset):
    r = run_cli("inspect", dataset)
    assert r.code == 0, r.describe()
    fields = _fields(r.out)
    assert fields["kind"] == "data set", r.out
    assert fields["status"] == "committed"
    assert fields["written by"] == "clam-dist make-dataset"
    assert fields["rows"] == "400" and fields["files"] == "3"
    assert fields["source"] == "mixture"
    assert fields["d (dimension)"] == "5" and fields["k (components)"] == "3"
    assert fields["true centres"] == "_centers.json"
    assert fields["columns"] == "id, x, label"  # read from the first file's footer
    for label in ("model", "drift share > train p99", "input"):  # an assignment's fields
        assert label not in fields, label
    r = run_cli("inspect", dataset, "--json")
    assert r.code == 0, r.describe()
    data = json.loads(r.out)
    assert data["kind"] == "data set" and data["rows"] == 400 and data["files"] == 3
    assert data["columns"] == [c.strip() for c in fields["columns"].split(",")]


@pytest.mark.ray
def test_inspect_describes_a_training_run_folder(dataset, tmp_path, ray_address):
    store = tmp_path / "runs"
    r = run_cli(
        "train",
        "--data",
        dataset,
        "--k",
        3,
        "--workers",
        1,
        "--set",
        f"run.storage_path={store}",
        "--set",
        "run.name=tiny",
        "--set",
        "optim.epochs=2",
        "--set",
        "optim.batch_size=100",
        ray_address=ray_address,
    )
    assert r.code == 0, r.describe()
    run = store / "tiny"
    r = run_cli("inspect", run)
    assert r.code == 0, r.describe()
    fields = _fields(r.out)
    assert fields["kind"] == "training run", r.out
    assert fields["name"] == "tiny"
    assert fields["status"] == "finished (model written)"
    assert fields["method"] == "clam" and fields["k (clusters)"] == "3"
    assert fields["training data"] == str(dataset)
    assert fields["epochs"] == "2"
    checkpoints = sorted(p.name for p in run.glob("checkpoint_*") if p.is_dir())
    assert checkpoints and fields["checkpoints"] == str(len(checkpoints)), r.out
    assert fields["latest checkpoint"].startswith(checkpoints[-1]), fields["latest checkpoint"]
    assert "epoch" in fields["latest checkpoint"]
    assert fields["model"].startswith(f"{run / 'model'} (complete"), fields["model"]
    r = run_cli("inspect", run, "--json")
    data = json.loads(r.out)
    assert data["kind"] == "training run" and data["model_status"] == "complete"
    assert data["latest_checkpoint"]["name"] == checkpoints[-1]
    assert data["config"]["model.n_clusters"] == 3

    # A training run whose model is refused says so (and names why) in its model row.
    edit_meta(run / "model", k=10**12)
    r = run_cli("inspect", run)
    assert r.code == 0, r.describe()
    model_row = _fields(r.out)["model"]
    assert "refused" in model_row and "k = 1000000000000" in model_row, model_row
    assert _fields(r.out)["status"].startswith("model refused"), r.out


def test_a_training_run_folder_without_a_model_yet(tmp_path):
    """What a run folder holds before its first checkpoint: only run-config.json."""
    run = tmp_path / "runs" / "early"
    run.mkdir(parents=True)
    (run / "run-config.json").write_text(
        json.dumps({"identity": {"model.method": "clam", "model.n_clusters": 4}})
    )
    r = run_cli("inspect", run)
    assert r.code == 0, r.describe()
    fields = _fields(r.out)
    assert fields["kind"] == "training run"
    assert fields["status"].startswith("no model yet")
    assert fields["checkpoints"] == "0" and fields["model"] == "not written yet"
    assert fields["k (clusters)"] == "4"


def test_prototypes_are_finite_is_checked_too(world, tmp_path):
    """A NaN in the prototypes (same shapes, same size) is refused by both."""
    from safetensors.numpy import load, save

    model = copy_model(world, tmp_path / "nan")
    tensors = load((model / "model.safetensors").read_bytes())
    tensors["prototypes"][0, 0] = np.nan
    (model / "model.safetensors").write_bytes(save(tensors))
    with pytest.raises(ArtifactError, match="NaN"):
        load_artifact(str(model))
    fails(run_cli("inspect", model), 2, "refused", "NaN")
