"""Scheduled partitions through the CLI as a scheduler calls it: `clam-dist run-partition`
as a real subprocess (joining one real Ray cluster), on real Parquet partitions of a
drifting mixture. Day 1 trains v1; day 2 is stable (no refresh); day 3 moves three
components (refresh, gate, promotion; ids of unchanged clusters stay put); re-running a
day changes nothing; a gate that cannot be met refuses the challenger."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clam_dist.assign.commit import read_assignments
from clam_dist.data.writer import write_vectors
from clam_dist.datasets.drifting import DriftingStream, day_key
from tests.cli_harness import checksums, run_cli

pytestmark = pytest.mark.timeout(900)

STREAM = DriftingStream(d=8, k=8, rows=12_000, move_day=3, new_day=4, seed=3)
SETTINGS = [
    "--set", "model.method=kmeans", "--set", "model.n_clusters=8",
    "--set", "refresh.train_rows=8000", "--set", "gate.holdout_rows=2000",
    "--set", "data.id_column=id",
]  # fmt: skip


@pytest.fixture(scope="module")
def days(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    truth = {}
    for day in range(1, 5):
        x, labels, ids = STREAM.partition(day)
        write_vectors(f"{root}/dt={day_key(day)}", x, ids=ids, rows_per_file=4_000)
        truth[day] = dict(zip(ids.tolist(), labels.tolist()))
    return root, truth


def _run(ray_address, tmp_path, data, day: int, *extra: str):
    summary = tmp_path / f"summary-{day}-{len(extra)}.json"
    r = run_cli(
        "run-partition", "--registry", tmp_path / "registry", "--name", "events",
        "--partition", day_key(day), "--input", f"{data}/dt={{partition}}",
        "--summary", summary, *SETTINGS, *extra,
        ray_address=ray_address, timeout=600,
    )  # fmt: skip
    return r, (json.loads(summary.read_text()) if r.code == 0 else None)


def _labels(url: str) -> dict[int, int]:
    table = read_assignments(url, columns=["id", "cluster"])
    return dict(zip(table.column("id").to_pylist(), table.column("cluster").to_pylist()))


def test_three_days_stable_drifted_rerun_and_a_refused_challenger(ray_address, tmp_path, days):
    data, truth = days
    # Day 1: the first version, trained on the partition and made champion.
    r, s1 = _run(ray_address, tmp_path, data, 1)
    assert r.code == 0, r.describe()
    assert (s1["model_version"], s1["promoted"], s1["refreshed"]) == (1, True, False)
    assert s1["assignments"].endswith("assignments/dt=2026-12-01/model=v0001")
    day1 = _labels(s1["assignments"])
    assert len(day1) == STREAM.rows and set(day1.values()) == set(range(8))
    assert "v1 trained on 2026-12-01 and made champion" in r.out

    # Day 2: the same mixture: about 1% of rows above the training p99, no refresh.
    r, s2 = _run(ray_address, tmp_path, data, 2)
    assert r.code == 0, r.describe()
    assert (s2["model_version"], s2["refreshed"], s2["promoted"]) == (1, False, False)
    assert s2["drift_share"] < 0.03
    assert "no refresh; v1 stays champion" in r.out

    # Day 3: three components moved: refresh warm, the challenger passes the gate.
    r, s3 = _run(ray_address, tmp_path, data, 3)
    assert r.code == 0, r.describe()
    assert s3["drift_share"] > 0.2 and s3["refreshed"] and s3["promoted"]
    assert s3["model_version"] == 2 and s3["gate"]["passed"]
    assert s3["gate"]["challenger"] < s3["gate"]["champion"]
    assert s3["new_ids"] and min(s3["new_ids"]) >= 8  # new clusters, ids never used before
    day3 = _labels(s3["assignments"])
    # Rows of the components that did not move keep the cluster id their component had.
    component_id = {}
    for row_id, cluster in day1.items():
        component_id.setdefault(truth[1][row_id], []).append(cluster)
    majority = {c: np.bincount(v).argmax() for c, v in component_id.items()}
    unchanged = [i for i in day3 if STREAM.unchanged(np.array([truth[3][i]]))[0]]
    kept = np.mean([day3[i] == majority[truth[3][i]] for i in unchanged])
    assert kept >= 0.98, kept
    # The moved components' rows are in clusters with new ids.
    moved = [day3[i] for i in day3 if truth[3][i] < STREAM.moved]
    assert np.mean([c in s3["new_ids"] for c in moved]) > 0.9

    # Re-running day 2 changes nothing, says so, and keeps its model version.
    before = checksums(tmp_path / "registry" / "events" / "assignments")
    r, again = _run(ray_address, tmp_path, data, 2)
    assert r.code == 0, r.describe()
    assert "already ran with v1" in r.out and "nothing changed" in r.out
    assert again["rerun"] and again["model_version"] == 1
    assert (again["refreshed"], again["promoted"]) == (False, False)
    assert checksums(tmp_path / "registry" / "events" / "assignments") == before

    # Day 4 adds two components; a gate that cannot be met refuses the challenger: it is
    # published (as "challenger") but v2 stays champion and labels the day.
    r, s4 = _run(ray_address, tmp_path, data, 4, "--set", "gate.margin=0.99")
    assert r.code == 0, r.describe()
    assert s4["refreshed"] and not s4["promoted"] and not s4["gate"]["passed"]
    assert s4["model_version"] == 2 and s4["challenger_version"] == 3
    assert "refused by the gate" in r.out

    # Applying the current champion to an old partition is explicit.
    r, s1b = _run(ray_address, tmp_path, data, 1, "--reapply-champion")
    assert r.code == 0, r.describe()
    assert s1b["model_version"] == 2 and s1b["assignments"].endswith("model=v0002")

    # The registry: three versions, their cards, aliases and the timeline report.
    r = run_cli("models", "list", "--registry", tmp_path / "registry", "--name", "events", "--json")
    assert r.code == 0, r.describe()
    listed = json.loads(r.out)
    versions = listed if isinstance(listed, list) else listed.get("versions", listed)
    assert len(versions) == 3
    r = run_cli(
        "report", "--registry", tmp_path / "registry", "--name", "events",
        "--output", tmp_path / "report",
    )  # fmt: skip
    assert r.code == 0, r.describe()
    html = (tmp_path / "report" / "timeline.html").read_text()
    assert all(day_key(d) in html for d in range(1, 5))


def test_bad_partition_keys_and_missing_input_are_refused_before_any_work(tmp_path, days):
    data, _ = days
    for key in ("../x", "a/b", ""):
        r = run_cli(
            "run-partition", "--registry", tmp_path / "reg", "--name", "m", "--partition",
            key, "--input", f"{data}/dt=2026-12-01",
        )  # fmt: skip
        assert r.code == 2, r.describe()
        r.one_line("partition")
    r = run_cli(
        "run-partition", "--registry", tmp_path / "reg", "--name", "m", "--partition",
        "2026-12-09", "--input", f"{data}/dt={{partition}}",
    )  # fmt: skip
    assert r.code == 2, r.describe()
    r.one_line("2026-12-09")
    assert not (tmp_path / "reg").exists()


def test_a_schedule_in_object_storage(ray_address, s3_server, s3_options, days):
    """Registry and partitions in a real S3 API server (moto on 127.0.0.1), credentials
    only in the environment: the first version, then a drifted day promoted."""
    from clam_dist.data.source import open_filesystem
    from tests.cli_harness import cli_env

    bucket = "s3://clam-test/schedule"
    for day in (1, 3):
        x, _, ids = STREAM.partition(day)
        write_vectors(
            f"{bucket}/data/dt={day_key(day)}", x, ids=ids, rows_per_file=6_000,
            storage_options=s3_options,
        )  # fmt: skip
    env = cli_env(ray_address, **s3_server.env())
    summaries = []
    for day in (1, 3):
        r = run_cli(
            "run-partition", "--registry", f"{bucket}/registry", "--name", "events",
            "--partition", day_key(day), "--input", f"{bucket}/data/dt={{partition}}",
            *SETTINGS, env=env, timeout=600,
        )  # fmt: skip
        assert r.code == 0, r.describe()
        summaries.append(json.loads(r.out.strip().splitlines()[-1]))
    assert [s["model_version"] for s in summaries] == [1, 2]
    assert summaries[1]["refreshed"] and summaries[1]["promoted"]
    fs, root = open_filesystem(f"{bucket}/registry/events", s3_options)
    fs.invalidate_cache()
    names = {p.rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)}
    assert {"v0001", "v0002", "aliases", "partitions", "assignments", "reservoir"} <= names
    assert summaries[1]["assignments"].startswith("s3://clam-test/schedule/registry/events/")
    r = run_cli(
        "models", "show", "--registry", f"{bucket}/registry", "--name", "events",
        "--alias", "champion", env=env,
    )  # fmt: skip
    assert r.code == 0, r.describe()
    card = json.loads(r.out)["card"]
    assert card["parent"] == 1 and card["partitions"][0] == day_key(3)


def test_a_second_run_of_the_same_name_is_refused_while_one_holds_it(tmp_path, days):
    data, _ = days
    from clam_dist.pipeline.lock import acquire, release
    from clam_dist.pipeline.run_store import RunStore

    store = RunStore(str(tmp_path / "reg" / "m"))
    store.local.mkdir(parents=True)
    me, _ = acquire(store)
    try:
        r = run_cli(
            "run-partition", "--registry", tmp_path / "reg", "--name", "m", "--partition",
            "2026-12-01", "--input", f"{data}/dt={{partition}}",
        )  # fmt: skip
    finally:
        release(store, me)
    assert r.code == 2, r.describe()
    r.one_line("is busy", "another run-partition")
    assert sorted(p.name for p in store.local.iterdir()) == []
