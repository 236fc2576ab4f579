"""A pipeline run directory in object storage (the local S3 server): records written whole
and read back, entries listed, and the run's lock as an object created with a conditional
PUT: a second holder refused, a dead holder's lock taken over, only our own released."""

from __future__ import annotations

import json

import pytest

from clam_dist.pipeline import lock
from clam_dist.pipeline.run_store import RunStore


@pytest.fixture
def store(s3_server, request):
    return RunStore(s3_server.url(f"runs/{request.node.name}"), s3_server.storage_options)


def test_records_are_written_whole_read_back_and_listed(store):
    assert not store.is_local and store.read_json("stages", "data.json") is None
    assert store.entries() == []
    store.write_json({"rows": 3}, "stages", "data.json")
    store.write_text("hello", "summary.json")
    assert store.read_json("stages", "data.json") == {"rows": 3}
    assert store.entries() == ["stages", "summary.json"]
    assert store.entries("stages") == ["data.json"]
    assert store.exists("stages", "data.json") and store.is_file("summary.json")
    store.delete("stages", "data.json")
    store.delete("stages", "data.json")  # already gone: nothing to do
    assert store.read_json("stages", "data.json") is None
    assert store.url_of("model") == store.url + "/model" and store.name == store.url.rsplit("/")[-1]


def test_exclusive_create_lets_one_writer_win(store):
    assert store.create_exclusive("first", ".lock")
    assert not store.create_exclusive("second", ".lock")
    assert store.read_text(".lock") == "first"


def test_the_lock_object_refuses_a_live_holder_and_takes_over_a_dead_one(store):
    me, taken = lock.acquire(store)
    assert taken is None and json.loads(store.read_text(".lock")) == me
    with pytest.raises(lock.RunDirBusy, match="in use by another pipeline"):
        lock.acquire(store)  # this process is alive: refused
    lock.release(store, me)
    assert store.read_text(".lock") is None

    dead = dict(me, pid=2**22 + 12345, proc_start=None)  # same host, no such process
    store.write_text(json.dumps(dead), ".lock")
    mine, taken = lock.acquire(store)
    assert taken == dead and json.loads(store.read_text(".lock")) == mine

    elsewhere = dict(mine, host="elsewhere.example")
    store.write_text(json.dumps(elsewhere), ".lock")
    with pytest.raises(lock.RunDirBusy, match="elsewhere.example"):
        lock.acquire(store)  # another host's holder cannot be checked: never taken over
    lock.release(store, mine)  # not ours any more: left in place
    assert json.loads(store.read_text(".lock")) == elsewhere


def test_a_run_in_object_storage_that_crashed_early_is_still_ours(s3_server):
    """Object stores have no folders: the run marks itself under stages/ when it is made,
    so a run killed before its first stage finished (a lock and half a data set left) is
    resumed, not refused as a prefix of someone else's files; a prefix of other files is."""
    from clam_dist.assign.commit import ForeignOutputError
    from clam_dist.pipeline.config import PipelineConfig
    from clam_dist.pipeline.stages import Run

    def config(name: str) -> PipelineConfig:
        c = PipelineConfig(run_dir=s3_server.url(f"runs/{name}"))
        c.data.storage_options = s3_server.storage_options
        return c

    run = Run(config("crashed-early"))
    run.store.write_text("{}", ".lock")
    run.store.write_text("partial", "data", "part-00000.parquet")
    assert Run(config("crashed-early")).store.entries() == [".lock", "data", "stages"]

    RunStore(s3_server.url("runs/someone-elses"), s3_server.storage_options).write_text(
        "x", "notes.txt"
    )
    with pytest.raises(ForeignOutputError, match="holds 1 entries .* not write \\(notes.txt\\)"):
        Run(config("someone-elses"))
