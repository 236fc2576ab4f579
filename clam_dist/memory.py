"""Hand memory that a finished pass no longer uses back to the operating system (used
between pipeline stages, after the training sample pass and after evaluate's passes).

The pipeline runs every stage's driver side in one process, so whatever a stage's
allocators keep after it finishes is the floor of the next stage's peak. Both keep a
lot: after a 50,000-row sample pass (data/stats.py) with nothing left allocated, Arrow's
default pool (mimalloc) still held ~600 MB (RSS 940 -> 313 MB at 2.5M rows, 936 -> 354
MB at 10M once released) and glibc's per-thread malloc arenas another ~70-120 MB of
freed numpy buffers. Neither is a leak, but how much is kept varies with what was read.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from functools import cache

import pyarrow as pa


@cache
def _malloc_trim():
    """glibc's malloc_trim, or None (musl, macOS: nothing to call)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_unused_memory() -> None:
    """Collect garbage, then return the free memory of Arrow's pool and of the C heap to
    the OS. Cheap (milliseconds) next to a pass over the data; changes no result."""
    gc.collect()
    pa.default_memory_pool().release_unused()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
