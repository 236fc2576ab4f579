"""How the assignment cuts its work into fused Ray Data tasks: a fixed number of rows
per task whatever the data's size (so a worker's peak memory does not grow with the
data), and enough tasks to keep every slot busy."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from clam_dist.assign.pipeline import TASK_ROWS, TASKS_PER_SLOT, AssignConfig, _assign_tasks


@pytest.mark.parametrize(
    ("rows", "concurrency", "tasks"),
    [
        (1_000, 2, 2 * TASKS_PER_SLOT),  # small data: every slot still gets its tasks
        (10 * TASK_ROWS, 2, 10),
        (10 * TASK_ROWS + 1, 2, 11),  # never more than TASK_ROWS rows in one task
        (40 * TASK_ROWS, 2, 40),  # 4x the data: 4x the tasks, not 4x the rows per task
        (3 * TASK_ROWS, 8, 8 * TASKS_PER_SLOT),
    ],
)
def test_tasks_have_a_fixed_size_and_fill_every_slot(rows, concurrency, tasks):
    source = SimpleNamespace(num_rows=lambda: rows)
    config = AssignConfig(input="in", output="out", model="m", concurrency=concurrency)
    assert _assign_tasks(source, config) == tasks
    assert -(-rows // tasks) <= TASK_ROWS
