"""The model registry's storage (clam_dist.registry.store) and `clam-dist models`: real
files, the real local S3 server (moto), real processes racing, the CLI as a subprocess.

Versions: published whole (card last), listed only when complete, loaded back; numbers
claimed exclusively, so publishers at once never share one. Aliases: every change in
the history, in order, with what it replaced; promote, rollback; racing setters get
distinct numbers and the alias ends at the latest change. Bad names and keys are refused
before anything is written."""

from __future__ import annotations

import json
import multiprocessing
import os
import traceback

import numpy as np
import pytest
from cli_harness import cli_env, fails, ok, run_cli

from clam_dist.artifacts import ModelArtifact
from clam_dist.pipeline.run_store import RunStore
from clam_dist.registry.store import ModelRegistry, RegistryError, check_partition_key

RACERS = 4  # processes publishing (or setting an alias) at once
EACH = 2  # publishes (or alias changes) per process


def _artifact(value: float = 1.0) -> ModelArtifact:
    return ModelArtifact(
        method="kmeans",
        prototypes=np.full((3, 2), value, np.float32),
        n_features=2,
        beta=1.0,
        alpha=1.0,
        steps=0,
        metric="euclidean",
    )


@pytest.fixture(params=["local", "s3"])
def registry_url(request, tmp_path):
    """A fresh registry: a local folder, or a prefix of the local S3 server's bucket."""
    if request.param == "local":
        return str(tmp_path / "registry"), None
    server = request.getfixturevalue("s3_server")
    return server.url(f"registry/{request.node.name}"), server.storage_options


# -- versions -------------------------------------------------------------------------


def test_publish_load_round_trip_and_card(registry_url):
    url, options = registry_url
    reg = ModelRegistry(url, "churn", options)
    assert reg.versions() == [] and reg.latest() is None and ModelRegistry.names(url, options) == []
    card = {"parent": None, "partitions": ["2024-01-01"], "metrics": {"silhouette": 0.5}}
    assert reg.publish(_artifact(1.0), card) == 1
    assert reg.publish(_artifact(2.0), {"parent": 1, "metrics": {"x": np.float32(2)}}) == 2
    assert reg.versions() == [1, 2] and reg.latest() == 2
    assert ModelRegistry.names(url, options) == ["churn"]

    first = reg.card(1)
    assert {k: first[k] for k in card} == card and first["version"] == 1
    assert first["artifact"] == reg.artifact_url(1) == reg.url_of("v0001", "model")
    assert first["created_at"].endswith("+00:00") and "T" in first["created_at"]
    assert reg.card(2)["metrics"] == {"x": 2.0}
    loaded = reg.load(2)
    assert loaded.k == 3 and loaded.method == "kmeans"
    np.testing.assert_array_equal(loaded.prototypes, np.full((3, 2), 2.0, np.float32))
    assert reg.url == f"{url.rstrip('/') if options else os.path.abspath(url)}/churn"

    with pytest.raises(RegistryError, match=r"no version 7 .*versions: 1, 2"):
        reg.card(7)
    with pytest.raises(RegistryError, match="no version 7"):
        reg.load(7)


def test_an_incomplete_version_is_not_listed_and_its_number_never_reused(tmp_path):
    reg = ModelRegistry(str(tmp_path), "m")
    reg.publish(_artifact(), {})
    # A publisher that died after claiming 2 (no card): skipped, its number burnt.
    assert reg.store.create_exclusive("{}", "v0002", "claim.json")
    assert reg.versions() == [1]
    assert ModelRegistry.names(str(tmp_path)) == ["m"]
    assert reg.publish(_artifact(), {}) == 3
    assert reg.versions() == [1, 3]
    with pytest.raises(RegistryError, match=r"no version 2 .*versions: 1, 3"):
        reg.load(2)
    # A folder with no complete version is not a registered name.
    ModelRegistry(str(tmp_path), "empty").store.create_exclusive("{}", "v0001", "claim.json")
    assert ModelRegistry.names(str(tmp_path)) == ["m"]


