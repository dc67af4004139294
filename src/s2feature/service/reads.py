"""Read scheduling: which entries of the owned streams are read next, and how.

A read of new entries (`>`) whose reply is lost still delivered its entries to this consumer: a
socket timeout while a node stalls or fails over, and redis-py (standalone and cluster) then
silently re-sends the read, which returns the *next* entries. Left alone, the lost ones would sit
pending, and after a restart they would lie below the checkpoint and be acked without ever being
applied. So a read of new entries that may have lost a reply is followed by one `XPENDING` for
this consumer between the last applied entry and the batch (pipelined with the read, so in the
same round trip, when it does not block); anything there is processed first, in stream order.

On a standalone server one round reads every owned stream in one round trip, however many
streams there are, where a read of each stream in turn paid a round trip per stream even when it
was empty: one `XREADGROUP` over all of them (`round_read.RoundRead`). With a block time (the
running service) the round read is the wait itself: it returns at once when any stream has new
entries, so the loop spends one round trip per round. A read whose reply came whole from the
command the service wrote lost nothing; only when it did not (an error, a timeout, or redis-py's
own call, which may send it twice) are the streams marked unchecked, and the next batch of each
of them is checked with an `XPENDING` (written together for the round). The round's batches are
then committed together (`Service._process_round`). A single stream, or a cluster (which cannot
serve a read across slots), is read stream by stream; there each stream's read is sent before the
previous stream's batch is processed (`streams/ahead.py`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Final, TypeVar

import redis
from redis.cluster import RedisCluster

from s2feature.service.ownership import Ownership
from s2feature.service.retry import Backoff
from s2feature.service.worker import SeriesWorker
from s2feature.streams.ahead import ReadAhead, sends_ahead
from s2feature.streams.client import AnyRedis, is_retryable
from s2feature.streams.redis_io import (
    CheckedRead,
    Entry,
    lost_before,
)
from s2feature.streams.round_read import RoundRead, RoundReply

log = logging.getLogger("s2feature.service")

# The longest an entry of a cluster instance's other streams waits while the service blocks on
# its first one: 50 idle reads a second, nothing for Redis, against up to S2_BLOCK_MS of latency.
CLUSTER_IDLE_BLOCK_MS: Final = 20
T = TypeVar("T")

# The most entries a round reads (over all its streams): a backlog of a hundred streams read 200
# entries each held about 60 MB more at once than stream by stream (the cold start of
# `benches/venue_bench.py`); a few thousand entries a round already spread its fixed costs thin.
ROUND_MAX_ENTRIES: Final = 4_000
# The fewest streams read in rounds. A round saves a round trip per stream (most of a venue's
# streams have nothing new at a time) and commits its batches together, but it reads nothing
# ahead: with a few busy streams, reading each stream's next batch while the previous one is
# computed keeps Redis and the service working at once, which a round cannot (three backlogged
# streams: 60 % of the floor in rounds against 90 % read ahead, `benches/service_bench.py`).
ROUND_MIN_STREAMS: Final = 8

# (worker, entries, delivery counts or None for new entries) -> None
Process = Callable[[SeriesWorker, list[Entry], dict[str, int] | None], None]
# [(worker, new entries)] of distinct streams -> None
ProcessRound = Callable[[list[tuple[SeriesWorker, list[Entry]]]], None]


def idle_block_ms(block_ms: int, n_streams: int, cluster: bool) -> int:
    """Block time of the idle read on one stream: capped on a cluster with several streams,
    where one read cannot cover them all."""
    if cluster and n_streams > 1:
        return min(block_ms, CLUSTER_IDLE_BLOCK_MS)
    return block_ms


def round_count(batch_size: int, n_streams: int) -> int:
    """Entries read per stream in a round of `n_streams`: the batch size, less when the round
    would exceed `ROUND_MAX_ENTRIES` (but not under 10 when the batch size is more)."""
    return min(batch_size, max(10, ROUND_MAX_ENTRIES // max(1, n_streams)))


def applied_id(worker: SeriesWorker) -> str:
    """ID of the newest entry whose effects the worker's state holds ("0-0" when none)."""
    ms, seq = worker.applied
    return f"{ms}-{seq}"


