"""Start or join Ray the same quiet way from every command.

A person running `clam-dist <command>` reads our lines, not Ray's: without ``-v`` Ray's
driver loggers stay below ERROR (no "Started a local Ray instance", no token notice), the
workers' and actors' output stays in Ray's session folder (``log_to_driver=False``: no
``(RayTrainWorker pid=…)`` tracebacks), and Ray Data draws no progress bars. ``-v`` brings
all of it back. The session folder is named once so the full logs can be found.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from clam_dist import logs
from clam_dist.drills import DRILL_ENV
from clam_dist.interrupts import catch_signals


def start_ray(
    address: str | None = None,
    num_cpus: int | None = None,
    announce: Callable[[str], None] | None = None,
) -> bool:
    """Join ``address`` (or ``RAY_ADDRESS``: under `ray job submit` the job's cluster), or
    start a fresh local Ray with ``num_cpus`` (never an unnamed running cluster). Returns True when this call started or joined Ray
    (the caller then shuts it down), False when Ray was already initialised.
    ``announce`` receives one line naming Ray's log folder."""
    import ray

    if ray.is_initialized():
        quiet_ray_console()
        return False
    loud = logs.verbose()
    joining = bool(address or os.environ.get("RAY_ADDRESS"))
    kwargs: dict = {
        "log_to_driver": loud,
        "logging_level": logging.INFO if loud else logging.ERROR,
    }
    # Our processes (and, started here, the raylet's workers) poll reports this often.
    os.environ.setdefault(TRAIN_POLL_ENV, TRAIN_POLL_S)
    if not loud:
        # A task Ray cancelled after another one failed (Ray Data stops a failed job's
        # other tasks) can end in an error nobody retrieves; Ray's driver would log it as
        # "Unhandled error ..." at exit, after our one line naming the root cause.
        os.environ.setdefault(UNHANDLED_ERRORS_ENV, "1")
    if joining:
        kwargs["address"] = address  # None: ray.init reads RAY_ADDRESS itself
        job_env = job_environment()
        if job_env:
            kwargs["runtime_env"] = {"env_vars": job_env}
    else:
        # "local" always starts a fresh instance: without it ray.init joins whatever Ray
        # cluster this machine runs (another user's, a test's), and refuses num_cpus.
        # `--address auto` (or RAY_ADDRESS=auto) is how to join the machine's cluster.
        kwargs.update(address="local", include_dashboard=False)
        if num_cpus:
            kwargs["num_cpus"] = num_cpus
    ctx = ray.init(**kwargs)
    # ray.init replaced our SIGTERM handler with its own sys.exit(15), and its C++ core
    # would print a stack dump first: take SIGINT/SIGTERM back (clam_dist.interrupts).
    catch_signals()
    _no_colour_reset_at_exit()
    quiet_ray_console()
    session = (getattr(ctx, "address_info", None) or {}).get("session_dir")
    if session and announce is not None:
        announce(f"Ray logs: {session}/logs")
    return True


# Set (unless -v) to keep Ray's driver from logging errors of tasks nobody retrieved.
UNHANDLED_ERRORS_ENV = "RAY_IGNORE_UNHANDLED_ERRORS"

# The object-storage settings every AWS tool reads from the environment. A driver joining a
# cluster hands them to every task and worker of its job (Ray's runtime_env): the nodes'
# processes were started with their own environment, and a run's data, checkpoints, model
# and outputs must be reached the same way on every node. (Ray shows a job's runtime_env
# on its dashboard: where that matters, give the nodes credentials of their own, e.g. an
# instance role, and leave the keys out of the driver's environment.)
STORAGE_ENV = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
)


# Ray Train's controller collects the workers' reports once per health-check interval
# (2 s by default), and a worker's next report waits for the last one to be collected: a
# run reporting every few seconds stalled up to 2 s per report (a 120-step test fit took
# 36-44 s; 22-25 s at 0.2 s, same steps). A user's own setting is kept.
TRAIN_POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
TRAIN_POLL_S = "0.25"


def job_environment() -> dict[str, str]:
    """What a driver that joins a cluster by itself hands to every task and worker of its
    job: the STORAGE_ENV variables set here, the report poll interval and the drills of
    clam_dist/drills.py. Under `ray job submit` the job's own runtime_env already reaches
    every node (and a second one from the driver would be merged into it): nothing then."""
    if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):
        return {}
    names = (*STORAGE_ENV, TRAIN_POLL_ENV, *DRILL_ENV)
    return {name: os.environ[name] for name in names if os.environ.get(name)}


def quiet_ray_console() -> None:
    """Ray's driver loggers at WARNING and no Ray Data progress bars, unless -v."""
    logs.quiet_ray()
    if not logs.verbose():
        import ray.data

        ray.data.DataContext.get_current().enable_progress_bars = False


def _no_colour_reset_at_exit() -> None:
    """Ray's CLI logger runs ``colorama.init`` on import, which registers an exit hook that
    writes a colour reset (ESC[0m) to a terminal after our last line. Unless -v, unhook it:
    we print no colours to reset."""
    if logs.verbose():
        return
    import atexit

    try:
        import colorama.initialise
    except ImportError:  # no colorama: no hook
        return
    atexit.unregister(colorama.initialise.reset_all)