def test_a_card_that_cannot_be_written_costs_no_number(tmp_path):
    reg = ModelRegistry(str(tmp_path), "m")
    with pytest.raises(RegistryError, match="not JSON-serialisable"):
        reg.publish(_artifact(), {"bad": object()})
    assert not (tmp_path / "m").exists()
    assert reg.publish(_artifact(), {}) == 1


def test_local_exclusive_creation_lets_one_writer_win_and_leaves_nothing_aside(tmp_path):
    store = RunStore(str(tmp_path))
    assert store.create_exclusive("first", "a", "claim.json")
    assert not store.create_exclusive("second", "a", "claim.json")
    assert store.read_text("a", "claim.json") == "first"
    assert os.listdir(tmp_path / "a") == ["claim.json"]


def _publish_worker(url, options, barrier, results):
    try:
        reg = ModelRegistry(url, "race", options)
        barrier.wait(timeout=120)
        results.put(
            [reg.publish(_artifact(float(os.getpid())), {"by": os.getpid()}) for _ in range(EACH)]
        )
    except BaseException:  # noqa: BLE001 - the parent shows what went wrong
        results.put(traceback.format_exc())


def _set_alias_worker(url, options, barrier, results):
    try:
        reg = ModelRegistry(url, "race", options)
        barrier.wait(timeout=120)
        results.put(
            [
                reg.set_alias("champion", 1 + i % 2, reason=f"pid {os.getpid()}")["seq"]
                for i in range(EACH)
            ]
        )
    except BaseException:  # noqa: BLE001 - the parent shows what went wrong
        results.put(traceback.format_exc())


