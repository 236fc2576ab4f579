"""Fault injection for tests and drills, set through the environment of the command.

A driver that joins a cluster hands these to every task of its job (ray_session's
``job_environment``), so a drill reaches the tasks on every node, not only those the
command's own machine starts."""

from __future__ import annotations

# A file path: the first assignment task that creates it kills its own worker process, as
# an OOM kill would, so Ray retries the task in a fresh process.
DIE_ONCE_ENV = "CLAM_DIST_ASSIGN_DIE_ONCE"
# Seconds every assignment batch waits before it is labelled: a job slow enough to lose a
# node while its tasks are in flight, however fast the machine.
TASK_DELAY_ENV = "CLAM_DIST_ASSIGN_TASK_DELAY_S"

DRILL_ENV = (DIE_ONCE_ENV, TASK_DELAY_ENV)
