"""jobs/bench_cells.py, run tiny as a real process: every variant fits the same cells,
the table and JSON carry each one's seconds and inertia, faiss first (the reference)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "jobs" / "bench_cells.py"


def test_tiny_run_reports_every_variant_against_faiss(tmp_path):
    out = tmp_path / "cells.json"
    args = ["--rows", "8000", "--d", "8", "--k", "512", "--coarse", "16", "--cells", "4"]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--iters", "5", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    names = [r["variant"] for r in result["results"]]
    assert names[0].startswith("faiss") and len(names) == 3 + 3 * 4
    assert len(result["cells"]) == 4
    for r in result["results"]:
        assert r["seconds"] > 0 and r["inertia"] > 0
    # Every variant fits the same cells with as many prototypes: inertia of one order.
    inertias = [r["inertia"] for r in result["results"]]
    assert max(inertias) < 2 * min(inertias)
    assert "| variant | seconds | vs faiss | inertia | vs faiss |" in proc.stdout