def _race(worker, url, options) -> list[int]:
    """Run RACERS processes of ``worker`` released at once; every number they got."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(RACERS), ctx.Queue()
    procs = [
        ctx.Process(target=worker, args=(url, options, barrier, results)) for _ in range(RACERS)
    ]
    for p in procs:
        p.start()
    try:
        got = [results.get(timeout=240) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=60)
    errors = [g for g in got if isinstance(g, str)]
    assert not errors, "\n".join(errors)
    return [n for numbers in got for n in numbers]


def test_racing_publishers_get_distinct_numbers_and_complete_versions(registry_url):
    url, options = registry_url
    numbers = _race(_publish_worker, url, options)
    assert sorted(numbers) == list(range(1, RACERS * EACH + 1))
    reg = ModelRegistry(url, "race", options)
    assert reg.versions() == sorted(numbers)
    for v in reg.versions():
        card = reg.card(v)
        assert card["version"] == v
        # each version holds the artifact of the process whose card it has
        assert reg.load(v).prototypes[0, 0] == np.float32(card["by"])


def test_racing_alias_setters_get_distinct_seqs_and_the_latest_wins(registry_url):
    url, options = registry_url
    reg = ModelRegistry(url, "race", options)
    reg.publish(_artifact(), {})
    reg.publish(_artifact(), {})
    seqs = _race(_set_alias_worker, url, options)
    assert sorted(seqs) == list(range(1, RACERS * EACH + 1))
    history = reg.alias_history("champion")
    assert [h["seq"] for h in history] == sorted(seqs)
    # each record replaced exactly what the one before it set
    assert history[0]["previous"] is None
    assert all(h["previous"] == before["version"] for before, h in zip(history, history[1:]))
    assert reg.alias("champion") == history[-1]["version"]
    assert reg.store.read_json("aliases", "champion.json")["seq"] == history[-1]["seq"]


# -- aliases --------------------------------------------------------------------------


def test_aliases_history_promote_and_rollback(registry_url):
    url, options = registry_url
    reg = ModelRegistry(url, "m", options)
    for _ in range(3):
        reg.publish(_artifact(), {})
    assert reg.alias("champion") is None and reg.aliases() == {} and reg.alias_history() == []
    with pytest.raises(RegistryError, match="never set: nothing to roll back"):
        reg.rollback()

    first = reg.promote(1)
    assert first["seq"] == 1 and first["previous"] is None and first["version"] == 1
    assert first["reason"] == "promoted by hand" and first["at"].endswith("+00:00")
    with pytest.raises(RegistryError, match="held no version before"):
        reg.rollback()  # champion's only change set it from nothing

    reg.set_alias("challenger", 3, reason="trained on 2024-01-02", partition="2024-01-02")
    reg.promote(2, reason="gate passed")
    assert reg.aliases() == {"challenger": 3, "champion": 2}
    back = reg.rollback()
    assert (
        back["version"] == 1 and back["previous"] == 2 and back["reason"] == "rolled back by hand"
    )
    assert reg.alias("champion") == 1

    history = reg.alias_history()
    assert [(h["seq"], h["alias"], h["version"], h["previous"]) for h in history] == [
        (1, "champion", 1, None),
        (2, "challenger", 3, None),
        (3, "champion", 2, 1),
        (4, "champion", 1, 2),
    ]
    assert history[1]["partition"] == "2024-01-02" and history[2]["reason"] == "gate passed"
    assert [h["seq"] for h in reg.alias_history("champion")] == [1, 3, 4]
    assert reg.versions() == [1, 2, 3]  # nothing deleted

    with pytest.raises(RegistryError, match=r"no version 9 .*versions: 1, 2, 3"):
        reg.promote(9)
    with pytest.raises(RegistryError, match="cannot be given as extras"):
        reg.set_alias("champion", 1, seq=99)
    assert len(reg.alias_history()) == 4 and reg.alias("champion") == 1


def test_partition_records(registry_url):
    url, options = registry_url
    reg = ModelRegistry(url, "m", options)
    assert reg.partitions() == [] and reg.read_partition("dt=2024-01-01") is None
    reg.write_partition("dt=2024-01-02", {"model_version": 1, "drift": np.float64(0.01)})
    reg.write_partition("dt=2024-01-01", {"model_version": 1})
    reg.write_partition("dt=2024-01-02", {"model_version": 2})
    assert reg.partitions() == ["dt=2024-01-01", "dt=2024-01-02"]
    assert reg.read_partition("dt=2024-01-02") == {"model_version": 2}


# -- names and keys -------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["../x", "a/b", "", ".", "..", "a\\b", "x" * 129, "a b", "/abs"])
def test_bad_names_and_keys_are_refused_before_anything_is_written(tmp_path, bad):
    with pytest.raises(RegistryError, match="refused"):
        check_partition_key(bad)
    with pytest.raises(RegistryError, match="model name"):
        ModelRegistry(str(tmp_path / "registry"), bad)
    assert not (tmp_path / "registry").exists()

    reg = ModelRegistry(str(tmp_path / "registry"), "m")
    reg.publish(_artifact(), {})
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(RegistryError, match="partition key"):
        reg.write_partition(bad, {"x": 1})
    with pytest.raises(RegistryError, match="partition key"):
        reg.read_partition(bad)
    with pytest.raises(RegistryError, match="alias"):
        reg.set_alias(bad, 1)
    with pytest.raises(RegistryError, match="alias"):
        reg.alias(bad)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_good_keys_pass():
    for key in ("2024-01-01", "dt=2024-01-01", "a.b_c-d", "x" * 128):
        assert check_partition_key(key) == key


# -- the CLI --------------------------------------------------------------------------


@pytest.fixture
def local_registry(tmp_path):
    reg = ModelRegistry(str(tmp_path / "registry"), "churn")
    reg.publish(
        _artifact(), {"parent": None, "partitions": ["2024-01-01"], "metrics": {"ari": 0.75}}
    )
    reg.publish(_artifact(), {"parent": 1, "partitions": ["2024-01-01", "2024-01-02"]})
    reg.promote(1)
    return reg


def test_cli_list_show_promote_rollback(local_registry):
    where = ["--registry", local_registry.registry]
    names = ok(run_cli("models", "list", *where)).out.splitlines()
    assert names[0].split() == ["name", "versions", "latest", "aliases"]
    assert names[1].split() == ["churn", "2", "2", "champion=v1"]

    rows = ok(run_cli("models", "list", *where, "--name", "churn")).out.splitlines()
    assert rows[0].split() == [
        "version", "created_at", "parent", "partitions", "k", "method", "aliases", "metric",
    ]  # fmt: skip
    assert rows[1].split()[2:] == ["-", "2024-01-01", "3", "kmeans", "champion", "ari=0.75"]
    assert rows[2].split()[2:] == ["1", "2024-01-01,2024-01-02", "3", "kmeans", "-", "-"]
    assert rows[1][rows[0].index("parent")] == "-"  # aligned columns

    listed = json.loads(ok(run_cli("models", "list", *where, "--name", "churn", "--json")).out)
    assert [r["version"] for r in listed] == [1, 2] and listed[0]["aliases"] == ["champion"]
    assert listed[0]["metric"] == {"name": "ari", "value": 0.75}

    shown = json.loads(
        ok(run_cli("models", "show", *where, "--name", "churn", "--alias", "champion")).out
    )
    assert shown["version"] == 1 and shown["aliases"] == ["champion"]
    assert shown["card"] == local_registry.card(1)
    latest = json.loads(ok(run_cli("models", "show", *where, "--name", "churn")).out)
    assert latest["version"] == 2 and latest["aliases"] == []

    out = ok(
        run_cli(
            "models", "promote", *where, "--name", "churn", "--version", "2", "--reason", "better"
        )
    ).out
    assert "champion -> version 2 (was version 1" in out
    assert local_registry.alias("champion") == 2
    assert local_registry.alias_history("champion")[-1]["reason"] == "better"
    record = json.loads(ok(run_cli("models", "rollback", *where, "--name", "churn", "--json")).out)
    assert record["version"] == 1 and record["previous"] == 2 and record["seq"] == 3
    assert local_registry.alias("champion") == 1


def test_cli_errors_are_one_line_and_exit_2(local_registry, tmp_path):
    where = ["--registry", local_registry.registry]
    fails(run_cli("models", "show", *where, "--name", "nope"), 2, "no model named 'nope'", "churn")
    fails(
        run_cli("models", "show", *where, "--name", "churn", "--version", "9"),
        2,
        "no version 9",
        "1, 2",
    )
    fails(
        run_cli("models", "promote", *where, "--name", "churn", "--version", "9"), 2, "no version 9"
    )
    fails(
        run_cli("models", "show", *where, "--name", "churn", "--alias", "gold"),
        2,
        "no alias 'gold'",
    )
    fails(
        run_cli("models", "rollback", *where, "--name", "churn", "--alias", "challenger"),
        2,
        "never set",
    )
    fails(run_cli("models", "list", *where, "--name", "../x"), 2, "model name '../x' is refused")
    fails(run_cli("models", "show", *where), 2, "--name")
    assert local_registry.alias_history() == [local_registry.alias_history()[0]]  # nothing changed
    empty = ok(run_cli("models", "list", "--registry", str(tmp_path / "none")))
    assert "no models registered" in empty.out


def test_cli_reads_an_s3_registry_with_storage_options_from_the_environment(s3_server):
    url = s3_server.url("registry/cli")
    reg = ModelRegistry(url, "churn", s3_server.storage_options)
    reg.publish(_artifact(), {"partitions": ["2024-01-01"]})
    env = cli_env(**s3_server.env())
    rows = json.loads(ok(run_cli("models", "list", "--registry", url, "--json", env=env)).out)
    assert [(r["name"], r["latest"]) for r in rows] == [("churn", 1)]
    ok(
        run_cli(
            "models", "promote", "--registry", url, "--name", "churn", "--version", "1", env=env
        )
    )
    assert reg.alias("champion") == 1
