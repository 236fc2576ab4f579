"""The plain progress view's ETA and its periodic lines (issue: the training ETA jumped
3m15s -> 4m04s -> 2m00s, and "steps 50/294" printed twice)."""

from __future__ import annotations

import io
import time

from clam_dist.progress import Console, StageState


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_eta_ignores_startup_and_counts_down_between_reports():
    clock = FakeClock()
    st = StageState("train", 300, "steps", clock=clock)
    clock.t += 20.0  # Ray Train starting its workers: no steps yet
    st.advance(50)  # then 10 steps per second
    first = st.eta()
    assert first is not None and first > 0  # a (pessimistic) estimate from one report
    clock.t += 5.0
    st.advance(100)
    assert abs(st.eta() - 20.0) < 1e-9  # 200 steps left at 10/s: start-up not counted
    clock.t += 4.0  # no report: the estimate counts down, never up
    assert abs(st.eta() - 16.0) < 1e-9
    clock.t += 1.0
    st.advance(150)
    assert abs(st.eta() - 15.0) < 1e-9
    etas = []
    for _ in range(10):  # steady progress: the ETA only falls
        clock.t += 1.0
        st.advance(st.done + 10)
        etas.append(st.eta())
    assert all(b < a for a, b in zip(etas, etas[1:]))


def test_eta_is_smoothed_over_a_slow_report():
    clock = FakeClock()
    st = StageState("train", 1000, "steps", clock=clock)
    st.advance(0)
    for _ in range(5):
        clock.t += 1.0
        st.advance(st.done + 10)
    steady = st.eta()
    clock.t += 3.0  # one slow window (a checkpoint): 10 steps in 3 s
    st.advance(st.done + 10)
    assert st.eta() < 3 * steady  # not the ~3x a last-window rate would give


def test_eta_survives_work_that_finishes_in_bursts():
    """Two-level cells: one every 10 s, then two within 10 ms. The 10M-row run printed
    "cells 18/256 (7%) ETA 0s" when the rate came from the last reports."""
    clock = FakeClock()
    st = StageState("train", 256, "cells", clock=clock)
    for _ in range(10):
        clock.t += 10.0
        st.advance((st.done or 0) + 1)
    steady = st.eta()
    assert abs(steady - 2460.0) < 1e-6  # 246 cells left at 0.1 cells/s
    clock.t += 0.01
    st.advance(st.done + 1)
    assert st.eta() > 0.8 * steady


def test_a_new_phase_counts_its_own_unit_and_rate():
    """A two-level train stage shuffles parts, then fits cells counted in rows: the
    second count's ETA must not come from the first phase's time or rate."""
    clock = FakeClock()
    out = io.StringIO()
    console = Console(out=out, every_s=0.5, tty=False)
    console.stage_start("train", None, unit="steps")
    st = console._stage
    st.clock = clock
    console.update(done=5, total=10, unit="parts")
    clock.t += 100.0
    console.update(done=10, total=10, unit="parts")
    clock.t += 1.0
    console.update(done=0, total=1000, unit="rows", cells="0/4")
    clock.t += 10.0
    console.update(done=100, total=1000, unit="rows", cells="1/4")
    line = st.describe()
    console.stage_end("train", 1.0)
    assert "rows 100/1,000 (10%) cells 1/4" in line and "parts" not in line
    assert abs(st.eta() - 90.0) < 1e-6  # 900 rows at 10 rows/s, nothing of the shuffle


def test_plain_lines_do_not_repeat_the_same_figures():
    out = io.StringIO()
    console = Console(out=out, every_s=0.5, tty=False)
    console.stage_start("train", None, unit="steps")
    console.update(done=50, total=294, epoch=0, loss=0.5)
    time.sleep(1.8)  # three periods, one report
    console.stage_end("train", 1.8, done=294)
    periodic = [ln for ln in out.getvalue().splitlines() if "steps 50/294" in ln]
    assert len(periodic) == 1, out.getvalue()


def test_a_first_report_at_the_phase_start_gives_no_eta_rather_than_zero():
    clock = FakeClock()
    st = StageState("train", 1000, "steps", clock=clock)
    clock.t += 50.0
    st.restart("rows")
    st.advance(10)  # the same instant as the phase's start: no rate yet
    assert st.eta() is None
    clock.t += 5.0
    st.advance(20)
    assert abs(st.eta() - 490.0) < 1e-6  # 980 rows at 2 rows/s
