"""jobs/bench_large_k.py, run tiny: the large-k benchmark (ours vs faiss two-level fit,
assignment against flat / IVF / HNSW, per-step peak RSS) runs end to end as a real
process and writes the figures it promises; faiss's rebalancing failure is made safe."""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "jobs" / "bench_large_k.py"
COARSE = 16
TINY = [
    "--rows", "6000", "--d", "8", "--k", "256", "--coarse", str(COARSE), "--iters", "10",
    "--assign-rows", "1000", "--sample-rows", "500", "--ef-search", "16,64",
    # One thread: on a busy 2-core machine two OpenMP threads per tiny op mostly wait.
    "--threads", "1", "--skip-clam",
]  # fmt: skip


def _job():
    """The script as a module (jobs/ is not a package); importing runs no benchmark."""
    spec = importlib.util.spec_from_file_location("job_bench_large_k", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_tiny_run_writes_every_figure(tmp_path):
    out_json, out_png = tmp_path / "large_k.json", tmp_path / "large_k.png"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *TINY, "--json", str(out_json), "--plot", str(out_png)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "fit time ours / faiss" in proc.stdout and "met" in proc.stdout
    assert out_png.stat().st_size > 0
    report = json.loads(out_json.read_text())

    fit = report["fit"]
    for name in ("ours", "ours_defaults", "faiss"):
        assert fit[name]["seconds"] > 0 and fit[name]["inertia"] > 0, name
        assert fit[name]["k"] == 256
    assert "mode" in fit["faiss"]  # which faiss path ran is stated
    # Same data, same level sizes: k-means inertias within a sane factor of each other.
    assert 0.5 < fit["ours"]["inertia"] / fit["faiss"]["inertia"] < 2.0
    assert report["fit_target"]["inertia_ratio"] == fit["ours"]["inertia"] / fit["faiss"]["inertia"]

    assign = report["assign"]
    curve = assign["ours"]["curve"]
    assert [e["nprobe"] for e in curve] == [1, 2, 4, 8, 16]
    assert curve[-1]["agreement"] == 1.0  # all cells probed: exact
    assert all(e["rows_per_s"] > 0 for e in curve)
    assert assign["ours"]["exact"]["agreement"] == 1.0
    assert assign["flat"]["rows_per_s"] > 0
    ivf = assign["ivf"]["curve"]
    assert [e["nprobe"] for e in ivf] == [1, 2, 4, 8, 16] and ivf[-1]["agreement"] == 1.0
    assert [e["ef_search"] for e in assign["hnsw"]["curve"]] == [16, 64]
    assert all(0.0 <= e["agreement"] <= 1.0 for e in assign["hnsw"]["curve"])

    steps = {"fit_ours", "fit_defaults", "fit_faiss", "assign_flat", "assign_ours"}
    steps |= {"assign_ivf", "assign_hnsw"}
    assert set(report["rss"]) == steps
    for step, rss in report["rss"].items():
        assert rss["peak_mib"] >= rss["base_mib"] > 0, step
        assert rss["formula_mib"] > 0 and rss["formula"], step


def test_faiss_rebalancing_failure_is_caught_and_made_safe():
    """Far-off pairs of rows get coarse cells of their own; faiss's proportional split
    gives such a cell 0 centroids and faiss fails: the step re-runs the recipe with
    >= 1 centroid per non-empty cell and says so."""
    job = _job()
    rng = np.random.default_rng(0)
    far = np.repeat(np.eye(4)[:3] * 100.0, 2, axis=0) + rng.normal(0, 0.01, (6, 4))
    x = np.vstack([rng.normal(0, 1, (2000, 4)), far]).astype(np.float32)
    out = job.fit_faiss(x, argparse.Namespace(k=20, coarse=8, iters=5), Path("."))
    assert "rebalancing failed" in out.extra["mode"]
    assert out.extra["failed_error"].startswith("RuntimeError")
    assert out.fine.shape == (20, 4) and np.isfinite(out.fine).all()


def test_fit_only_reports_clam_at_the_fine_level(tmp_path):
    """--fit-only --clam-epochs: ClAM (two levels, its epochs as asked) beside ours and
    faiss; no assignment step runs and no plot is written."""
    out_json, out_png = tmp_path / "fit.json", tmp_path / "fit.png"
    args = [a for a in TINY if a != "--skip-clam"]
    cmd = [sys.executable, str(SCRIPT), *args, "--skip-defaults", "--fit-only"]
    cmd += ["--clam-epochs", "1", "--json", str(out_json), "--plot", str(out_png)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out_json.read_text())
    assert set(report["fit"]) == {"ours", "faiss", "clam"}
    clam = report["fit"]["clam"]
    assert clam["epochs"] == 1 and clam["inertia"] > 0 and clam["silhouette"] is not None
    assert report["assign"] == {} and report["assign_target"] is None
    assert set(report["rss"]) == {"fit_ours", "fit_faiss", "fit_clam"}
    assert not out_png.exists()
