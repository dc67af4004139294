"""`s2-feature run`: the consume -> check -> compute -> persist -> emit -> ack loop (SPEC §8).

One batch at a time per stream, so a batch that fails transiently is retried (`retry.Backoff`)
before anything later of its stream is read: it is never overtaken, and nothing is acked before it
is persisted. A stop request (SIGTERM/SIGINT in `s2-feature run`) is checked between batches and
during backoff; an unfinished batch is abandoned unacked (it is delivered again after restart).

The loop is composed of:
- `ownership.Ownership`: the stream leases (a stream is consumed only while its lease is ours);
- `reads.Reader`: which entries are read next (read-ahead, idle waits, lost-reply detection);
- `worker.SeriesWorker`: one stream's compute, commit, checkpoint and ack;
- this module: the loop itself, the active config bundle (read once per batch) and the status
  value it publishes after each batch for `/health`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from functools import partial

from s2feature.config.bundle import ConfigBundle
from s2feature.domain import SeriesId
from s2feature.lake.parquet import BarLake
from s2feature.observability.metrics import Metrics
from s2feature.observability.tracing import SignalTracer
from s2feature.service.fx_feed import FxLeg
from s2feature.service.lake_writer import LakeWriter
from s2feature.service.observe import BatchObserver
from s2feature.service.ownership import Ownership
from s2feature.service.reads import Reader
from s2feature.service.reporting import StatusReporter
from s2feature.service.retry import Abandoned, Backoff
from s2feature.service.settings import Settings
from s2feature.service.status import LoopStatus, Published
from s2feature.service.worker import BatchOutputs, SeriesWorker, commit_round
from s2feature.store.base import Store
from s2feature.streams.client import AnyRedis
from s2feature.streams.lease import StreamLease
from s2feature.streams.redis_io import Entry, StreamIO

log = logging.getLogger("s2feature.service")


class Service:
    """The consumer loop of the configured streams (`settings.series`)."""

    def __init__(
        self,
        settings: Settings,
        client: AnyRedis,
        store: Store,
        lake: BarLake,
        stop: threading.Event | None = None,
        status: Published[LoopStatus] | None = None,
        bundles: Callable[[], ConfigBundle] | None = None,
        metrics: Metrics | None = None,
        tracer: SignalTracer | None = None,
    ) -> None:
        """`metrics` (None: none kept) and `tracer` (None: no traces) observe the batches."""
        self.settings = settings
        self.client = client
        self.stop = stop or threading.Event()  # set to stop between batches
        self.status = status or Published(LoopStatus())
        # The active config bundle, read once per batch (a config watcher swaps it whole).
        self.active_bundle = bundles or (lambda: settings.bundle)
        self.started = False
        self.backoff = Backoff(
            self.stop,
            on_retry=self.publish_status,
            on_failure=None if metrics is None else metrics.retried,
        )
        # The FX series' bars to the other symbols, through the FX barrier (None without FX).
        self.fx = FxLeg.of(
            client,
            settings.series,
            settings.windows,
            settings.bundle,
            settings.fx_max_wait_ms,
            lake,
        )
        self.store = store
        # The checkpoints' lake parts are written on a thread of its own, off the loop.
        self.lake_writer = LakeWriter(lake)
        self.workers = {
            s.stream_key: SeriesWorker(
                settings, s, self._stream_io(s), store, lake, self.fx, self.lake_writer
            )
            for s in settings.series
        }
        for worker in self.workers.values():
            symbol = worker.series.symbol
            series_metrics = None if metrics is None else metrics.series(symbol, settings.windows)
            worker.observer = BatchObserver(symbol, series_metrics, tracer)
        self.ownership = Ownership(
            self.workers, self.backoff, settings.claim_idle_ms, on_taken=self._take_over
        )
        self.reader = Reader(
            client,
            settings.group,
            settings.consumer,
            settings.batch_size,
            self.backoff,
            self.ownership,
            self._process,
            self._process_round,
            self.stop,
        )
        self.reporter = StatusReporter(
            self.workers,
            self.ownership,
            self.backoff,
            settings.consumer,
            settings.group,
            self.status,
        )
        self.batches = 0

    def publish_status(self) -> None:
        """Publish the loop's status now (after each round of batches, and on each retry)."""
        self.reporter.publish(self.started, self.batches)

    @property
    def owned(self) -> set[str]:
        """Stream keys whose lease this consumer holds."""
        return self.ownership.owned

    @property
    def emitted(self) -> int:
        """New `feat:events` entries written so far (replays rejected by Redis not counted)."""
        return sum(worker.emitted for worker in self.workers.values())

    def _stream_io(self, series_id: SeriesId) -> StreamIO:
        s = self.settings
        lease = StreamLease(self.client, series_id.symbol, s.consumer, s.claim_idle_ms)
        return StreamIO(
            self.client,
            series_id,
            s.group,
            s.consumer,
            lease,
            min_replicas=s.redis.min_replicas,
            wait_ms=s.redis.wait_ms,
        )

    def start(self) -> None:
        for worker in self.workers.values():
            self.backoff.call("create group", worker.io.ensure_group)
        if self.fx is not None:
            self.backoff.call("load FX bars", self.fx.feed.load)
        self.ownership.keep(force=True)
        self.started = True
        self.publish_status()

    def _take_over(self, worker: SeriesWorker) -> None:
        """The lease is ours: rebuild the state, claim what earlier owners left pending and
        process it, oldest first."""
        how = self.backoff.call("restore", partial(worker.restore, self.active_bundle()))
        if self.fx is not None:  # the FX closes its replay reads
            cover = partial(self.fx.cover, worker.engine.seen_until, worker.bars_until)
            self.backoff.call("load FX bars", cover)
        claimed = self.backoff.call("claim", partial(worker.io.claim_all_pending, 0))
        log.info(
            "%s: restored (%s), claimed %d pending",
            worker.series.symbol,
            how,
            claimed,
            extra={"event": "restored", "symbol": worker.series.symbol, "claimed": claimed},
        )
        self.ownership.guarded(worker, partial(self.reader.drain_pending, worker))

    def _process(
        self, worker: SeriesWorker, entries: list[Entry], counts: dict[str, int] | None
    ) -> None:
        read_at = time.perf_counter()  # the read that delivered `entries` has just returned
        bundle = self.active_bundle()
        if bundle is not worker.bundle:
            self._apply_bundle(worker, bundle)
        # The FX bars it finalises let the waiting symbols' snapshots out first (`_fx_release`).
        outputs: BatchOutputs = worker.compute(entries, counts, read_at, self._fx_release)
        # The previous batch's emit script ran in Redis while this one was computed; the commit
        # settles it first (see SeriesWorker.commit).
        self.backoff.call("commit", partial(worker.commit, outputs))
        self.batches += 1
        self.backoff.call("checkpoint and ack", partial(worker.flush, False))
        self.reporter.publish(self.started, self.batches, force=False)

    def _process_round(self, batches: list[tuple[SeriesWorker, list[Entry]]]) -> None:
        """`_process` of a round of new entries of several streams (each once, the FX stream
        first), committed together: one store transaction and one write of emit scripts for
        the round instead of one each per stream (`worker.commit_round`)."""
        read_at = time.perf_counter()  # the read that delivered them has just returned
        bundle = self.active_bundle()
        computed: list[tuple[SeriesWorker, BatchOutputs]] = []
        for worker, entries in batches:
            if bundle is not worker.bundle:
                self._apply_bundle(worker, bundle)
            # The FX bars it finalises let the waiting symbols' snapshots out first.
            computed.append((worker, worker.compute(entries, None, read_at, self._fx_release)))
        self._commit(computed, len(computed))

    def _commit(self, computed: list[tuple[SeriesWorker, BatchOutputs]], batches: int) -> None:
        """Commit computed batches of distinct streams together, then checkpoint and ack those
        due (a checkpoint refused by a stream's lease fence ends that stream's ownership)."""
        self.backoff.call("commit", partial(commit_round, self.store, computed))
        self.batches += batches
        for worker, _ in computed:
            flush = partial(self.backoff.call, "checkpoint and ack", partial(worker.flush, False))
            self.ownership.guarded(worker, flush)
        self.reporter.publish(self.started, self.batches, force=False)

    def _apply_bundle(self, worker: SeriesWorker, bundle: ConfigBundle) -> None:
        old_rev = worker.bundle.rev
        how = worker.apply_bundle(bundle)
        if how is not None:
            log.info(
                "%s: config rev %s in force (%s)",
                worker.series.symbol,
                bundle.rev,
                how,
                extra={
                    "event": "config_in_force",
                    "symbol": worker.series.symbol,
                    "old_rev": old_rev,
                    "rev": bundle.rev,
                    "state": how,
                },
            )

    def flush_all(self, force: bool) -> None:
        """Checkpoint and ack what was committed: when due (idle rounds), or all of it (exit)."""
        workers = self.ownership.owned_workers()
        if not force:
            now = time.monotonic()
            workers = [worker for worker in workers if worker.flush_due(now)]
        for worker in workers:
            self.ownership.guarded(
                worker,
                partial(self.backoff.call, "checkpoint and ack", partial(worker.flush, force)),
            )

    def finish_flushes(self) -> None:
        """Write the checkpoints and acks whose lake parts the lake writer has finished, also
        of streams that got no batch since (`SeriesWorker.finish_flushing`)."""
        for worker in self.ownership.owned_workers():
            if worker.flush_ready:
                finish = partial(worker.finish_flushing, False)
                self.ownership.guarded(
                    worker, partial(self.backoff.call, "checkpoint and ack", finish)
                )

    def run_once(self, block_ms: int | None = None) -> int:
        """Read and process one batch of every owned stream. Returns the number of entries
        handled."""
        self.ownership.keep()
        readable = self._fx_readable(self.ownership.owned_workers())
        # Streams read in rounds are read by the wait below: it returns at once when any has
        # new entries, so a non-blocking read before it would cost a round trip per round.
        waits = bool(block_ms) and self.reader.reads_in_rounds(readable)
        handled = 0 if waits else self.reader.consume_all(readable)
        handled += self._fx_release()
        self.finish_flushes()
        if handled == 0:
            # Before a wait: checkpoint the streams due (a round's own are flushed with it).
            self.flush_all(force=False)
        if handled == 0 and block_ms:
            owned = self.ownership.owned_workers()
            readable = self._fx_readable(owned)
            if self.fx is not None:  # not past an FX deadline
                block_ms = self.fx.block_ms(block_ms, self.owned)
            if readable:
                handled += self.reader.wait_for_any(readable, block_ms)
            else:
                self.stop.wait(block_ms / 1000)  # waiting for a lease (or for FX)
        self.reporter.publish(self.started, self.batches, force=False)
        if self.fx is not None and self.fx.waiting(self.owned):
            handled += 1  # a snapshot waiting for FX is work in progress, not idleness
        return handled

    # -- the FX leg (`service/fx_feed.py`) ---------------------------------------------------

    def _fx_readable(self, owned: list[SeriesWorker]) -> list[SeriesWorker]:
        """The owned streams to read, the FX stream first: not those whose bars wait for FX."""
        if self.fx is None:
            return owned
        readable = self.fx.readable(w.io.key for w in owned)
        fx_stream = self.fx.fx_stream
        # The FX stream first: bars it finalises let the others' bars through in the same round.
        return sorted(
            (w for w in owned if w.io.key in readable), key=lambda w: w.io.key != fx_stream
        )

    def _fx_release(self) -> int:
        """Commit the snapshots of held bars that may go through the FX barrier now."""
        if self.fx is None:
            return 0
        owned = self.ownership.owned_workers()
        self.fx.prune(w.engine.seen_until for w in owned if w.fx_gate is not None)
        released: list[str] = []
        count = self.fx.release([w.io.key for w in owned], released.append)
        if released:
            # Every symbol released by the same FX bars is committed in one go.
            workers = [self.workers[key] for key in released]
            self._commit([(worker, worker.release_fx()) for worker in workers], 0)
        return count

    def release_leases(self) -> None:
        self.ownership.release_all()

    def run(
        self,
        idle_exit_s: float | None = None,
        on_started: Callable[[], None] | None = None,
    ) -> int:
        """Run until stopped (or, with `idle_exit_s`, until idle that long: burst mode).

        `on_started` runs once the streams' states are restored, before the first batch (the CLI
        tunes the garbage collector there). Leases are released on every way out.
        """
        try:
            self.start()
            if on_started is not None:
                on_started()
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
        finally:
            self.release_leases()
            self.lake_writer.close()
        log.info(
            "stopped after %d batches, %d emits",
            self.batches,
            self.emitted,
            extra={"event": "stopped", "batches": self.batches, "emits": self.emitted},
        )
        return 0
