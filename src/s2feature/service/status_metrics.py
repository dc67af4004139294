"""The published status values as metrics, computed when Prometheus scrapes.

Lag, pending, backlog, leases, dependency state, health and the active config are state, not
events: the loop and the config watcher already publish them (`status.Published`), so a scrape
reads the latest values and turns them into gauges. The hot path sets no gauge, and a scrape
costs the loop nothing but the GIL time of building the text.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from s2feature.service.health import HealthLimits, assess
from s2feature.service.status import ConfigStatus, LoopStatus, Published

HEALTH_VALUES = {"OK": 0, "DEGRADED": 1, "DOWN": 2}


def config_degraded(config: ConfigStatus) -> bool:
    """Served from the disk cache, or the configured source stopped answering (stale)."""
    return config.source == "cache" or config.stale


class StatusCollector(Collector):
    """`s2_stream_*`, `s2_lease_owned`, `s2_dependency_failing`, `s2_health_status` and
    `s2_config_*` from the loop's and the config watcher's published status values."""

    def __init__(
        self,
        loop: Published[LoopStatus],
        config: Published[ConfigStatus],
        limits: HealthLimits | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.loop = loop
        self.config = config
        self.limits = limits or HealthLimits()
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        loop, config, now = self.loop.get(), self.config.get(), self.clock()
        yield from self._streams(loop, now)
        failing = GaugeMetricFamily(
            "s2_dependency_failing",
            "1 while the dependency fails (the loop retries it with backoff), else 0",
            labels=["dependency"],
        )
        failing.add_metric(["redis"], 0.0 if loop.redis.ok else 1.0)
        failing.add_metric(["store"], 0.0 if loop.store.ok else 1.0)
        failing.add_metric(["config"], 1.0 if config_degraded(config) else 0.0)
        yield failing
        verdict = assess(loop, config, now, self.limits)
        yield GaugeMetricFamily(
            "s2_health_status",
            "The /health verdict: 0 OK, 1 DEGRADED, 2 DOWN",
            value=HEALTH_VALUES[verdict.status],
        )
        yield from self._config(config)

    def _streams(self, loop: LoopStatus, now: float) -> Iterator[Metric]:
        lag = GaugeMetricFamily(
            "s2_stream_lag_seconds",
            "Now minus the event time of the last event applied (streams this instance owns)",
            labels=["symbol"],
        )
        pending = GaugeMetricFamily(
            "s2_stream_pending_entries",
            "Entries delivered to the consumer group and not yet acked",
            labels=["symbol"],
        )
        backlog = GaugeMetricFamily(
            "s2_stream_backlog_entries",
            "Entries not yet read by the consumer group, plus the pending ones",
            labels=["symbol"],
        )
        owned = GaugeMetricFamily(
            "s2_lease_owned", "1 while this instance holds the stream's lease", labels=["symbol"]
        )
        for symbol, stream in loop.streams.items():
            owned.add_metric([symbol], 1.0 if stream.owned else 0.0)
            if stream.owned and stream.last_event_ms is not None:
                lag.add_metric([symbol], max(0.0, now - stream.last_event_ms / 1000))
            if stream.pending is not None:
                pending.add_metric([symbol], float(stream.pending))
            if stream.backlog is not None:
                backlog.add_metric([symbol], float(stream.backlog))
        yield from (lag, pending, backlog, owned)

    def _config(self, config: ConfigStatus) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "s2_config_info", "The active config bundle (always 1)", labels=["rev", "source"]
        )
        if config.rev is not None:
            info.add_metric([config.rev, config.source or ""], 1.0)
        yield info
        if config.fetched_at is not None:
            yield GaugeMetricFamily(
                "s2_config_applied_timestamp_seconds",
                "When the active bundle was obtained (epoch seconds)",
                value=config.fetched_at,
            )
        yield GaugeMetricFamily(
            "s2_config_degraded",
            "1 while the config is served from the disk cache or its source is stale",
            value=1.0 if config_degraded(config) else 0.0,
        )
        yield CounterMetricFamily(
            "s2_config_rejected", "Config bundles refused since start", value=config.rejected
        )
