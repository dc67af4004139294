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
last applied entry and the batch (pipelined with the read, so in the same round trip, when it does
not block); anything there is processed first, in stream order.

On a standalone server the service does not wait for Redis twice per batch (`streams/ahead.py`):
each stream's read is sent before the previous stream's batch is processed, and each batch's
emit script is collected only before its stream's next commit or checkpoint. A batch's effects
still land in SPEC order, and its entries are acked only once its emits are confirmed.

A stream is consumed only while this consumer holds its lease (`streams/lease.py`): a second
instance configured with the same symbol waits instead of splitting the stream's entries, and
takes over, with the entries the first left pending, when the first stops or its lease expires.
"""

from __future__ import annotations

import gc
import logging
import math
import random
import signal
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Final, TypeVar

import redis
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException

from s2feature.domain import SeriesId
from s2feature.lake.parquet import BarLake
from s2feature.service.settings import Settings
from s2feature.service.worker import BatchOutputs, SeriesWorker
from s2feature.store.base import Store, StoreUnavailable
from s2feature.streams.ahead import ReadAhead, sends_ahead
from s2feature.streams.client import AnyRedis, is_retryable
from s2feature.streams.lease import LeaseLost, StreamLease
from s2feature.streams.redis_io import Entry, StreamIO, read_new_of_any

log = logging.getLogger("s2feature.service")
T = TypeVar("T")


# The longest an entry of a cluster instance's other streams waits while the service blocks on
# its first one: 50 idle reads a second, nothing for Redis, against up to S2_BLOCK_MS of latency.
CLUSTER_IDLE_BLOCK_MS: Final = 20


def idle_block_ms(block_ms: int, n_streams: int, cluster: bool) -> int:
    """Block time of the idle read on one stream: capped on a cluster with several streams,
    where one read cannot cover them all."""
    if cluster and n_streams > 1:
        return min(block_ms, CLUSTER_IDLE_BLOCK_MS)
    return block_ms


def applied_id(worker: SeriesWorker) -> str:
    """ID of the newest entry whose effects the worker's state holds ("0-0" when none)."""
    ms, seq = worker.applied
    return f"{ms}-{seq}"


# Container allocations between young-generation collections (CPython's default is 700).
GC_YOUNG_THRESHOLD: Final = 10_000


