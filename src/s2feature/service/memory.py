"""Memory a restore used only while it ran, handed back to the system.

A restore reads a month of a symbol's closes (a warm-up, whole bars of its last days too) into
short-lived arrays and Arrow buffers of a few megabytes, and keeps about half a megabyte. Freed,
that memory stays with the allocators that held it: Arrow's pool, and the C library's heap, where
what the restore kept is scattered among the free blocks so the heap's top cannot shrink. With a
hundred symbols restored in a row, the resident memory grew by tens of megabytes more than the
state it holds. Handing the free pages back after each restore costs about a millisecond.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import pyarrow as pa


def _c_library_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim`, which returns the free pages of every heap arena to the system
    (not only those at the top of the heap, as `free` does); None on another C library."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_TRIM = _c_library_trim()


def release_free_memory() -> None:
    """Return the memory that Arrow's pool and the C library's heap hold unused."""
    pa.default_memory_pool().release_unused()
    if _TRIM is not None:
        _TRIM(0)
