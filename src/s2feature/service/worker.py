"""One series' work: entries in, state advanced, outputs routed, then committed in SPEC order.

`SeriesWorker.compute` applies a batch of stream entries to the in-memory state (pure apart from
reading delivery counts) and returns everything the batch must write. `commit` writes it in the
order of SPEC §8 — store, emit, `feat:last` — and is idempotent, so the service loop can retry it
after a transient failure without recomputing anything. `flush`, at most once per checkpoint
interval, appends the committed base bars to the lake (on the lake writer's thread), then, once
they are durable, writes the checkpoint and acks.

Crash safety rests on the checkpoint in `feat:{cache}:<symbol>`: it holds the engine and ingestor
state *and* the ID of the last entry whose effects it contains, and is written after the outputs
and before the ack. After a crash, entries still pending are delivered again: those at or below the
checkpoint's ID were fully written already and are only acked; the others are recomputed from the
checkpointed state, which gives the same snapshots, and written again (upserts and explicit-ID
emits make that a no-op where the first attempt had got through).
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import msgspec
import numpy as np

from s2feature import strict_json
from s2feature.compute.correlation import CORRELATION_FEATURES
from s2feature.compute.engine import SymbolEngine
from s2feature.compute.engine_state import StateKey
from s2feature.compute.family import CloseHistory
from s2feature.compute.history import warmup_start_of
from s2feature.config.bundle import ConfigBundle
from s2feature.domain import Bar, SeriesId, Snapshot
from s2feature.dqc.verdict import routing
from s2feature.ingest.decode import decode_entry
from s2feature.ingest.stream import StreamIngestor
from s2feature.lake.parquet import BarLake
from s2feature.observability.tracing import TracedSignal
from s2feature.service.fx_feed import FxLeg
from s2feature.service.lake_writer import LakeWriter
from s2feature.service.memory import release_free_memory
from s2feature.service.observe import BatchObserver
from s2feature.service.settings import Settings
from s2feature.store.base import SignalRow, Store, dqc_fail_event_id
from s2feature.store.snapshot_rows import prepare_snapshot
from s2feature.streams.ahead import PublishAhead, PublishRound, SentEmits, sends_ahead
from s2feature.streams.redis_io import Entry, Fields, StreamIO, entry_id_tuple

log = logging.getLogger("s2feature.service")

CHECKPOINT_VERSION = 3
# Versions `restore` reads: 2 held every family's whole state; 3 holds the volatility family's
# compact state, whose squared returns are derived again from the lake's base bars.
READABLE_CHECKPOINTS = frozenset({2, CHECKPOINT_VERSION})


@dataclass
class Flushing:
    """A checkpoint under way: its base bars being appended to the lake (`written`, None when
    there were none), then the checkpoint document (None when the state did not move) and the
    acks, which wait for the append."""

    written: Future[None] | None
    bars: list[Bar]
    document: bytes | None
    ack_ids: list[str]
    started: float  # `time.perf_counter()`

    def ready(self) -> bool:
        return self.written is None or self.written.done()


@dataclass
class BatchOutputs:
    bars: list[Bar] = field(default_factory=list)
    signals: list[SignalRow] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    emits: list[tuple[int, str, str]] = field(default_factory=list)  # (t0, window, JSON text)
    dead: list[tuple[str, Fields, tuple[str, ...]]] = field(default_factory=list)
    ack_ids: list[str] = field(default_factory=list)
    last_id: str | None = None  # newest entry whose effects the state now holds
    snapshots: int = 0
    last: bytes | None = None  # the `feat:last` document as of this batch, when it emits
    # Times of the batch's steps (`time.perf_counter()` seconds), for metrics and traces: the
    # read that delivered the entries was sent at `read_started` and returned by `read_at`.
    read_started: float = 0.0
    read_at: float = 0.0
    # (started, done, snapshots) of every base bar that produced snapshots; filled only when
    # the observer reads it (`BatchObserver.timed`).
    produced: list[tuple[float, float, list[Snapshot]]] = field(default_factory=list)
    traced: dict[str, TracedSignal] = field(default_factory=dict)  # sampled, by signal_id
    persist: tuple[float, float] | None = None  # the store write
    emit_started: float | None = None  # the emit script sent
    # Registered for the next flush (by `settle`): once only, however often a commit is retried.
    registered: bool = False


def describe(stale: Iterable[StateKey]) -> str:
    """`atr@1m, volatility@base` for a set of engine state keys."""
    return ", ".join(f"{name}@{scope}" for scope, name in sorted(stale))


class SeriesWorker:
    def __init__(
        self,
        settings: Settings,
        series: SeriesId,
        io: StreamIO,
        store: Store,
        lake: BarLake,
        fx: FxLeg | None = None,
        lake_writer: LakeWriter | None = None,
    ) -> None:
        """`lake_writer` appends the checkpoints' base bars (the service's runs on a thread of
        its own; by default they are appended at once)."""
        self.settings = settings
        self.series = series
        self.io = io
        self.store = store
        self.lake = lake
        self._checkpoint_s = settings.checkpoint_ms / 1000
        self._unacked: list[str] = []  # committed entries waiting for the next checkpoint
        self._unlaked: list[Bar] = []  # their base bars, appended to the lake at that checkpoint
        self._unsaved_id: str | None = None
        self.lake_writer = lake_writer or LakeWriter(lake, background=False)
        self._flushing: Flushing | None = None  # the checkpoint whose lake part is being written
        # Each symbol's checkpoints keep a phase of their own within the interval (from its
        # name), so that an instance with a hundred symbols does not append a hundred lake parts
        # and write a hundred checkpoints in the same round every interval.
        phase = zlib.crc32(series.symbol.encode()) / 2**32
        self._flushed_at = time.monotonic() - phase * self._checkpoint_s
        # The last commit's batch and its emit script, until `settle` collects the reply (the
        # script is None when it was not sent ahead, or its reply failed: settle runs it).
        self._unsettled: tuple[BatchOutputs, SentEmits | None] | None = None
        self.emitted = 0  # new emits, replays not counted
        self.bundle = settings.bundle  # the active bundle: replaced between batches only
        self.observer = BatchObserver(series.symbol)  # metrics, logs, traces: set by the service
        # When the read that delivers the next batch was sent (`reads.Reader` stamps it).
        self.read_started = time.perf_counter()
        # The FX leg (`service/fx_feed.py`): the FX series' worker feeds and publishes its bars,
        # another symbol's engine reads FX closes and its bars pass the barrier.
        self.fx_feed = fx.feed if fx is not None and fx.fx_stream == series.stream_key else None
        self.fx_gate = fx.gate_for(series) if fx is not None else None
        self.fx_views = fx.views_for(series) if fx is not None else None
        self._fresh_state()

    def _fresh_state(self) -> None:
        bundle = self.bundle
        self.ingestor = StreamIngestor(self.series, bundle)
        self.engine = SymbolEngine(self.series, self.settings.windows, bundle, self.fx_views)
        if self.fx_gate is not None:
            self.fx_gate.clear()
        self.applied = (0, 0)
        self.last_event_ms: int | None = None  # event time of the newest applied event
        self.bars_until = -1  # close time of the newest base bar the engine has seen
        # window -> (t0, JSON text) of the newest emitted payload, for `feat:last`
        self.latest: dict[str, tuple[int, str]] = {}

    # -- state ---------------------------------------------------------------------------------

    def forget(self) -> None:
        """Drop the in-memory state and everything not yet checkpointed (the stream was taken
        over by another consumer: its entries stay pending for the new owner)."""
        self.discard_unsettled()
        self._abandon_flushing()
        self._unacked, self._unlaked, self._unsaved_id = [], [], None
        self._fresh_state()

    def restore(self, bundle: ConfigBundle | None = None) -> str:
        """Load the checkpoint, or warm up from the lake when there is none, under `bundle` (the
        active one by default). Says which.

        Engine families whose saved state does not fit the active bundle (another version of the
        family, or a checkpoint written under other state parameters, e.g. another `atr_period`)
        are rebuilt from the lake's bars up to the checkpoint. The memory the lake's bars took
        while they were read goes back to the system (`service/memory.py`).
        """
        try:
            return self._restore(bundle)
        finally:
            release_free_memory()

    def _restore(self, bundle: ConfigBundle | None) -> str:
        self._abandon_flushing()  # the lake is read below: no part of ours is still being written
        if bundle is not None and bundle != self.bundle:
            self.bundle = bundle
            self._fresh_state()
        state = self.io.load_checkpoint()
        if state is not None and state.get("version") in READABLE_CHECKPOINTS:
            self.ingestor.restore(state["ingestor"])
            stale = self.engine.restore(state["engine"], self._recent_bars(state))
            self.applied = entry_id_tuple(state["applied"])
            self.bars_until = int(state["bars_until"])
            self.last_event_ms = state.get("last_event_ms")
            self.latest = {
                window: (int(payload["t0"]), strict_json.encode(payload).decode())
                for window, payload in state["latest"].items()
            }
            if self.fx_gate is not None:  # bars that were waiting for FX wait again
                self.fx_gate.restore(state.get("fx_held"), time.monotonic())
            how = f"checkpoint at entry {state['applied']}"
            if stale:
                history = self._history()
                try:
                    self.engine.rebuild(stale, history)
                    how += f", {describe(stale)} rebuilt from {len(history)} lake bars"
                except ValueError as exc:
                    # The lake lost bars the checkpoint's engine had seen: what it holds is all
                    # there is. The positions stay the checkpoint's (its outputs were written).
                    self.engine = SymbolEngine(self.series, self.settings.windows, self.bundle)
                    warmed = self._warm_up_engine()
                    how += f", {describe(stale)} not rebuilt ({exc}): engine {warmed}"
            return how
        self._fresh_state()
        how = self._warm_up_engine()
        self.bars_until = self.engine.seen_until if self.engine.seen_until is not None else -1
        return how

    def _warm_up_engine(self) -> str:
        """Warm the (fresh) engine up from the lake; says from how many bars."""
        symbol = self.series.symbol
        last = self.lake.last_close_time(symbol)
        if last is None:
            return "warm-up from 0 lake bars"
        # Only the history the features depend on (31 days and a margin), not the whole lake:
        # the closes of all of it, whole bars of the tail the w-bar families need.
        start = warmup_start_of(last + 1, self.engine.windows, self.bundle)
        tail_start = max(start, self.engine.warm_up_tail_start(last))
        tail = self.lake.read_span(symbol, tail_start, last)
        # Base intervals divide a day and the tail starts on one: no bar straddles its start.
        early_time, early = self.lake.read_closes(symbol, start, to_close_time=tail_start - 1)
        closes = CloseHistory(
            np.concatenate([early_time, tail.close_time]), np.concatenate([early, tail.close])
        )
        # No snapshot is made of these bars: they were written when live.
        self.engine.warm_up(tail, closes)
        return f"warm-up from {len(closes.close)} lake bars"

    def _recent_bars(self, state: dict[str, Any]) -> CloseHistory | None:
        """The lake's base bars a checkpoint's compact engine entries are restored from: those
        of the engine's `history_ms` up to the checkpoint's newest bar (every one of them was
        appended to the lake before the checkpoint was written)."""
        if state.get("version") != CHECKPOINT_VERSION:
            return None
        until = int(state["bars_until"])
        span = self.engine.history_ms()
        if until < 0 or span == 0:
            return None
        close_time, close = self.lake.read_closes(
            self.series.symbol, from_open_time=until - span, to_close_time=until
        )
        return CloseHistory(close_time, close)

    def apply_bundle(self, bundle: ConfigBundle) -> str | None:
        """Move the state to another bundle, between batches; says what was rebuilt (None when
        the bundle is the active one).

        Families whose state parameters are unchanged keep their state and take the new
        thresholds from the next snapshot on; the others are rebuilt from the base bars the
        engine has seen (the lake's, then those not yet appended to it), so the next snapshot
        equals a recompute under the new bundle. The ingestor keeps its state (a shorter jump
        lookback keeps the newest mids; a longer one fills up from the next events).
        """
        if bundle == self.bundle:
            return None
        engine, stale = self.engine.with_bundle(bundle)
        ingestor = StreamIngestor(self.series, bundle)
        ingestor.restore(self.ingestor.snapshot())
        how = "thresholds only"
        if stale:
            history = self._history()
            engine.rebuild(stale, history)
            how = f"{describe(stale)} rebuilt from {len(history)} bars"
        self.engine, self.ingestor, self.bundle = engine, ingestor, bundle
        return how

    def _history(self) -> list[Bar]:
        """Every base bar the engine has seen, oldest first: the lake's up to `bars_until`,
        then the committed bars not yet appended to it."""
        self._await_written()
        bars = {
            bar.close_time: bar
            for bar in self.lake.read(self.series.symbol, to_close_time=self.bars_until).to_bars()
        }
        unsettled = self._unsettled[0].bars if self._unsettled is not None else []
        for bar in (*self._unlaked, *unsettled):
            if bar.close_time <= self.bars_until:
                bars.setdefault(bar.close_time, bar)
        return [bars[t] for t in sorted(bars)]

    def checkpoint(self, last_id: str) -> dict[str, Any]:
        return {
            "version": CHECKPOINT_VERSION,
            "applied": last_id,
            "bars_until": self.bars_until,
            "last_event_ms": self.last_event_ms,
            "ingestor": self.ingestor.snapshot(),
            "engine": self.engine.snapshot(compact=True),
            "latest": {window: msgspec.Raw(text) for window, (_, text) in self.latest.items()},
            "fx_held": self.fx_gate.snapshot() if self.fx_gate is not None else [],
        }

    def _last_document(self) -> bytes:
        """`feat:last`: the newest emitted payload of every window, with the newest t0. The
        payloads are embedded as the texts that were emitted (checked when they were made)."""
        newest = max(t0 for t0, _ in self.latest.values())
        windows = {window: msgspec.Raw(text) for window, (_, text) in self.latest.items()}
        return strict_json.encode_checked({"t0": newest, "windows": windows})

    # -- compute -------------------------------------------------------------------------------

    def compute(
        self,
        entries: Sequence[Entry],
        deliveries: dict[str, int] | None = None,
        read_at: float | None = None,
        fx_added: Callable[[], object] | None = None,
    ) -> BatchOutputs:
        """Apply a batch in three stages: entries through the ingestor, then the base bars they
        finalised through the engine, then the snapshots to their outputs.

        Each stage keeps the order of its inputs and no stage feeds an earlier one, so this gives
        exactly what entry-by-entry processing gives (only strategy events of dropped entries
        now precede those of failing snapshots in the batch; they are upserted by distinct
        keys). Running each stage's code in one stretch keeps it hot in the CPU's caches: about
        a fifth faster than alternating between ingest, engine and routing on every entry.

        `read_at` is when the read that delivered `entries` returned (`time.perf_counter()`,
        now by default): the compute latency is measured from there.

        The FX series' worker adds its new base bars to the FX feed right after the ingestor
        and then calls `fx_added`, before its own engine runs: the snapshots of the other
        symbols that waited for these bars are released and committed first, so the FX
        series' own snapshots are not on their path.
        """
        out = BatchOutputs(read_started=self.read_started)
        out.read_at = time.perf_counter() if read_at is None else read_at
        bars = self._ingest(entries, deliveries, out)
        if self.fx_feed is not None and bars:
            self.fx_feed.add_bars(bars)
            if fx_added is not None:
                fx_added()
        return self._outputs(self._snapshots(bars, out), out)

    def _snapshots(self, bars: list[Bar], out: BatchOutputs) -> list[Snapshot]:
        """The engine's snapshots of new base bars (timed when the observer asks); with the FX
        leg, another symbol's bars pass the FX barrier first."""
        on_base_bar = self.engine.on_base_bar
        if self.observer.timed():
            on_base_bar = partial(self._timed_base_bar, out)
        if self.fx_gate is not None:
            # A bundle without rho_* has nothing to wait for: every held bar goes through.
            now = time.monotonic() if self._reads_fx() else math.inf
            return self.fx_gate.feed(on_base_bar, bars, now)
        return [snap for bar in bars for snap in on_base_bar(bar)]

    def _timed_base_bar(self, out: BatchOutputs, bar: Bar) -> list[Snapshot]:
        clock = time.perf_counter
        started = clock()
        produced = self.engine.on_base_bar(bar)
        if produced:
            out.produced.append((started, clock(), produced))
        return produced

    def _reads_fx(self) -> bool:
        enabled = self.bundle.features.enabled
        return any(name in enabled for name in CORRELATION_FEATURES)

    @property
    def fx_waiting(self) -> bool:
        return self.fx_gate is not None and self.fx_gate.waiting

    def release_fx(self) -> BatchOutputs:
        """The outputs of the held bars that may go through the FX barrier now (no entries)."""
        now = time.perf_counter()
        out = BatchOutputs(read_started=now, read_at=now)
        return self._outputs(self._snapshots([], out), out)

    def _outputs(self, snapshots: list[Snapshot], out: BatchOutputs) -> BatchOutputs:
        observer = self.observer
        mode = self.bundle.mode
        for snap in snapshots:
            self._route(snap, out, mode.realtime, mode.persist_all)
        if out.emits:
            # Taken now: the next batch may be computed before this one's commit is settled.
            out.last = self._last_document()
        observer.computed(out, mode.realtime, mode.persist_all)
        return out

    def _ingest(
        self, entries: Sequence[Entry], deliveries: dict[str, int] | None, out: BatchOutputs
    ) -> list[Bar]:
        """Register every entry for the ack, apply the new ones; the new base bars, in order.
        Dead letters are added in entry order (their stream reuses the entry IDs)."""
        out.ack_ids.extend(entry_id for entry_id, _ in entries)
        fresh = self._not_applied(entries)
        if not fresh:
            return out.bars
        out.last_id = fresh[-1][0]
        self.applied = entry_id_tuple(out.last_id)
        # Decoding is pure: the whole batch at once, for the same reason as the stages.
        decoded = [decode_entry(fields) for _, fields in fresh]
        for (entry_id, fields), event in zip(fresh, decoded, strict=True):
            if deliveries and deliveries.get(entry_id, 0) > self.settings.max_deliveries:
                out.dead.append((entry_id, dict(fields), ("delivery:too_many_attempts",)))
                continue
            outcome = self.ingestor.on_decoded(event)
            if outcome.rejected is not None:
                out.events.append(self._dropped_event(entry_id, outcome.rejected.reasons))
                if outcome.rejected.category == "unreadable":
                    out.dead.append((entry_id, dict(fields), outcome.rejected.reasons))
                continue
            if outcome.event is not None:
                self.last_event_ms = outcome.event.ts
            for bar in outcome.bars:
                if bar.close_time <= self.bars_until:
                    continue  # already in the lake and the engine (a replay after warm-up)
                self.bars_until = bar.close_time
                out.bars.append(bar)
        return out.bars

    def _route(self, snap: Snapshot, out: BatchOutputs, realtime: bool, persist_all: bool) -> None:
        out.snapshots += 1
        store, emit = routing(snap, realtime, persist_all)
        if store or emit:
            # Checked and encoded once: the stored document and the emitted `data` are one text.
            row = prepare_snapshot(snap, "realtime", int(time.time() * 1000))
            if store:
                out.signals.append(row)
            if emit:
                out.emits.append((snap.t0, snap.window, row.json_text))
                self.latest[snap.window] = (snap.t0, row.json_text)
        if not snap.dqc.passed:
            out.events.append(
                {
                    "event_id": dqc_fail_event_id(snap.signal_id),
                    "kind": "FEATURE_DQC_FAIL",
                    "symbol": snap.series.symbol,
                    "ts": snap.t0,
                    "signal_id": snap.signal_id,
                    "reasons": list(snap.dqc.reasons),
                    "config_rev": snap.config_rev,
                }
            )

    def _not_applied(self, entries: Sequence[Entry]) -> Sequence[Entry]:
        """The entries after the last applied one. Entries come in stream order, so those
        applied before a crash (only their ack was lost) can only lead the batch: the IDs are
        compared until the first new one, not for every entry."""
        start = 0
        while start < len(entries) and entry_id_tuple(entries[start][0]) <= self.applied:
            start += 1
        return entries[start:]

    def _dropped_event(self, entry_id: str, reasons: tuple[str, ...]) -> dict[str, Any]:
        return {
            "event_id": dqc_fail_event_id(f"{self.io.key}:{entry_id}"),
            "kind": "FEATURE_DQC_FAIL",
            "symbol": self.series.symbol,
            "ts": entry_id_tuple(entry_id)[0],
            "entry_id": entry_id,
            "stream": self.io.key,
            "reasons": list(reasons),
            "config_rev": self.bundle.rev,
        }

    # -- commit --------------------------------------------------------------------------------

    def commit(self, out: BatchOutputs) -> None:
        """Write a computed batch: store, dead letters, then emits and `feat:last`; safe to call
        again after a failure.

        On a standalone server the emit script is sent and its reply left for `settle`, so that
        Redis runs it while the service computes the next batch; on a cluster it is waited for
        here. Either way the batch counts as written only once the reply is in: its base bars go
        to the lake and its entries are acked later, by `flush`, together with a checkpoint that
        holds their effects. A checkpoint carries the whole engine state (megabytes with 30 days
        of one-minute returns), so it is written at most once per `checkpoint_ms`.
        """
        self.settle()  # the previous batch's emits come first
        if out.signals or out.events:
            started = time.perf_counter()
            self.store.write_batch(out.signals, out.events)
            self.stored(out, started, time.perf_counter())
        self.write_side_outputs(out)
        sent = None
        if out.emits:
            out.emit_started = time.perf_counter()
        if out.emits and sends_ahead(self.io.client):
            keys, args = self.emit_request(out)
            sent = PublishAhead(self.io, keys, args)
        self.hold(out, sent)

    def stored(self, out: BatchOutputs, started: float, done: float) -> None:
        """The batch's signals and events were written to the store between these times."""
        out.persist = (started, done)
        self.observer.stored(done - started)

    def write_side_outputs(self, out: BatchOutputs) -> None:
        """The batch's dead letters, and the FX owner's bars (before a checkpoint can cover
        their entries); idempotent."""
        for entry_id, fields, reasons in out.dead:
            self.io.dead_letter(entry_id, fields, reasons)
        if self.fx_feed is not None:
            self.fx_feed.publish(out.bars)

    def emit_request(self, out: BatchOutputs) -> tuple[list[str], list[Any]]:
        settings = self.settings
        return self.io.emit_request(out.emits, settings.emit_maxlen, out.last, settings.last_ttl_s)

    def hold(self, out: BatchOutputs, sent: SentEmits | None) -> None:
        """The batch is written up to its emits, sent ahead (`sent`) or not sent yet (None:
        published and registered now)."""
        self._unsettled = (out, sent)
        if sent is None:
            self.settle()

    def settle(self) -> None:
        """Finish the last commit: collect its emit script's reply (or run the script now when
        there was none, or when the reply failed: emits that landed are replays it skips), then
        register the batch for the next `flush`. Nothing to do when every commit is settled."""
        if self._unsettled is None:
            return
        out, sent = self._unsettled
        if sent is not None:
            self._unsettled = (out, None)  # a failed reply is not read again: a retry publishes
            self.emitted += sent.result()
        else:
            settings = self.settings
            self.emitted += self.io.publish(
                out.emits, settings.emit_maxlen, out.last, settings.last_ttl_s
            )
        # Registered only once every write has landed, and with no I/O after it, so a retried
        # settle cannot register the same entries twice.
        self._unsettled = None
        if out.registered:  # a retried commit of a batch settled before
            return
        out.registered = True
        self._unacked.extend(out.ack_ids)
        self._unlaked.extend(out.bars)
        if out.last_id is not None:
            self._unsaved_id = out.last_id
        self.observer.settled(out)

    def discard_unsettled(self) -> None:
        """Drop the last commit's unread reply (shutdown, or the stream was taken over): its
        batch is not registered, so its entries are never acked by this consumer."""
        if self._unsettled is not None and self._unsettled[1] is not None:
            self._unsettled[1].discard()
        self._unsettled = None

    def _last_due(self, now: float) -> float:
        """The latest time at or before `now` on this symbol's checkpoint schedule (its phase
        and the interval): a checkpoint made late does not move the next one. Otherwise the
        symbols' phases would be lost after the first round, which finds them all overdue
        once a hundred states are restored, and every symbol would checkpoint in the same
        round from then on: a stall of hundreds of milliseconds every interval."""
        interval = self._checkpoint_s
        if interval <= 0 or now < self._flushed_at:
            return now
        return self._flushed_at + ((now - self._flushed_at) // interval) * interval

    def flush(self, force: bool = False) -> int:
        """Checkpoint (when the state moved) and ack every committed entry, if due or forced.
        Returns the number of entries acked.

        A checkpoint starts by handing its base bars to the lake writer and goes on without
        waiting: its document (the state as of now) and its acks are kept until the lake part
        is durable, and written by a later call (the next batch's, an idle round's, or
        `finish_flushing`); `force` waits. One checkpoint is under way at a time per stream.
        """
        acked = self.finish_flushing(wait=force)
        now = time.monotonic()
        if self._flushing is not None:  # its lake part is still being written
            return acked
        if not force and now - self._flushed_at < self._checkpoint_s:
            return acked
        self.settle()
        if not self._unacked:
            return acked
        document = None
        if self._unsaved_id is not None:
            document = strict_json.encode(self.checkpoint(self._unsaved_id))
        written = None
        if self._unlaked:
            # One lake part per checkpoint rather than per batch; an entry is acked only after
            # its base bars are in the lake, so a crash replays them from the stream.
            written = self.lake_writer.append(self.series.symbol, self._unlaked)
        self._flushing = Flushing(
            written, self._unlaked, document, self._unacked, time.perf_counter()
        )
        self._unacked, self._unlaked, self._unsaved_id = [], [], None
        self._flushed_at = self._last_due(now)
        return acked + self.finish_flushing(wait=force)

    def flush_due(self, now: float) -> bool:
        """Whether `flush(False)` at `now` (`time.monotonic()`) has anything to do: finish a
        checkpoint whose lake part is written, or start one. The idle rounds ask this of every
        owned stream before calling `flush`, which costs a hundred streams far more."""
        flushing = self._flushing
        if flushing is not None:
            return flushing.ready()
        return now - self._flushed_at >= self._checkpoint_s

    @property
    def flush_ready(self) -> bool:
        """Whether a checkpoint under way has its lake part written and can be finished."""
        return self._flushing is not None and self._flushing.ready()

    def finish_flushing(self, wait: bool = False) -> int:
        """Write the checkpoint under way and ack its entries, once its lake part is durable
        (`wait`: wait for it). Idempotent, so a failed call is retried as a whole; an error of
        the lake append is raised here. Returns the number of entries acked."""
        flushing = self._flushing
        if flushing is None or not (wait or flushing.ready()):
            return 0
        if flushing.written is not None:
            flushing.written.result()
        self.io.confirm_outputs()  # replicas hold the outputs before a checkpoint covers them
        checkpoint_bytes = None
        if flushing.document is not None:
            checkpoint_bytes = self.io.save_checkpoint(flushing.document)
        self.io.ack(flushing.ack_ids)
        self._flushing = None
        acked = len(flushing.ack_ids)
        self.observer.flushed(acked, time.perf_counter() - flushing.started, checkpoint_bytes)
        return acked

    def _await_written(self) -> None:
        """Wait until the lake part of a checkpoint under way is durable (raises its error)."""
        if self._flushing is not None and self._flushing.written is not None:
            self._flushing.written.result()

    def _abandon_flushing(self) -> None:
        """Drop a checkpoint under way (the stream was taken over, or its state is rebuilt):
        neither written nor acked. Its lake part may still land: appending bars the lake holds
        is harmless, and it is waited for, so the lake is not read while it is written."""
        flushing, self._flushing = self._flushing, None
        if flushing is not None and flushing.written is not None:
            try:
                flushing.written.result()
            except OSError as exc:
                log.warning("%s: lake part not written (%s)", self.series.symbol, exc)


def commit_round(store: Store, commits: Sequence[tuple[SeriesWorker, BatchOutputs]]) -> None:
    """`SeriesWorker.commit` of several streams' batches of one round (each stream once), with
    the fixed costs paid once: every stream's previous emits settled, then one store
    transaction for all the signals and events, then the dead letters and FX bars, then every
    emit script in one write on one connection (standalone; on a cluster each is run in turn).

    Each batch's writes keep the SPEC order (store, then emits and `feat:last`), and like
    `commit` the whole call is idempotent: after a failure anywhere it is retried as a whole
    (upserts by key, emits and dead letters with explicit IDs, a batch registered once).
    """
    if len(commits) == 1:
        worker, out = commits[0]
        worker.commit(out)
        return
    for worker, _ in commits:
        worker.settle()  # each stream's previous batch's emits come first
    signals = [row for _, out in commits for row in out.signals]
    events = [event for _, out in commits for event in out.events]
    if signals or events:
        started = time.perf_counter()
        store.write_batch(signals, events)
        done = time.perf_counter()
        for worker, out in commits:
            if out.signals or out.events:
                worker.stored(out, started, done)
    for worker, out in commits:
        worker.write_side_outputs(out)
    emitting = [(worker, out) for worker, out in commits if out.emits]
    sent: dict[int, SentEmits] = {}
    ahead = [(worker, out) for worker, out in emitting if sends_ahead(worker.io.client)]
    if ahead:
        emit_started = time.perf_counter()
        requests = [(worker.io, *worker.emit_request(out)) for worker, out in ahead]
        round_sent = PublishRound(requests)
        for index, (_, out) in enumerate(ahead):
            out.emit_started = emit_started
            sent[id(out)] = round_sent.part(index)
    for worker, out in commits:
        if out.emits and id(out) not in sent:
            out.emit_started = time.perf_counter()
        worker.hold(out, sent.get(id(out)))
