"""The pipeline's view for people: one progress line (or bar) per stage.

On a terminal each stage is a tqdm bar (rows or steps done / total, rate, ETA) redrawn
in place. Anywhere else (a pipe, a file, `ray job logs`) a bar would be noise, so the view
is plain lines: one when a stage starts, one every ``every_s`` seconds while it runs (so a
long training stage still shows life), one when it ends. Stages report what they know:
training its step, epoch, loss and rows/s per Ray Train report; the others only at their
end (rows), and meanwhile the elapsed time.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any, TextIO


def _fmt_seconds(s: float) -> str:
    s = max(0.0, s)
    if s < 60:
        return f"{s:.0f}s"
    m, s = divmod(int(s), 60)
    return f"{m}m{s:02d}s" if m < 60 else f"{m // 60}h{m % 60:02d}m"


class StageState:
    """What is known about the running stage; read by the ticker, written by updates.

    The ETA comes from the rate since the FIRST report, not from the stage's elapsed
    time: a training stage spends its first ~20 s starting workers before the first
    step, and counting that time in would make the ETA jump as reports arrive. Nor from
    the last reports alone: work that finishes in bursts (two-level cells completing
    within a second of each other after minutes of nothing) would give "ETA 0s" at 7%.
    Between reports the ETA counts down from the last estimate."""

    def __init__(self, name: str, total: int | None, unit: str, clock=time.perf_counter):
        self.name, self.total, self.unit = name, total, unit
        self.done: int | None = None
        self.info: dict[str, Any] = {}  # epoch, loss, rows/s: shown as they come
        self.clock = clock
        self.t0 = clock()
        self._phase_t0 = self.t0  # when the current count began (restart)
        self.rate: float | None = None  # units per second since the first report
        self._first_report: tuple[float, int] | None = None  # (time, done) of the first one
        self._last_report: tuple[float, int] | None = None  # (time, done) of the last one

    def restart(self, unit: str) -> None:
        """A new phase of the stage counting ``unit`` (a two-level train stage shuffles
        parts, then fits cells): the count and its rate start afresh, from now."""
        self.unit, self.done, self.rate = unit, None, None
        self._first_report = self._last_report = None
        self._phase_t0 = self.clock()

    def elapsed(self) -> float:
        return self.clock() - self.t0

    def advance(self, done: int) -> None:
        """A report: ``done`` units so far (the rate is measured from the first report)."""
        now = self.clock()
        if self._first_report is None:
            self._first_report = (now, done)
        else:
            t_first, done_first = self._first_report
            if done > done_first and now > t_first:
                self.rate = (done - done_first) / (now - t_first)
        if self._last_report is None or done != self._last_report[1]:
            self._last_report = (now, done)
        self.done = done

    def eta(self) -> float | None:
        if not self.total or not self.done or self.done >= self.total:
            return None
        rate = self.rate
        if rate is None and self._last_report is not None:
            # One report so far: the rate since the stage (or its phase) started is all
            # there is (it includes the start-up, so it is pessimistic; the next report
            # replaces it).
            since_start = self._last_report[0] - self._phase_t0
            rate = self.done / since_start if since_start > 0 else None
        if not rate:
            return None
        since_report = self.clock() - self._last_report[0] if self._last_report else 0.0
        return max(0.0, (self.total - self.done) / rate - since_report)

    def progress_key(self) -> tuple:
        """What a plain line shows besides the time: equal keys, nothing new to print."""
        return (self.done, self.total, tuple(sorted(self.info.items())))

    def describe(self) -> str:
        """One plain line: `[train] 12s step 120/300 (40%) epoch 1 loss 0.1234 ... ETA 18s`."""
        parts = [f"[{self.name}] {_fmt_seconds(self.elapsed())}"]
        if self.done is None and not self.info:
            parts.append("running")  # nothing measured yet (or the stage reports at its end)
        if self.done is not None:
            if self.total:
                pct = 100.0 * self.done / self.total
                parts.append(f"{self.unit} {self.done:,}/{self.total:,} ({pct:.0f}%)")
            else:
                parts.append(f"{self.unit} {self.done:,}")
        parts += [_fmt_info(k, v) for k, v in self.info.items()]
        eta = self.eta()
        if eta is not None:
            parts.append(f"ETA {_fmt_seconds(eta)}")
        return " ".join(parts)


def _fmt_info(key: str, value: Any) -> str:
    if key == "rows/s":
        return f"{value:,.0f} rows/s"
    if isinstance(value, float):
        return f"{key} {value:.4f}"
    return f"{key} {value}"


class Console:
    """The per-stage view on ``out`` (stdout). Thread-safe: Ray Train reports arrive on a
    poller thread while the stage runs on the main one."""

    def __init__(self, out: TextIO | None = None, every_s: float = 10.0, tty: bool | None = None):
        self.out = out or sys.stdout
        self.every_s = max(0.5, float(every_s))
        self.tty = self.out.isatty() if tty is None else tty
        self._lock = threading.Lock()
        self._stage: StageState | None = None
        self._bar = None
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    # -- messages ---------------------------------------------------------------------
    def line(self, text: str) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.write(text, file=self.out)
            else:
                print(text, file=self.out, flush=True)

    # -- stages -----------------------------------------------------------------------
    def stage_start(self, name: str, total: int | None = None, unit: str = "rows") -> None:
        state = StageState(name, total, unit)
        with self._lock:
            self._stage = state
            if self.tty:
                from tqdm import tqdm

                self._bar = tqdm(
                    **self._width(),
                    total=total,
                    desc=f"{name:8s}",
                    unit=f" {unit}",
                    unit_scale=unit == "rows",  # 3.00k rows, but 3/6 steps
                    file=self.out,
                    leave=True,
                    # nothing to count yet: the elapsed time, not "0 rows [?/s]"
                    bar_format=None if total else "{desc}: {elapsed}{postfix}",
                    # the ticker thread redraws; tqdm's own monitor thread is not needed
                    mininterval=0.2,
                )
            else:
                total_text = f" ({total:,} {unit})" if total else ""
                print(f"[{name}] started{total_text}", file=self.out, flush=True)
        self._stop.clear()
        self._ticker = threading.Thread(target=self._tick, name="clam-progress", daemon=True)
        self._ticker.start()

    def update(
        self,
        done: int | None = None,
        total: int | None = None,
        unit: str | None = None,
        **info: Any,
    ) -> None:
        """The running stage's progress: ``done`` of ``total`` and named values (epoch,
        loss, rows/s); a new ``unit`` starts a new count (a two-level train stage counts
        shuffled parts, then the rows of fitted cells). Ignored when no stage runs."""
        with self._lock:
            st = self._stage
            if st is None:
                return
            if unit is not None and unit != st.unit:
                st.restart(unit)  # another phase: its own count and rate
                if self._bar is not None:
                    self._bar.unit = f" {unit}"
                    self._bar.unit_scale = unit == "rows"
            if total is not None:
                st.total = total
            if done is not None:
                st.advance(done)
            st.info.update({k: v for k, v in info.items() if v is not None})
            if self._bar is not None:
                self._draw_bar(st)

    def stage_end(
        self,
        name: str,
        seconds: float,
        done: int | None = None,
        status: str = "done",
        **info: Any,
    ) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None
        with self._lock:
            st, self._stage = self._stage, None
            if st is not None and done is not None:
                st.done = done
                st.total = st.total or done
            if st is not None:
                st.info.update({k: v for k, v in info.items() if v is not None})
            if self._bar is not None:
                if st is not None:
                    self._draw_bar(st, final=True)
                self._bar.close()
                self._bar = None
            if not self.tty or status != "done":
                parts = [f"[{name}] {status} in {seconds:.1f}s"]
                if st is not None and st.done is not None:
                    parts.append(f"{st.done:,} {st.unit}")
                    if seconds > 0 and st.unit == "rows":
                        parts.append(f"{st.done / seconds:,.0f} rows/s")
                if st is not None:
                    parts += [_fmt_info(k, v) for k, v in st.info.items() if k != "rows/s"]
                print(" ".join(parts), file=self.out, flush=True)

    def stage_skipped(self, name: str) -> None:
        self.line(f"[{name}] skipped (finished by an earlier run)")

    # -- internals --------------------------------------------------------------------
    def _width(self) -> dict:
        """Follow the terminal's size; a terminal that reports none (a fresh pseudo-
        terminal, some CI consoles) gets 100x24: tqdm would draw an empty bar, or hide it
        as below a screen of 0 rows."""
        try:
            size = os.get_terminal_size(self.out.fileno())
        except (OSError, ValueError, AttributeError):
            size = os.terminal_size((0, 0))
        if size.columns > 0 and size.lines > 0:
            return {"dynamic_ncols": True}
        return {"ncols": size.columns or 100, "nrows": size.lines or 24}

    def _draw_bar(self, st: StageState, final: bool = False) -> None:
        bar = self._bar
        if st.total is not None and bar.total != st.total:
            bar.total = st.total
            bar.bar_format = None  # a count to show now: the full bar
        if st.done is not None and st.done != bar.n:
            bar.n = st.done
        shown = {
            k: (f"{v:.4f}" if isinstance(v, float) and k != "rows/s" else v)
            for k, v in st.info.items()
        }
        if "rows/s" in shown:
            shown["rows/s"] = f"{st.info['rows/s']:,.0f}"
        bar.set_postfix(shown, refresh=False)
        bar.refresh()

    def _tick(self) -> None:
        """Redraw the bar twice a second (elapsed time moves even without reports), or
        print a plain line every ``every_s`` seconds when there is news: a line that
        repeats the last one's figures is skipped, except a bare "running" heartbeat once
        a minute (at least every ``HEARTBEAT_PERIODS`` periods) so a pipe still shows
        life."""
        period = 0.5 if self.tty else self.every_s
        last_key, quiet_periods = None, 0
        while not self._stop.wait(period):
            with self._lock:
                st = self._stage
                if st is None:
                    return
                if self._bar is not None:
                    self._bar.refresh()
                    continue
                key = st.progress_key()
                quiet_periods += 1
                if key != last_key:
                    print(st.describe(), file=self.out, flush=True)
                    last_key, quiet_periods = key, 0
                elif quiet_periods * period >= max(60.0, HEARTBEAT_PERIODS * period):
                    line = f"[{st.name}] {_fmt_seconds(st.elapsed())} running"
                    print(line, file=self.out, flush=True)
                    quiet_periods = 0


# A plain view with no news prints a bare "running" line after this many periods (or
# a minute, whichever is longer).
HEARTBEAT_PERIODS = 6


class NullConsole(Console):
    """No view (a library caller of run_pipeline): every call does nothing."""

    def __init__(self) -> None:
        pass

    def line(self, text: str) -> None:
        pass

    def stage_start(self, name: str, total: int | None = None, unit: str = "rows") -> None:
        pass

    def update(
        self,
        done: int | None = None,
        total: int | None = None,
        unit: str | None = None,
        **info: Any,
    ) -> None:
        pass

    def stage_end(
        self, name: str, seconds: float, done: int | None = None, status: str = "done", **info: Any
    ) -> None:
        pass

    def stage_skipped(self, name: str) -> None:
        pass


def train_metrics_to_console(console: Console, m: dict) -> None:
    """One Ray Train report (clam_dist.train.loop's metrics) onto the train stage's line."""
    console.update(
        done=m.get("step"),
        total=m.get("total_steps"),
        epoch=m.get("epoch"),
        loss=m.get("loss"),
        **{"rows/s": m.get("rows_per_s_total")},
    )


class TrainReports:
    """Ray Train reports to the driver: the trainer's callback (in Ray Train's controller
    process, whose prints do not reach this console) puts each report's few numbers on a
    Ray queue; a thread here moves them onto the console. The queue's actor holds no CPU,
    so training's workers get every core they asked for."""

    def __init__(self, console: Console):
        self.console = console
        self.queue = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> TrainReports:
        if isinstance(self.console, NullConsole):
            return self
        from ray.util.queue import Queue

        self.queue = Queue(maxsize=1000, actor_options={"num_cpus": 0})
        self._thread = threading.Thread(target=self._poll, name="clam-train-reports", daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        from ray.util.queue import Empty

        while not self._stop.is_set():
            try:
                m = self.queue.get(block=True, timeout=0.5)
            except Empty:
                continue
            except Exception:  # noqa: BLE001 - the queue went away: the view just stops
                return
            train_metrics_to_console(self.console, m)

    def __exit__(self, *exc) -> None:
        if self.queue is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:  # the last reports, put just before fit() returned
            while not self.queue.empty():
                train_metrics_to_console(self.console, self.queue.get_nowait())
        except Exception:  # noqa: BLE001, S110 - best effort: the stage's result stands
            pass
        self.queue.shutdown()
