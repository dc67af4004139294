"""The service's Prometheus metrics, on a registry of their own (one per `Metrics` object).

Only what the loop *does* is counted here (entries read and acked, snapshots, emits, DQC failures,
dead letters, retries, write and checkpoint times); what the loop *is* (lag, pending, backlog,
leases, health, config) is read from the published status values at scrape time by a collector
(`service.status_metrics`), so the hot path never sets a gauge.

Cost on the hot path: counters are increased once per batch (by the batch's count), not once per
entry, and every labelled child is looked up once per symbol and window (`SeriesMetrics`), never
per event: a cached child costs about a quarter of a `labels(...)` call.

Names follow the Prometheus conventions (base units, `_total` counters); labels carry only
bounded values: symbols, windows, DQC reason codes, dependencies, task states, never an ID.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

# 10 µs to 1 s, three buckets per decade: resolves the compute latency target (p95 <= 1 ms) and
# a stall of a second alike.
LATENCY_BUCKETS: Final = (
    1e-5,
    2e-5,
    5e-5,
    1e-4,
    2e-4,
    5e-4,
    1e-3,
    2e-3,
    5e-3,
    1e-2,
    2e-2,
    5e-2,
    0.1,
    0.2,
    0.5,
    1.0,
)
# Store writes and checkpoints take milliseconds to seconds (a checkpoint is megabytes).
WRITE_BUCKETS: Final = (1e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
DEPENDENCIES: Final = ("redis", "store", "config")


_COUNTS = re.compile(r"\d+")


def reason_code(reason: str) -> str:
    """The reason as a label value: its counts replaced by `n` (`jump:3_flagged_events` ->
    `jump:n_flagged_events`), so that a label takes one value per kind of reason, not per count."""
    return _COUNTS.sub("n", reason)


def _count(children: dict[str, Counter], family: Counter, reason: str) -> None:
    """One more of `reason`, through a child cached by the raw reason (no regex per count)."""
    child = children.get(reason)
    if child is None:
        child = children[reason] = family.labels(reason_code(reason))
    child.inc()


class Metrics:
    """Every metric the service updates itself, registered on `registry` (a new one by default,
    so that two services, or two tests, never share counters)."""

    def __init__(self, version: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # What the default registry would give: process CPU, memory, file descriptors, GC.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        Gauge("s2_build_info", "Build information (always 1)", ["version"], registry=r).labels(
            version
        ).set(1)
        self.compute_latency = Histogram(
            "s2_compute_latency_seconds",
            "Time from the read that delivered a snapshot's finalising entry to the snapshot "
            "computed",
            ["window"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.end_to_end_latency = Histogram(
            "s2_end_to_end_latency_seconds",
            "Time from the read that delivered a snapshot's finalising entry to its emit "
            "confirmed by Redis",
            ["window"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.entries_read = Counter(
            "s2_entries_read_total", "Stream entries read", ["symbol"], registry=r
        )
        self.entries_acked = Counter(
            "s2_entries_acked_total", "Stream entries acked", ["symbol"], registry=r
        )
        self.snapshots = Counter(
            "s2_snapshots_total", "Snapshots computed", ["symbol", "window"], registry=r
        )
        self.emits = Counter(
            "s2_emits_total",
            "Snapshots emitted to feat:events (replays of a retried batch included)",
            ["symbol", "window"],
            registry=r,
        )
        self.dqc_failures = Counter(
            "s2_dqc_failures_total",
            "Snapshots failing DQC, one count per reason",
            ["reason"],
            registry=r,
        )
        self.fx_late = Counter(
            "s2_fx_late_total",
            "Snapshots made without the FX w-bar closing at their t0 (rho_* null, fx_late)",
            ["symbol", "window"],
            registry=r,
        )
        self.dqc_failed_snapshots = Counter(
            "s2_dqc_failed_snapshots_total",
            "Snapshots failing DQC (one count per snapshot, whatever its number of reasons)",
            ["symbol", "window"],
            registry=r,
        )
        self.entries_rejected = Counter(
            "s2_entries_rejected_total",
            "Stream entries dropped by the event checks, one count per reason",
            ["reason"],
            registry=r,
        )
        self.dead_letters = Counter(
            "s2_dead_letters_total",
            "Entries written to the dead-letter stream, by first reason",
            ["reason"],
            registry=r,
        )
        self.retries = Counter(
            "s2_retries_total",
            "Operations retried after a transient failure",
            ["dependency"],
            registry=r,
        )
        self.store_write = Histogram(
            "s2_store_write_seconds",
            "Store write of one batch (signals and strategy events)",
            buckets=WRITE_BUCKETS,
            registry=r,
        )
        self.checkpoint = Histogram(
            "s2_checkpoint_seconds",
            "Checkpoint of one stream: lake append, replica wait, state write and ack",
            buckets=WRITE_BUCKETS,
            registry=r,
        )
        self.checkpoint_bytes = Gauge(
            "s2_checkpoint_bytes", "Size of the stream's last checkpoint", ["symbol"], registry=r
        )
        self.recompute_signals = Counter(
            "s2_recompute_signals_total", "Signals written by recompute tasks", registry=r
        )
        self.recompute_task_failures = Counter(
            "s2_recompute_task_failures_total", "Recompute tasks that ended failed", registry=r
        )
        self._retries = {d: self.retries.labels(d) for d in DEPENDENCIES}
        for dependency in DEPENDENCIES:
            self._retries[dependency].inc(0)  # exported from the start: rate() needs a zero

    def series(self, symbol: str, windows: Iterable[str]) -> SeriesMetrics:
        """The children of one stream, looked up once."""
        return SeriesMetrics(self, symbol, tuple(windows))

    def retried(self, dependency: str) -> None:
        child = self._retries.get(dependency)
        (child or self.retries.labels(dependency)).inc()


class SeriesMetrics:
    """The labelled children of one stream (symbol) and its windows, cached: the hot path only
    calls `inc`/`observe` on them."""

    def __init__(self, metrics: Metrics, symbol: str, windows: tuple[str, ...]) -> None:
        self.metrics = metrics
        self.read = metrics.entries_read.labels(symbol)
        self.acked = metrics.entries_acked.labels(symbol)
        self.checkpoint_bytes = metrics.checkpoint_bytes.labels(symbol)
        self.store_write = metrics.store_write
        self.checkpoint = metrics.checkpoint
        self.snapshots = {w: metrics.snapshots.labels(symbol, w) for w in windows}
        self.dqc_failed_snapshots = {
            w: metrics.dqc_failed_snapshots.labels(symbol, w) for w in windows
        }
        self.emits = {w: metrics.emits.labels(symbol, w) for w in windows}
        self.fx_late = {w: metrics.fx_late.labels(symbol, w) for w in windows}
        self.compute_latency = {w: metrics.compute_latency.labels(w) for w in windows}
        self.end_to_end = {w: metrics.end_to_end_latency.labels(w) for w in windows}
        self._dqc: dict[str, Counter] = {}
        self._rejected: dict[str, Counter] = {}
        self._dead: dict[str, Counter] = {}

    def dqc_failed(self, reason: str) -> None:
        _count(self._dqc, self.metrics.dqc_failures, reason)

    def rejected(self, reason: str) -> None:
        _count(self._rejected, self.metrics.entries_rejected, reason)

    def dead_lettered(self, reason: str) -> None:
        _count(self._dead, self.metrics.dead_letters, reason)
