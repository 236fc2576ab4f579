"""Training and assignment through a loopback proxy that fails a share of the requests to
the local S3 server (503 SlowDown, connection resets, delays) finish with the same result
as without faults: transient errors are retried (botocore's standard retry mode, our own
bounded retries for listings and footers), never turned into wrong or missing rows."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from fault_proxy import fault_proxy  # tests/fault_proxy.py (rootdir on sys.path)

from clam_dist import ClAM
from clam_dist.artifacts import load_artifact, save_artifact
from clam_dist.assign.commit import read_assignments
from clam_dist.assign.pipeline import AssignConfig, run_assignment
from clam_dist.data.writer import write_vectors
from clam_dist.datasets.synthetic import make_gaussian_mixture

pytestmark = pytest.mark.ray

N, D, K = 3_000, 5, 4
FAULTS = dict(p_503=0.12, p_reset=0.06, p_delay=0.1, delay_s=0.05, seed=7)


def through(opts: dict, endpoint: str) -> dict:
    """The same storage options pointed at ``endpoint``, with a retry budget that makes
    a run of injected faults on one request vanishingly unlikely."""
    out = copy.deepcopy(opts)
    out["client_kwargs"]["endpoint_url"] = endpoint
    out["config_kwargs"] = {"retries": {"max_attempts": 12, "mode": "standard"}}
    return out


@pytest.fixture(scope="module")
def stored(s3_server):
    opts = s3_server.storage_options
    x, y, _ = make_gaussian_mixture(N, D, K, separation=6.0, seed=4)
    write_vectors(s3_server.url("faults/in"), x, labels=y, rows_per_file=500, storage_options=opts)
    model = ClAM(n_clusters=K, epochs=1, batch_size=100, random_state=0).fit(x[:500])
    save_artifact(model.to_artifact(), s3_server.url("faults/model"), opts)
    return s3_server, opts


def _assign(server, opts, output: str) -> np.ndarray:
    res = run_assignment(
        AssignConfig(
            input=server.url("faults/in"),
            output=server.url(output),
            model=server.url("faults/model"),
            outputs=["energy", "margin"],
            storage_options=opts,
            batch_size=400,
        )
    )
    assert res.rows == N
    table = read_assignments(server.url(output), opts).sort_by("id")
    return np.column_stack(
        [table.column(c).to_numpy().astype(np.float64) for c in ("cluster", "distance", "energy")]
    )


def test_assignment_through_faults_equals_assignment_without(ray_local, stored):
    server, opts = stored
    clean = _assign(server, opts, "faults/out-clean")
    with fault_proxy(server.endpoint_url, **FAULTS) as proxy:
        faulty = _assign(server, through(opts, proxy.endpoint_url), "faults/out-faulty")
    assert proxy.counts["503"] >= 3 and proxy.counts["reset"] >= 2, proxy.counts
    np.testing.assert_array_equal(faulty, clean)


def test_training_through_faults_equals_training_without(ray_local, stored, tmp_path):
    from clam_dist.sections import ModelSection, OptimSection
    from clam_dist.train.config import TrainConfig, TrainData, TrainRun
    from clam_dist.train.trainer import run_training

    server, opts = stored

    def train(storage_options: dict, name: str) -> np.ndarray:
        cfg = TrainConfig(
            data=TrainData(url=server.url("faults/in"), storage_options=storage_options,
                           init_sample=1000),
            model=ModelSection(n_clusters=K),
            optim=OptimSection(epochs=1, batch_size=250),
            run=TrainRun(name=name, storage_path=str(tmp_path / "store"), num_workers=1,
                         seed=3),
        )  # fmt: skip
        return load_artifact(run_training(cfg).artifact_url).prototypes

    clean = train(opts, "clean")
    with fault_proxy(server.endpoint_url, **FAULTS) as proxy:
        faulty = train(through(opts, proxy.endpoint_url), "faulty")
    assert proxy.counts["503"] >= 3 and proxy.counts["reset"] >= 2, proxy.counts
    np.testing.assert_allclose(faulty, clean, rtol=1e-5, atol=1e-6)
