"""Which node assigned what: the assignment tasks' rows and seconds per Ray node.

A small actor (no CPU of its own) that every task tells, fire-and-forget, where it ran,
how many rows it labelled and how long that took; the driver reads the totals once the
job is written. A task retried after its node was lost is counted where each attempt
ran (the committed output holds each row once either way)."""

from __future__ import annotations

import contextlib
import time
from contextlib import contextmanager


class NodeTally:
    def __init__(self) -> None:
        self.nodes: dict[str, dict] = {}

    def add(self, node_id: str, rows: int, seconds: float) -> None:
        node = self.nodes.setdefault(node_id, {"tasks": 0, "rows": 0, "seconds": 0.0})
        node["tasks"] += 1
        node["rows"] += rows
        node["seconds"] = round(node["seconds"] + seconds, 3)

    def totals(self) -> dict[str, dict]:
        return self.nodes


def start_tally():
    """The tally actor, on the driver's node: a worker node may be lost mid-job (its
    tasks are retried elsewhere), and the tally with it would lose every count."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return ray.remote(num_cpus=0, scheduling_strategy=here)(NodeTally).remote()


def read_and_stop(tally) -> dict[str, dict]:
    """The totals (every add sent before this call is counted: one caller's calls to an
    actor run in order, and the tasks' sends finished with the tasks). Diagnostics only:
    a tally that cannot be read gives {} and never fails the job."""
    import ray

    try:
        return ray.get(tally.totals.remote(), timeout=60)
    except Exception:  # noqa: BLE001 - the assignment itself succeeded
        return {}
    finally:
        with contextlib.suppress(Exception):
            ray.kill(tally)


@contextmanager
def counted(tally, rows: int):
    """Time the block and tell ``tally`` (None: nothing) this node's rows and seconds."""
    t0 = time.perf_counter()
    yield
    if tally is not None:
        import ray

        node = ray.get_runtime_context().get_node_id()
        tally.add.remote(node, rows, time.perf_counter() - t0)
