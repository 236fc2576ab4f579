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
    if joining:
        kwargs["address"] = address  # None: ray.init reads RAY_ADDRESS itself
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