class Reader:
    """Reads batches of the owned streams and hands each to `process`, in stream order."""

    def __init__(
        self,
        client: AnyRedis,
        group: str,
        consumer: str,
        batch_size: int,
        backoff: Backoff,
        ownership: Ownership,
        process: Process,
        process_round: ProcessRound,
        stop: threading.Event,
    ) -> None:
        self.client = client
        self.group = group
        self.consumer = consumer
        self.batch_size = batch_size
        self.backoff = backoff
        self.ownership = ownership
        self.process = process
        self.process_round = process_round
        # A standalone server's streams are read in rounds (not a cluster's).
        self._round = (
            RoundRead(client, group, consumer) if isinstance(client, redis.Redis) else None
        )
        # Streams a round read may have delivered entries to without our seeing them (a lost
        # reply), whose next batch has not been checked for them yet (see `_checked`).
        self._unchecked: set[str] = set()
        self.stop = stop

    def drain_pending(self, worker: SeriesWorker, after_id: str = "0") -> int:
        """Process the entries this consumer holds unacked above `after_id`, oldest first, until
        none is left. Returns how many were read."""
        handled, cursor = 0, after_id
        owned = self.ownership.owned
        while not self.stop.is_set() and worker.io.key in owned:
            if self.ownership.due():
                self.ownership.renew_owned()  # a long backlog must not outlast the lease
                continue
            worker.read_started = time.perf_counter()
            entries = self.backoff.call(
                "read pending", partial(worker.io.read_pending, self.batch_size, cursor)
            )
            if not entries:
                break
            ids = [entry_id for entry_id, _ in entries]
            counts = self.backoff.call("pending counts", partial(worker.io.delivery_counts, ids))
            self.process(worker, entries, counts)
            handled += len(entries)
            # Processed entries stay pending until the next checkpoint acks them: continue after
            # this page rather than from the start.
            cursor = ids[-1]
        return handled

    def consume_all(self, owned: list[SeriesWorker]) -> int:
        """One batch of new entries of every owned stream, without blocking: one round read on
        a standalone server with `ROUND_MIN_STREAMS` or more (`_read_round`), else in turn, each
        stream's read sent before the previous stream's batch is processed, so Redis prepares it
        meanwhile."""
        if self._round is not None and self.reads_in_rounds(owned):
            return self._read_round(self._round, owned, None)
        handled = 0
        ahead = self._read_ahead(owned[0]) if owned else None
        try:
            for index, worker in enumerate(owned):
                current = ahead
                ahead = self._read_ahead(owned[index + 1]) if index + 1 < len(owned) else None
                if worker.io.key not in self.ownership.owned:  # lost while serving another
                    if current is not None:
                        self._discard(worker, current)
                    continue
                step = partial(self._consume_new, worker, current)
                handled += self.ownership.guarded(worker, step)
        finally:
            if ahead is not None:  # only when leaving early
                ahead.discard()
                self._unchecked.update(w.io.key for w in owned)
        return handled

    def _discard(self, worker: SeriesWorker, ahead: ReadAhead) -> None:
        """Drop a read sent ahead unseen: its entries stay pending for us, as a lost reply's
        do, so the stream's next batch is checked for them."""
        ahead.discard()
        self._unchecked.add(worker.io.key)

    def reads_in_rounds(self, owned: list[SeriesWorker]) -> bool:
        """Whether `owned` is read in rounds (a standalone server, `ROUND_MIN_STREAMS` or more
        streams): then `wait_for_any` reads them all in one round trip, at once when any has
        new entries, and a non-blocking read before it would only cost another."""
        return len(owned) >= ROUND_MIN_STREAMS and self._round is not None

    def wait_for_any(self, owned: list[SeriesWorker], block_ms: int) -> int:
        """Block until some owned stream has new entries (or `block_ms` passed), and process
        them.

        On a standalone server one `XREADGROUP` covers every stream, so an entry of any stream
        wakes the service at once; the streams it returned that may hold entries of a lost
        reply are then checked with one write of `XPENDING`s (`_checked`). A cluster cannot
        serve a read across slots: there the wait is on the first stream only, kept short when
        there are others (`idle_block_ms`).
        """
        if self._round is None or len(owned) == 1:
            cluster = isinstance(self.client, RedisCluster)
            wait_ms = idle_block_ms(block_ms, len(owned), cluster)
            return self.ownership.guarded(owned[0], partial(self._wait_on, owned[0], wait_ms))
        return self._read_round(self._round, owned, block_ms)

    def _read_round(
        self, round_read: RoundRead, owned: list[SeriesWorker], block_ms: int | None
    ) -> int:
        """Read new entries of every stream of `owned` in one round trip (waiting up to
        `block_ms` for some, None: not at all), check those that need it for entries of a
        lost reply, and process them; returns how many were read."""
        keys = [w.io.key for w in owned]
        self._stamp_reads(owned)
        read = partial(round_read.read, keys, round_count(self.batch_size, len(keys)), block_ms)
        got: RoundReply = self.backoff.call("read", partial(self._noting_reads, owned, read))
        if not got.whole:
            self._unchecked.update(keys)
        return self._apply_round(owned, self._checked(round_read, owned, got.batches))

    def _checked(
        self, round_read: RoundRead, owned: list[SeriesWorker], batches: dict[str, list[Entry]]
    ) -> dict[str, CheckedRead]:
        """The lost-reply verdicts of a round's batches. A stream not marked unchecked lost
        nothing: each read of it since its last check came whole. The others are checked with
        one write of `XPENDING`s, and are checked no more once their verdict is in: entries a
        lost reply delivered are found with the stream's next batch (or at a restart)."""
        ready = [w for w in owned if batches.get(w.io.key)]
        verdicts: dict[str, CheckedRead] = {w.io.key: (batches[w.io.key], False) for w in ready}
        to_check = [w for w in ready if w.io.key in self._unchecked]
        if not to_check:
            return verdicts
        checks = [(w.io, applied_id(w)) for w in to_check]
        firsts = self.backoff.call("check pending", partial(round_read.first_pending_after, checks))
        for worker, first in zip(to_check, firsts, strict=True):
            entries = batches[worker.io.key]
            verdicts[worker.io.key] = (entries, lost_before(entries, first))
            self._unchecked.discard(worker.io.key)
        return verdicts

    @staticmethod
    def _stamp_reads(owned: list[SeriesWorker]) -> None:
        started = time.perf_counter()
        for worker in owned:
            worker.read_started = started

    def _noting_reads(self, owned: list[SeriesWorker], read: Callable[[], T]) -> T:
        """Run a read of several streams, noting its outcome on each (health reporting). A
        failed read may have delivered entries whose reply was lost: its streams are marked
        unchecked."""
        try:
            result = read()
        except Exception as exc:
            for worker in owned:
                worker.io.read_failed(exc)
                self._unchecked.add(worker.io.key)
            raise
        for worker in owned:
            if worker.io.read_failure is not None:
                worker.io.read_succeeded()
        return result

    def _apply_round(self, owned: list[SeriesWorker], batches: dict[str, CheckedRead]) -> int:
        """Process a round of new entries of the owned streams (`batches`, by stream key, with
        their lost-reply verdicts).

        A stream where entries were lost is drained from its pending list first, on its own.
        The others' batches go to `process_round` together, each stream still owned once the
        drains are done. Returns how many entries were read."""
        handled, fresh = 0, []
        for worker in owned:
            read = batches.get(worker.io.key)
            if read is None or not read[0]:
                continue
            entries, lost = read
            if lost:
                step = partial(self._apply_new, worker, entries, True)
                handled += self.ownership.guarded(worker, step)
            else:
                fresh.append((worker, entries))
        owned_now = self.ownership.owned
        round_batches = [(w, entries) for w, entries in fresh if w.io.key in owned_now]
        if round_batches:
            self.process_round(round_batches)
            handled += sum(len(entries) for _, entries in round_batches)
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
            worker.read_started = time.perf_counter()
            read = partial(worker.io.read_new_checked, self.batch_size, applied_id(worker))
            collected = self.backoff.call("read", read)
        entries, lost = collected
        return self._apply_new(worker, entries, lost)

    def _read_ahead(self, worker: SeriesWorker) -> ReadAhead | None:
        """Send the worker's next read now, to be collected by `_consume_new` (standalone Redis
        only, see `streams/ahead.py`); None where it cannot be sent."""
        if not sends_ahead(self.client):
            return None
        try:
            worker.read_started = time.perf_counter()
            return ReadAhead(worker.io, self.batch_size, applied_id(worker))
        except redis.RedisError as exc:
            if not is_retryable(exc):
                raise
            return None  # `_consume_new` reads the ordinary way, with retries

    def _wait_on(self, worker: SeriesWorker, block_ms: int) -> int:
        """Block on one stream until it has new entries (or `block_ms` passed), and process
        them; returns how many were read."""
        worker.read_started = time.perf_counter()
        entries = self.backoff.call("read", partial(worker.io.read_new, self.batch_size, block_ms))
        return self._apply_new(worker, entries, self._lost_before(worker, entries))

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
            return self.drain_pending(worker, applied_id(worker))
        if entries:
            self.process(worker, entries, None)
        return len(entries)
