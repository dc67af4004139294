"""What one stream's batches tell the operator: metrics, per-snapshot log lines and traces.

`SeriesWorker` calls `computed` once a batch is computed and `settled` once its emits are
confirmed; both work on the whole batch, so the metrics are updated once per batch and window
(not per entry), and nothing is built for a disabled output:

- metrics: only with a `SeriesMetrics` (the service's `/metrics`);
- per-snapshot log lines (`compute_ok`, `dqc_fail`, `emit_ok`, `emit_skip`): at DEBUG only, and
  only built when the logger is enabled for DEBUG (`S2_LOG_LEVEL=DEBUG`); at INFO the log holds
  the lifecycle only, readable at any input rate;
- traces: only with a `SignalTracer`, and only for the signals it samples.

Dead letters are always logged (WARNING, one line per entry): they are rare and each one needs a
look.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from s2feature.domain import Snapshot
from s2feature.dqc.verdict import FX_LATE, routing
from s2feature.observability.metrics import SeriesMetrics
from s2feature.observability.tracing import BatchTimes, SignalTracer, TracedSignal

if TYPE_CHECKING:
    from s2feature.service.worker import BatchOutputs

log = logging.getLogger("s2feature.service")
snapshot_log = logging.getLogger("s2feature.snapshots")


def trace_hex(trace_id: int) -> str:
    return f"{trace_id:032x}"


class BatchObserver:
    """Metrics, logs and traces of one stream's batches (any of them may be off)."""

    def __init__(
        self,
        symbol: str,
        metrics: SeriesMetrics | None = None,
        tracer: SignalTracer | None = None,
    ) -> None:
        self.symbol = symbol
        self.metrics = metrics
        self.tracer = tracer

    def timed(self) -> bool:
        """Whether the batch's compute must be stamped per base bar (someone will read it)."""
        return (
            self.metrics is not None
            or self.tracer is not None
            or snapshot_log.isEnabledFor(logging.DEBUG)
        )

    def computed(self, out: BatchOutputs, realtime: bool, persist_all: bool) -> None:
        """A batch was computed (once per batch: a retried commit does not come here again)."""
        if out.dead:
            self._dead_letters(out)
        metrics, tracer = self.metrics, self.tracer
        if metrics is not None:
            self._count_computed(metrics, out)
        if tracer is not None:
            for started, done, snapshots in out.produced:
                for snap in snapshots:
                    trace_id = tracer.pick()
                    if trace_id is not None:
                        out.traced[snap.signal_id] = _traced(
                            trace_id, snap, (started, done), realtime, persist_all
                        )
        if snapshot_log.isEnabledFor(logging.DEBUG):
            for _, _, snapshots in out.produced:
                for snap in snapshots:
                    self._log_snapshot(out, snap)

    def settled(self, out: BatchOutputs) -> None:
        """The batch's writes and emits are confirmed."""
        metrics, now = self.metrics, time.perf_counter()
        if metrics is not None and out.emits:
            latency = now - out.read_at
            counts: dict[str, int] = {}
            for _, window, _ in out.emits:
                counts[window] = counts.get(window, 0) + 1
            for window, count in counts.items():
                metrics.emits[window].inc(count)
                observe = metrics.end_to_end[window].observe
                for _ in range(count):
                    observe(latency)
        if self.tracer is not None and out.traced:
            emit = None if out.emit_started is None else (out.emit_started, now)
            times = BatchTimes((out.read_started, out.read_at), out.persist, emit)
            self.tracer.record(list(out.traced.values()), times)
        if snapshot_log.isEnabledFor(logging.DEBUG):
            emitted = {(t0, window) for t0, window, _ in out.emits}
            for _, _, snapshots in out.produced:
                for snap in snapshots:
                    self._log_emit(out, snap, (snap.t0, snap.window) in emitted)

    def flushed(self, acked: int, seconds: float, checkpoint_bytes: int | None) -> None:
        """A checkpoint was written (when the state moved) and `acked` entries acked."""
        metrics = self.metrics
        if metrics is not None:
            metrics.acked.inc(acked)
            metrics.checkpoint.observe(seconds)
            if checkpoint_bytes is not None:
                metrics.checkpoint_bytes.set(checkpoint_bytes)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%s: checkpoint, %d entries acked",
                self.symbol,
                acked,
                extra={
                    "event": "checkpoint",
                    "symbol": self.symbol,
                    "acked": acked,
                    "bytes": checkpoint_bytes,
                    "seconds": round(seconds, 6),
                },
            )

    def stored(self, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.store_write.observe(seconds)

    # -- details --------------------------------------------------------------------------------

    def _count_computed(self, metrics: SeriesMetrics, out: BatchOutputs) -> None:
        metrics.read.inc(len(out.ack_ids))
        read_at = out.read_at
        counts: dict[str, int] = {}
        failed: dict[str, int] = {}
        latency = metrics.compute_latency
        for _, done, snapshots in out.produced:
            for snap in snapshots:
                window = snap.window
                counts[window] = counts.get(window, 0) + 1
                if not snap.dqc.passed:
                    failed[window] = failed.get(window, 0) + 1
                if snap.dqc.reasons and FX_LATE in snap.dqc.reasons:
                    metrics.fx_late[window].inc()
                latency[window].observe(done - read_at)
        for window, count in counts.items():
            metrics.snapshots[window].inc(count)
        for window, count in failed.items():
            metrics.dqc_failed_snapshots[window].inc(count)
        for event in out.events:  # DQC failures of snapshots and rejected entries
            if "signal_id" in event:
                for reason in event["reasons"]:
                    metrics.dqc_failed(reason)
            else:
                for reason in event["reasons"]:
                    metrics.rejected(reason)

    def _dead_letters(self, out: BatchOutputs) -> None:
        for entry_id, _, reasons in out.dead:
            if self.metrics is not None:
                self.metrics.dead_lettered(reasons[0] if reasons else "unknown")
            log.warning(
                "%s: entry %s dead-lettered (%s)",
                self.symbol,
                entry_id,
                ", ".join(reasons),
                extra={
                    "event": "dead_letter",
                    "symbol": self.symbol,
                    "entry_id": entry_id,
                    "reasons": list(reasons),
                },
            )

    def _fields(self, out: BatchOutputs, snap: Snapshot) -> dict[str, object]:
        fields: dict[str, object] = {
            "signal_id": snap.signal_id,
            "rev": snap.config_rev,
            "symbol": snap.series.symbol,
            "window": snap.window,
            "t0": snap.t0,
            "reasons": list(snap.dqc.reasons),
        }
        traced = out.traced.get(snap.signal_id)
        if traced is not None:
            fields["trace_id"] = trace_hex(traced.trace_id)
        return fields

    def _log_snapshot(self, out: BatchOutputs, snap: Snapshot) -> None:
        event = "compute_ok" if snap.dqc.passed else "dqc_fail"
        snapshot_log.debug(event, extra={"event": event, **self._fields(out, snap)})

    def _log_emit(self, out: BatchOutputs, snap: Snapshot, emitted: bool) -> None:
        event = "emit_ok" if emitted else "emit_skip"
        snapshot_log.debug(event, extra={"event": event, **self._fields(out, snap)})


def _traced(
    trace_id: int,
    snap: Snapshot,
    compute: tuple[float, float],
    realtime: bool,
    persist_all: bool,
) -> TracedSignal:
    stored, emitted = routing(snap, realtime, persist_all)
    return TracedSignal(
        trace_id=trace_id,
        signal_id=snap.signal_id,
        symbol=snap.series.symbol,
        window=snap.window,
        t0=snap.t0,
        rev=snap.config_rev,
        dqc="pass" if snap.dqc.passed else "fail",
        reasons=tuple(snap.dqc.reasons),
        compute=compute,
        stored=stored,
        emitted=emitted,
    )
