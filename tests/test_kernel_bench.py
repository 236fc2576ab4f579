"""The kernel benchmark runs end to end on tiny sizes, and the k-means kernel matches a
float64 reference (labels up to exact ties, per-centre sums and counts)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from clam_dist.models.kmeans import _sums_counts, assign_nearest, lloyd

ROOT = Path(__file__).resolve().parents[1]


def test_bench_kernel_writes_its_fields(tmp_path: Path) -> None:
    pytest.importorskip("faiss")
    out = tmp_path / "kernel.json"
    cmd = [
        sys.executable, str(ROOT / "jobs" / "bench_kernel.py"), "--rows", "3000", "--d", "16",
        "--ks", "8", "--iters", "3", "--big-k", "16", "--threads", "1", "--json", str(out),
    ]  # fmt: skip
    subprocess.run(cmd, check=True, timeout=120, cwd=ROOT, capture_output=True)
    res = json.loads(out.read_text())
    (row,) = res["lloyd"]
    for key in ("ours_per_iter_s", "faiss_per_iter_s", "speed_vs_faiss", "ours_inertia"):
        assert row[key] > 0
    assert row["k"] == 8 and row["faiss_inertia"] > 0
    (srow,) = res["search"]
    assert srow["speed_vs_faiss"] > 0 and srow["label_agreement"] > 0.99
    est = res["estimator"]
    assert est["k"] == 16 and est["time_ratio"] > 0 and est["ours_inertia"] > 0
    assert res["config"]["rows"] == "3000"


def _reference(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Squared distances in float64, (n, k)."""
    x64, c64 = x.astype(np.float64), c.astype(np.float64)
    return ((x64[:, None, :] - c64[None, :, :]) ** 2).sum(-1)


@pytest.mark.parametrize("k", [1, 7, 256, 600])
@pytest.mark.parametrize("block_elems", [1 << 12, 1 << 22])
def test_assign_nearest_matches_float64(k: int, block_elems: int) -> None:
    rng = np.random.default_rng(k)
    x = (rng.standard_normal((700, 24)) * 3).astype(np.float32)
    c = x[rng.choice(700, k, replace=False)] + rng.standard_normal((k, 24)).astype(np.float32)
    d2, lab = assign_nearest(torch.from_numpy(x), torch.from_numpy(c), block_elems=block_elems)
    ref = _reference(x, c)
    best = ref.min(1)
    lab = lab.numpy()
    # Labels agree with the float64 argmin except where the two are within float32
    # rounding of each other (a tie at the kernel's precision).
    picked = ref[np.arange(700), lab]
    assert np.all(picked - best <= 1e-4 * (1 + best))
    assert np.mean(lab == ref.argmin(1)) > 0.99
    np.testing.assert_allclose(d2.numpy(), best, rtol=1e-4, atol=1e-3)


def test_sums_counts_match_float64() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5000, 12)).astype(np.float32)
    lab = rng.integers(0, 40, 5000)
    lab[lab == 3] = 4  # an empty centre
    sums, counts = _sums_counts(torch.from_numpy(x), torch.from_numpy(lab), 40)
    ref_s = np.zeros((40, 12))
    np.add.at(ref_s, lab, x.astype(np.float64))
    np.testing.assert_array_equal(counts.numpy(), np.bincount(lab, minlength=40))
    np.testing.assert_allclose(sums.numpy(), ref_s, rtol=1e-5, atol=1e-4)


def test_lloyd_tol_zero_runs_until_labels_settle() -> None:
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.standard_normal((2000, 8)).astype(np.float32))
    res = lloyd(x, x[:16].clone(), max_iter=5, tol=0.0)
    assert res.n_iter == 5  # random data: labels still move after 5 passes
    full = lloyd(x, x[:16].clone(), max_iter=300)  # default tol stops early
    assert full.n_iter < 300


def test_estimator_stops_early_and_warns_on_few_rows() -> None:
    import clam_dist

    rng = np.random.default_rng(2)
    x = rng.standard_normal((600, 4)).astype(np.float32)
    est = clam_dist.KMeans(n_clusters=20, random_state=0)
    assert est.tol > 0  # the relative-inertia early stop is on by default
    with pytest.warns(UserWarning, match="per cluster"):
        est.fit(x)  # 30 rows per centroid < 39
    assert est.n_iter_ < est.max_iter
