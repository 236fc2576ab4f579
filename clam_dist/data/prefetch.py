"""A bounded background reader: the next items are produced in a thread while the
consumer works on the current one (the training step computes while Parquet is read),
and an order-keeping thread pool that decodes several row groups at once."""

from __future__ import annotations

import queue
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

A = TypeVar("A")
T = TypeVar("T")

# How many finished items may wait for the consumer; the thread holds at most one more
# while it blocks, so memory is bounded by DEPTH + 1 items beyond the consumer's own.
DEPTH = 2
_END = object()


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


def _produce(items: Iterable, out: queue.Queue, stop: threading.Event) -> None:
    """The thread body. It holds no reference to the Prefetcher, so dropping the consumer
    (even without close) lets the finaliser stop the thread."""
    it = iter(items)
    try:
        for item in it:
            if not _put(out, item, stop):
                return
        _put(out, _END, stop)
    except BaseException as exc:  # handed to the consumer, re-raised there unchanged
        _put(out, _Failure(exc), stop)
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()  # a generator's finally blocks run: open files get closed


def _put(out: queue.Queue, item, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            out.put(item, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False


def _stop(stop: threading.Event, out: queue.Queue, thread: threading.Thread) -> None:
    stop.set()
    while True:  # unblock a put in progress and drop what was read ahead
        try:
            out.get_nowait()
        except queue.Empty:
            break
    if thread is not threading.current_thread():
        thread.join()


class Prefetcher(Generic[T]):
    """Iterate ``items`` in a background thread, at most ``depth`` items ahead.

    An exception raised while producing is re-raised by ``next`` (same object, same
    message); ``close`` (or leaving a ``with`` block, or dropping the object) stops the
    thread and closes the underlying iterator.
    """

    def __init__(self, items: Iterable[T], depth: int = DEPTH, name: str = "prefetch"):
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self.depth = depth
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(
            target=_produce, args=(items, self._queue, self._stop), name=name, daemon=True
        )
        self._thread.start()
        self._finalizer = weakref.finalize(self, _stop, self._stop, self._queue, self._thread)

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        if self._done:
            raise StopIteration
        item = self._queue.get()
        if item is _END:
            self._done = True
            self.close()
            raise StopIteration
        if isinstance(item, _Failure):
            self._done = True
            self.close()
            raise item.exc
        return item

    def close(self) -> None:
        self._done = True
        self._finalizer()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def __enter__(self) -> Prefetcher[T]:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def ordered_map(
    fn: Callable[[A], T], items: Iterable[A], threads: int, name: str = "decode"
) -> Iterator[T]:
    """``fn(item)`` for every item, in the items' order, computed by a pool of ``threads``
    threads that keeps ``threads`` items in flight while the consumer holds the previous
    result (memory: at most ``threads + 1`` results alive). Parquet decoding releases the
    GIL, so row groups decode on several cores at once, as ``pq.read_table`` does, while
    their order (and so every training batch) stays the sequential reader's. An
    exception of ``fn`` is raised here when its item's turn comes; closing the iterator
    early cancels what has not started and waits for what has."""
    if threads < 1:
        raise ValueError(f"read threads must be >= 1, got {threads}")
    it = iter(items)
    pending: deque[Future[T]] = deque()
    with ThreadPoolExecutor(threads, thread_name_prefix=name) as pool:

        def fill() -> None:
            while len(pending) < threads:
                item = next(it, _END)
                if item is _END:
                    return
                pending.append(pool.submit(fn, item))

        try:
            fill()
            while pending:
                result = pending.popleft().result()
                fill()
                yield result
        finally:
            for future in pending:
                future.cancel()
