"""A training worker's own rows and seconds (artifact meta ``workers``, summed per node by
the driver) count every metrics window once: the run's last window is counted by
``finish`` (the artifact is written before the window is reported) and then handed to
``report``, which must not count it again. No Ray Train run: the worker side is driven in
the order the loop drives it (clam_dist/train/loop.py: collect_metrics, finish, report)."""

from __future__ import annotations

import pytest

from clam_dist.train import ray_worker
from clam_dist.train.ray_worker import RayWorker, WorkTally


def _window(step: int, rows: int, seconds: float) -> dict:
    return {"step": step, "worker_rows": rows, "window_s": seconds, "loss": 0.5}


WINDOWS = [_window(50, 5_000, 1.25), _window(100, 5_000, 1.5), _window(120, 2_000, 0.5)]


def test_each_window_counts_once_whoever_hands_it_over():
    tally = WorkTally(rank=1, node_id="n1")
    for w in WINDOWS[:2]:
        tally.add(w)
    tally.add(WINDOWS[2])  # finish: the last window, before it is reported
    tally.add(WINDOWS[2])  # report: the same window again
    assert tally.record == {"rank": 1, "node_id": "n1", "rows": 12_000, "seconds": 3.25}
    tally.add(_window(100, 5_000, 1.5))  # an earlier step is never counted twice either
    assert tally.record["rows"] == 12_000
    tally.add(_window(140, 1_000, 0.25))  # a later window still counts
    assert tally.record["rows"] == 13_000 and tally.record["seconds"] == 3.5


def test_a_window_without_a_step_and_an_empty_one_count_as_given():
    tally = WorkTally(rank=0, node_id="n0")
    tally.add({"worker_rows": 10, "window_s": 0.1})
    tally.add({})
    assert tally.record["rows"] == 10 and tally.record["seconds"] == 0.1


@pytest.fixture
def worker(monkeypatch):
    """A RayWorker without Ray Train's context: rank 1 of a world of 1 (no artifact to
    write, no collective), with ray.train.report recording what it was handed."""
    reported: list[dict] = []
    monkeypatch.setattr(
        ray_worker.ray.train, "report", lambda metrics, **_: reported.append(metrics)
    )
    side = object.__new__(RayWorker)
    side.rank, side.world = 1, 1
    side.work = WorkTally(side.rank, "node-a")
    side.reported = reported
    return side


def test_finish_then_report_of_the_last_window_counts_it_once(worker):
    gathered: list[dict] = []

    def gather_work() -> list[dict]:  # one worker: what the collective would gather
        gathered.append(dict(worker.work.record))
        return gathered

    worker._gather_work = gather_work
    history: list[dict] = []
    for i, window in enumerate(WINDOWS):
        history.append(window)  # the loop's collect_metrics
        if i == len(WINDOWS) - 1:
            worker.finish(update=None, history=history)  # rank 1: gathers, writes nothing
        worker.report(window, None)
    assert [m["step"] for m in worker.reported] == [50, 100, 120]
    expected = {"rank": 1, "node_id": "node-a", "rows": 12_000, "seconds": 3.25}
    assert gathered == [expected]  # what the artifact records
    assert worker.work.record == expected  # and still after the last report
