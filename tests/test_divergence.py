"""Cross-worker parameter checks with a real gloo process group on loopback: the
divergence metric is measured, and a corrupted worker is caught (issue 15)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap

import torch

from clam_dist.train.loop import Comm, parameter_divergence

WORKER = textwrap.dedent(
    """
    import json, sys
    import torch
    import torch.distributed as dist
    from clam_dist.train.loop import Comm, parameter_divergence
    from clam_dist.train.step import fingerprint

    rank, port, corrupt, out = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), sys.argv[4]
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2
    )
    comm = Comm(True, torch.device("cpu"), False)
    params = torch.linspace(-1, 1, 1000)
    if rank == 1:
        params[417] += corrupt  # this worker's prototypes corrupted on purpose
    fp = comm.all_reduce(fingerprint(params), "max", kind="verify")
    result = {
        "divergence": parameter_divergence(comm, params),
        "fingerprints_agree": int(fp[0]) == -int(fp[1]),
        "verify_bytes": comm.bytes["verify"],
    }
    json.dump(result, open(f"{out}.{rank}", "w"))
    dist.destroy_process_group()
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two_workers(tmp_path, corrupt: float) -> list[dict]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port, out = str(_free_port()), str(tmp_path / "result")
    procs = [
        subprocess.Popen([sys.executable, str(script), str(r), port, str(corrupt), out])
        for r in (0, 1)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    return [json.loads(open(f"{out}.{r}").read()) for r in (0, 1)]


def test_identical_workers_measure_zero_divergence(tmp_path):
    results = _run_two_workers(tmp_path, 0.0)
    assert all(r["divergence"] == 0.0 and r["fingerprints_agree"] for r in results)


def test_a_corrupted_worker_is_caught_and_its_gap_measured(tmp_path):
    results = _run_two_workers(tmp_path, 0.125)
    for r in results:  # every worker sees the same verdict and the exact gap
        assert not r["fingerprints_agree"]
        assert abs(r["divergence"] - 0.125) < 1e-6
        assert r["verify_bytes"] == 2 * 8 + 2 * 1000 * 4


def test_one_worker_has_no_divergence():
    comm = Comm(False, torch.device("cpu"), False)
    assert parameter_divergence(comm, torch.randn(5, 3)) == 0.0
