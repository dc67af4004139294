"""Process-wide tuning for a process whose main job is the service loop (`s2-feature run`).

These change the whole interpreter, so only the process's entry point applies them, never the
service itself: an embedding program or a test harness keeps its own collector and signals.
"""

from __future__ import annotations

import gc
import signal
import threading
from typing import Final

# Container allocations between young-generation collections (CPython's default is 700).
GC_YOUNG_THRESHOLD: Final = 10_000


def quiet_garbage_collector() -> None:
    """Keep the cyclic garbage collector out of the service loop.

    Everything built before the loop (modules, settings, restored state) lives as long as the
    process: `gc.freeze()` moves it out of the collector's sight, so a full collection no longer
    walks it. A batch allocates and frees thousands of containers; with CPython's default
    threshold of 700, dozens of young collections a second would find almost nothing to free,
    and the survivors' full collections would walk the whole process.
    """
    gc.collect()
    gc.freeze()
    _, *older = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *older)


def stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM and SIGINT set `stop` (checked between batches and during backoff). Only the main
    thread may install signal handlers."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
