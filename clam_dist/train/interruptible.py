"""Ray Train's fit that stops the way every clam-dist command stops on Ctrl-C/SIGTERM.

Ray Train v2 registers its own SIGINT handler during ``fit()``: it logs an INFO line,
aborts the controller and then leaves through ``sys.exit``, so the command ended with
exit 1 and no line of ours. Here the trainer registers our handler instead: it asks the
controller to abort (bounded wait, so workers stop and the last reported checkpoint
stays the resume point) and raises :class:`clam_dist.interrupts.Interrupted`, which the
CLI reports as one line with exit 130/143.
"""

from __future__ import annotations

import contextlib
import signal
import threading

from clam_dist import interrupts

# Seconds to wait for Ray Train's controller to abort its workers before leaving anyway.
ABORT_WAIT_S = 30.0


def fit_interruptibly(trainer):
    """``trainer.fit()`` with our SIGINT/SIGTERM handling (see the module doc)."""
    if hasattr(trainer, "_register_sigint_handler"):
        # Ray's private hook: if a Ray release drops it, fit() keeps Ray's own handler
        # and the CLI still reports the signal it recorded (clam_dist.interrupts).
        trainer._register_sigint_handler = _register_abort_handler
    return trainer.fit()


def _register_abort_handler(controller) -> None:
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, frame) -> None:
        first = interrupts.received() is None
        try:
            interrupts._handle(signum, frame)  # records; raises the first time
        except interrupts.Interrupted:
            if first:
                _abort(controller)
            raise

    for signum in interrupts.EXIT_CODES:
        signal.signal(signum, handler)


def _abort(controller) -> None:
    import ray

    # The controller already gone or slow: the driver leaves anyway.
    with contextlib.suppress(Exception):
        ray.get(controller.abort.remote(), timeout=ABORT_WAIT_S)
