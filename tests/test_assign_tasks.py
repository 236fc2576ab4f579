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


def test_execution_settings_apply_inside_and_are_restored():
    """The job's CPU limit and no per-operator reservation (with it, Ray Data started
    one task alone until that task reported its output size: one slot idle for a whole
    task). A Dataset deep-copies the DataContext when it is made, so what a Dataset made
    inside the block sees is what counts."""
    import copy

    import ray.data

    from clam_dist.assign.pipeline import ASSIGN_BLOCK_BYTES, _execution_settings

    context = ray.data.DataContext.get_current()
    limits_before = context.execution_options.resource_limits
    reservation_before = context.op_resource_reservation_enabled
    block_before = context.target_max_block_size
    config = AssignConfig(
        input="in", output="out", model="m", concurrency=3, num_cpus_per_actor=0.5
    )
    with _execution_settings(config):
        seen = copy.deepcopy(ray.data.DataContext.get_current())
        assert seen.op_resource_reservation_enabled is False
        assert seen.execution_options.resource_limits.cpu == 1.5
        assert seen.target_max_block_size == ASSIGN_BLOCK_BYTES
    assert context.op_resource_reservation_enabled == reservation_before
    assert context.execution_options.resource_limits == limits_before
    assert context.target_max_block_size == block_before
    with pytest.raises(RuntimeError), _execution_settings(config):
        raise RuntimeError("a failed job restores them too")
    assert context.op_resource_reservation_enabled == reservation_before
    assert context.target_max_block_size == block_before


@pytest.mark.parametrize("d,rows", [(128, 16_384), (8, 65_536), (1_000_000, 1_024), (100, 20_971)])
def test_read_batches_are_half_a_block(d, rows):
    """Two read batches of float32 vectors fill one ASSIGN_BLOCK_BYTES block, within
    [1,024, 65,536] rows."""
    from clam_dist.assign.pipeline import ASSIGN_BLOCK_BYTES, _read_batch_rows

    assert ASSIGN_BLOCK_BYTES == 16 << 20
    assert _read_batch_rows(d) == rows