def quiet_garbage_collector() -> None:
    """Keep the cyclic garbage collector out of the service loop.

    Everything built before the loop (modules, settings, restored state) lives as long as the
    process: `gc.freeze()` moves it out of the collector's sight, so a full collection no longer
    walks it. A batch allocates and frees thousands of containers; with CPython's default
    threshold of 700, some 60 young collections a second found almost nothing to free, and the
    survivors' full collections walked the whole process. Measured over the service benchmark's
    burst runs (`gc.callbacks`): 66 ms of collections a run (2.4% of it) before, 15 ms after,
    most of that the one full collection here.
    """
    gc.collect()
    gc.freeze()
    _, *older = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *older)


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
            s.stream_key: SeriesWorker(settings, s, self._stream_io(s), store, lake)
            for s in settings.series
        }
        self.owned: set[str] = set()  # stream keys whose lease this consumer holds
        self._lease_period_s = settings.claim_idle_ms / 3000  # renew 3 times per TTL
        self._leases_checked_at = -math.inf
        self.batches = 0

    @property
    def emitted(self) -> int:
        """New `feat:events` entries written so far (replays rejected by Redis not counted)."""
        return sum(worker.emitted for worker in self.workers.values())

    def _stream_io(self, series: SeriesId) -> StreamIO:
        s = self.settings
        lease = StreamLease(self.client, series.symbol, s.consumer, s.claim_idle_ms)
        return StreamIO(
            self.client,
            series,
            s.group,
            s.consumer,
            lease,
            min_replicas=s.redis.min_replicas,
            wait_ms=s.redis.wait_ms,
        )

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop.set())

    def start(self) -> None:
        for worker in self.workers.values():
            self.backoff.call("create group", worker.io.ensure_group)
        self.keep_leases(force=True)

    # -- ownership -----------------------------------------------------------------------------

    def keep_leases(self, force: bool = False) -> None:
        """Renew the leases this consumer holds and try to take the others, at most three times
        per lease TTL (or now, with `force`)."""
        if not self._leases_due(force):
            return
        self._renew_owned()
        for key, worker in self.workers.items():
            if key in self.owned:
                continue
            lease = worker.io.lease
            if self.backoff.call("acquire lease", lease.acquire):
                self._take_over(worker)
            else:
                holder = self.backoff.call("read lease", lease.holder)
                log.warning(
                    "%s: owned by consumer %s; waiting (at most %d ms after it stops renewing)",
                    worker.series.symbol,
                    holder,
                    lease.ttl_ms,
                )

    def _leases_due(self, force: bool = False) -> bool:
        now = time.monotonic()
        if not force and now - self._leases_checked_at < self._lease_period_s:
            return False
        self._leases_checked_at = now
        return True

    def _renew_owned(self) -> None:
        for worker in self._owned_workers():
            if not self.backoff.call("renew lease", worker.io.lease.renew):
                self._lose(worker, "its lease expired or was taken")

    def _take_over(self, worker: SeriesWorker) -> None:
        """The lease is ours: rebuild the state, claim what earlier owners left pending and
        process it, oldest first."""
        self.owned.add(worker.io.key)
        how = self.backoff.call("restore", worker.restore)
        claimed = self.backoff.call("claim", partial(worker.io.claim_all_pending, 0))
        log.info("%s: restored (%s), claimed %d pending", worker.series.symbol, how, claimed)
        self._guarded(worker, partial(self._drain_pending, worker))

    def _lose(self, worker: SeriesWorker, why: str) -> None:
        log.error(
            "%s: no longer owned by this consumer (%s); its state is dropped and its unacked "
            "entries are left to the owner",
            worker.series.symbol,
            why,
        )
        self.owned.discard(worker.io.key)
        worker.forget()

    def _guarded(self, worker: SeriesWorker, step: Callable[[], int]) -> int:
        """Run a step of an owned stream; a checkpoint refused by the lease fence ends the
        ownership instead of the service."""
        try:
            return step()
        except LeaseLost as exc:
            self._lose(worker, str(exc))
            return 0

    def _drain_pending(self, worker: SeriesWorker, after_id: str = "0") -> int:
        """Process the entries this consumer holds unacked above `after_id`, oldest first, until
        none is left. Returns how many were read."""
        handled, cursor = 0, after_id
        while not self.stop.is_set() and worker.io.key in self.owned:
            if self._leases_due():
                self._renew_owned()  # a long backlog must not outlast the lease
                continue
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

    def _consume_new(self, worker: SeriesWorker, ahead: ReadAhead | None = None) -> int:
        """Read one batch of new entries of a stream without blocking (or collect the read sent
        `ahead`) and process it; returns how many were read."""
        collected = None
        if ahead is not None:
            try:
                collected = ahead.result()
            except redis.RedisError as exc:
                if not is_retryable(exc):
                    raise
                # The ordinary read below retries, and its lost-reply check finds whatever
                # this read may have delivered.
                log.warning("%s: read ahead failed (%s); reading again", worker.series.symbol, exc)
        if collected is None:
            read = partial(worker.io.read_new_checked, self.settings.batch_size, applied_id(worker))
            collected = self.backoff.call("read", read)
        entries, lost = collected
        return self._apply_new(worker, entries, lost)

    def _read_ahead(self, worker: SeriesWorker) -> ReadAhead | None:
        """Send the worker's next read now, to be collected by `_consume_new` (standalone Redis
        only, see `streams/ahead.py`); None where it cannot be sent."""
        if not sends_ahead(self.client):
            return None
        try:
            return ReadAhead(worker.io, self.settings.batch_size, applied_id(worker))
        except redis.RedisError as exc:
            if not is_retryable(exc):
                raise
            return None  # `_consume_new` reads the ordinary way, with retries

    def _consume_all(self, owned: list[SeriesWorker]) -> int:
        """One batch of new entries of every owned stream, in turn. Each stream's read is sent
        before the previous stream's batch is processed, so Redis prepares it meanwhile."""
        handled = 0
        ahead = self._read_ahead(owned[0]) if owned else None
        try:
            for index, worker in enumerate(owned):
                current = ahead
                ahead = self._read_ahead(owned[index + 1]) if index + 1 < len(owned) else None
                if worker.io.key not in self.owned:  # lost while an earlier stream was served
                    if current is not None:
                        current.discard()
                    continue
                handled += self._guarded(worker, partial(self._consume_new, worker, current))
        finally:
            if ahead is not None:
                ahead.discard()  # only when leaving early: its entries stay pending for us
        return handled

    def _wait_on(self, worker: SeriesWorker, block_ms: int) -> int:
        """Block on one stream until it has new entries (or `block_ms` passed), and process
        them; returns how many were read."""
        entries = self.backoff.call(
            "read", partial(worker.io.read_new, self.settings.batch_size, block_ms)
        )
        return self._apply_new(worker, entries, self._lost_before(worker, entries))

    def _wait_for_any(self, owned: list[SeriesWorker], block_ms: int) -> int:
        """Nothing anywhere: block until some owned stream has new entries, and process them.

        On a standalone server one `XREADGROUP` covers every stream, so an entry of any stream
        wakes the service at once. A cluster cannot serve a read across slots: there the wait is
        on the first stream only, kept short when there are others (`idle_block_ms`).
        """
        client = self.client
        if isinstance(client, RedisCluster) or len(owned) == 1:
            wait_ms = idle_block_ms(block_ms, len(owned), isinstance(client, RedisCluster))
            return self._guarded(owned[0], partial(self._wait_on, owned[0], wait_ms))
        s = self.settings
        keys = [w.io.key for w in owned]
        read = partial(read_new_of_any, client, s.group, s.consumer, keys, s.batch_size, block_ms)
        batches = self.backoff.call("read", read)
        handled = 0
        for worker in owned:
            entries = batches.get(worker.io.key)
            if entries:
                lost = self._lost_before(worker, entries)
                handled += self._guarded(worker, partial(self._apply_new, worker, entries, lost))
        return handled

    def _lost_before(self, worker: SeriesWorker, entries: list[Entry]) -> bool:
        """Whether this consumer holds entries after the last applied one that precede
        `entries`: delivered by a read whose reply was lost (see the module docstring)."""
        first = entries[0][0] if entries else None
        return self.backoff.call(
            "check pending", partial(worker.io.has_pending_between, applied_id(worker), first)
        )

    def _apply_new(self, worker: SeriesWorker, entries: list[Entry], lost: bool) -> int:
        """Process a batch of new entries of a stream; returns how many were read.

        When entries were `lost` before it, they come first: the batch is then dropped
        unprocessed and read again, in order, with them from the pending list.
        """
        if lost:
            log.warning(
                "%s: entries after %s were delivered by a read whose reply was lost; "
                "processing them first",
                worker.series.symbol,
                applied_id(worker),
            )
            return self._drain_pending(worker, applied_id(worker))
        if entries:
            self._process(worker, entries, None)
        return len(entries)

    def _process(
        self, worker: SeriesWorker, entries: list[Entry], counts: dict[str, int] | None
    ) -> None:
        outputs: BatchOutputs = worker.compute(entries, counts)
        # The previous batch's emit script ran in Redis while this one was computed; the commit
        # settles it first (see SeriesWorker.commit).
        self.backoff.call("commit", partial(worker.commit, outputs))
        self.batches += 1
        self.backoff.call("checkpoint and ack", partial(worker.flush, False))

    def flush_all(self, force: bool) -> None:
        """Checkpoint and ack what was committed: when due (idle rounds), or all of it (exit)."""
        for worker in self._owned_workers():
            self._guarded(
                worker,
                partial(self.backoff.call, "checkpoint and ack", partial(worker.flush, force)),
            )

    def _owned_workers(self) -> list[SeriesWorker]:
        return [w for key, w in self.workers.items() if key in self.owned]

    def run_once(self, block_ms: int | None = None) -> int:
        """Read and process one batch of every owned stream. Returns the number of entries
        handled."""
        self.keep_leases()
        handled = self._consume_all(self._owned_workers())
        if handled == 0:
            # A steady input goes idle between batches: only checkpoint when one is due.
            self.flush_all(force=False)
        if handled == 0 and block_ms:
            owned = self._owned_workers()
            if owned:
                handled += self._wait_for_any(owned, block_ms)
            else:
                self.stop.wait(block_ms / 1000)  # waiting for a lease
        return handled

    def release_leases(self) -> None:
        """Hand the streams over at once on exit (best effort: an unreachable Redis lets the
        leases expire instead)."""
        for worker in self._owned_workers():
            try:
                worker.io.lease.release()
            except (redis.RedisError, RedisClusterException) as exc:
                log.warning("%s: lease not released (%s)", worker.series.symbol, exc)
        self.owned.clear()

    def run(self, idle_exit_s: float | None = None) -> int:
        """Run until stopped (or, with `idle_exit_s`, until idle that long: burst mode)."""
        try:
            self.start()
            quiet_garbage_collector()
            idle_since = time.monotonic()
            while not self.stop.is_set():
                if self.run_once(self.settings.block_ms):
                    idle_since = time.monotonic()
                elif idle_exit_s is not None and time.monotonic() - idle_since >= idle_exit_s:
                    break
            self.flush_all(force=True)
        except Abandoned as exc:
            log.info("shutdown during %s: batch abandoned unacked", exc)
            for worker in self.workers.values():
                worker.discard_unsettled()
        self.release_leases()
        log.info("stopped after %d batches, %d emits", self.batches, self.emitted)
        return 0
