"""`s2-feature run`: the consume -> check -> compute -> persist -> emit -> ack loop (SPEC §8).

One batch at a time per stream, so a batch that fails transiently is retried (capped exponential
backoff with jitter) before anything later of its stream is read: it is never overtaken, and
nothing is acked before it is persisted. SIGTERM/SIGINT set a flag checked between batches and
during backoff; an unfinished batch is abandoned unacked (it is delivered again after restart)
and the process exits 0.

A read of new entries (`>`) whose reply is lost still delivered its entries to this consumer: a
socket timeout while a node stalls or fails over, and redis-py (standalone and cluster) then
silently re-sends the read, which returns the *next* entries. Left alone, the lost ones would sit
pending, and after a restart they would lie below the checkpoint and be acked without ever being
applied. So every read of new entries is followed by one `XPENDING` for this consumer between the
last applied entry and the batch; anything there is processed first, in stream order.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import TypeVar

import redis
from redis.exceptions import RedisClusterException

from s2feature.lake.parquet import BarLake
from s2feature.service.settings import Settings
from s2feature.service.worker import BatchOutputs, SeriesWorker
from s2feature.store.base import Store, StoreUnavailable
from s2feature.streams.redis_io import AnyRedis, Entry, StreamIO, is_retryable

log = logging.getLogger("s2feature.service")
T = TypeVar("T")


class Abandoned(Exception):  # noqa: N818 - control flow, not an error
    """Shutdown was requested while a batch was still being retried."""


class Backoff:
    def __init__(self, stop: threading.Event, base_s: float = 0.05, cap_s: float = 5.0) -> None:
        self.stop = stop
        self.base_s = base_s
        self.cap_s = cap_s

    def call(self, what: str, fn: Callable[[], T]) -> T:
        attempt = 0
        while True:
            try:
                return fn()
            except (StoreUnavailable, redis.RedisError, RedisClusterException) as exc:
                if not isinstance(exc, StoreUnavailable) and not is_retryable(exc):
                    raise
                attempt += 1
                delay = min(self.cap_s, self.base_s * 2**attempt) * random.uniform(0.5, 1.0)
                log.warning("retry %s after %s (attempt %d, %.2f s)", what, exc, attempt, delay)
                if self.stop.wait(delay):
                    raise Abandoned(what) from exc


class Service:
    def __init__(self, settings: Settings, client: AnyRedis, store: Store, lake: BarLake) -> None:
        self.settings = settings
        self.client = client
        self.stop = threading.Event()
        self.backoff = Backoff(self.stop)
        self.workers = {
            s.stream_key: SeriesWorker(
                settings, s, StreamIO(client, s, settings.group, settings.consumer), store, lake
            )
            for s in settings.series
        }
        self.emitted = 0
        self.batches = 0

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop.set())

    def start(self) -> None:
        for worker in self.workers.values():
            self.backoff.call("create group", worker.io.ensure_group)
            how = self.backoff.call("restore", worker.restore)
            claimed = self.backoff.call("claim", partial(worker.io.claim_all_pending, 0))
            log.info("%s: restored (%s), claimed %d pending", worker.series.symbol, how, claimed)
            self._drain_pending(worker)

    def _drain_pending(self, worker: SeriesWorker, after_id: str = "0") -> int:
        """Process the entries this consumer holds unacked above `after_id`, oldest first, until
        none is left. Returns how many were read."""
        handled, cursor = 0, after_id
        while not self.stop.is_set():
            entries = self.backoff.call(
                "read pending",
                partial(worker.io.read_pending, self.settings.batch_size, cursor),
            )
            if not entries:
                break
            ids = [entry_id for entry_id, _ in entries]
            counts = self.backoff.call("pending counts", partial(worker.io.delivery_counts, ids))
            self._process(worker, entries, counts)
            handled += len(entries)
            # Processed entries stay pending until the next checkpoint acks them: continue after
            # this page rather than from the start.
            cursor = ids[-1]
        return handled

    def _consume_new(self, worker: SeriesWorker, block_ms: int | None) -> int:
        """Read one batch of new entries of a stream and process it; returns how many were read.

        Entries an earlier read delivered without the reply reaching us come first (see the
        module docstring): the batch is then dropped unprocessed and read again, in order, with
        them from the pending list.
        """
        entries = self.backoff.call(
            "read", partial(worker.io.read, self.settings.batch_size, block_ms, False)
        )
        ms, seq = worker.applied
        applied = f"{ms}-{seq}"
        first = entries[0][0] if entries else None
        lost = self.backoff.call(
            "check pending", partial(worker.io.has_pending_between, applied, first)
        )
        if lost:
            log.warning(
                "%s: entries after %s were delivered by a read whose reply was lost; "
                "processing them first",
                worker.series.symbol,
                applied,
            )
            return self._drain_pending(worker, applied)
        if entries:
            self._process(worker, entries, None)
        return len(entries)

    def _process(
        self, worker: SeriesWorker, entries: list[Entry], counts: dict[str, int] | None
    ) -> None:
        outputs: BatchOutputs = worker.compute(entries, counts)
        self.emitted += self.backoff.call("commit", partial(worker.commit, outputs))
        self.batches += 1
        self.backoff.call("checkpoint and ack", partial(worker.flush, False))

    def flush_all(self, force: bool) -> None:
        """Checkpoint and ack what was committed: when due (idle rounds), or all of it (exit)."""
        for worker in self.workers.values():
            self.backoff.call("checkpoint and ack", partial(worker.flush, force))

    def run_once(self, block_ms: int | None = None) -> int:
        """Read and process one batch of every stream. Returns the number of entries handled."""
        handled = 0
        for worker in self.workers.values():
            handled += self._consume_new(worker, None)
        if handled == 0:
            # A steady input goes idle between batches: only checkpoint when one is due.
            self.flush_all(force=False)
        if handled == 0 and block_ms:
            # Nothing anywhere: wait on the first stream (block) rather than spin.
            handled += self._consume_new(next(iter(self.workers.values())), block_ms)
        return handled

    def run(self, idle_exit_s: float | None = None) -> int:
        """Run until stopped (or, with `idle_exit_s`, until idle that long: burst mode)."""
        try:
            self.start()
            idle_since = time.monotonic()
            while not self.stop.is_set():
                if self.run_once(self.settings.block_ms):
                    idle_since = time.monotonic()
                elif idle_exit_s is not None and time.monotonic() - idle_since >= idle_exit_s:
                    break
            self.flush_all(force=True)
        except Abandoned as exc:
            log.info("shutdown during %s: batch abandoned unacked", exc)
        log.info("stopped after %d batches, %d emits", self.batches, self.emitted)
        return 0
