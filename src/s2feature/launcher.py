"""`s2-feature run` put together: the process around the service loop.

Order at start: JSON logging, stop on SIGTERM/SIGINT, the store (retried with backoff while it
cannot be reached: a pod must not crash-loop while its database starts), Redis, the loop. The
loop keeps the main thread. Whatever way the loop ends, its leases are released and the store is
closed.
"""

from __future__ import annotations

import logging
import threading
from functools import partial

from s2feature import __version__
from s2feature.lake.parquet import BarLake
from s2feature.logs import configure_json_logging
from s2feature.service.process import quiet_garbage_collector, stop_on_signals
from s2feature.service.retry import Abandoned, Backoff
from s2feature.service.runner import Service
from s2feature.service.settings import Settings
from s2feature.store.factory import open_store
from s2feature.streams.client import connect

log = logging.getLogger("s2feature.service")


def run_service(settings: Settings, idle_exit_s: float | None = None) -> int:
    """Run the service until stopped (or idle for `idle_exit_s`: burst mode); the exit code."""
    configure_json_logging(settings.log_level)
    stop = threading.Event()
    stop_on_signals(stop)
    log.info(
        "starting s2feature %s",
        __version__,
        extra={
            "event": "start",
            "version": __version__,
            "symbols": [s.symbol for s in settings.series],
            "consumer": settings.consumer,
            "store": settings.store.backend,
            "windows": list(settings.windows),
        },
    )
    try:
        store = Backoff(stop, cap_s=10.0).call("open store", partial(open_store, settings.store))
    except Abandoned:
        log.info("stopped while waiting for the store", extra={"event": "stopped"})
        return 0
    try:
        service = Service(
            settings, connect(settings.redis), store, BarLake(settings.lake_dir), stop=stop
        )
        return service.run(idle_exit_s=idle_exit_s, on_started=quiet_garbage_collector)
    finally:
        store.close()
