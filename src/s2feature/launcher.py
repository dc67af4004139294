"""`s2-feature run` put together: the process around the service loop.

Order at start: JSON logging; stop on SIGTERM/SIGINT; the HTTP server (`/health` answers from
the first moment, DOWN with its reason until the loop runs; the recompute routes with their task
registry, which opens its own store connection and resumes the stored tasks on its thread); the
config watcher; the store (retried with backoff while it cannot be reached: a pod must not
crash-loop while its database starts); an approved config bundle (the loop does not consume on an
unapproved one: it waits, with `/health` saying why); then the loop, which keeps the main thread,
and, once it has started, the scheduler of the hourly gap fill. Whatever way the loop ends, its
leases are released, and the scheduler, the watcher, the HTTP server (and with it the recompute
tasks) and the stores are closed.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial

from s2feature import __version__
from s2feature.api import ApiServer, ApiServerError, create_app
from s2feature.api.metrics import TaskCollector, counted_runner
from s2feature.config.bundle import ConfigBundle
from s2feature.domain import DAY_MS, interval_ms
from s2feature.jobs.gap_fill import JOB_NAME as GAP_FILL
from s2feature.jobs.gap_fill import GapFill
from s2feature.jobs.regime import JOB_NAME as REGIME
from s2feature.jobs.regime import RegimeJob
from s2feature.jobs.schedule import HOUR_MS, MINUTE_MS, Every, RedisRunLock, Scheduler
from s2feature.jobs.task_process import ProcessRecomputeRunner
from s2feature.jobs.task_runner import SharedStore
from s2feature.jobs.tasks import TaskRegistry
from s2feature.lake.parquet import BarLake
from s2feature.logs import configure_json_logging
from s2feature.observability.metrics import Metrics
from s2feature.observability.tracing import SignalTracer, otlp_tracer_provider
from s2feature.service.config_watch import ActiveBundle, ConfigWatcher
from s2feature.service.health import HealthLimits
from s2feature.service.process import quiet_garbage_collector, stop_on_signals
from s2feature.service.retry import Abandoned, Backoff
from s2feature.service.runner import Service
from s2feature.service.settings import Settings, SettingsError
from s2feature.service.status import LoopStatus, Published
from s2feature.service.status_metrics import StatusCollector
from s2feature.store.base import Store
from s2feature.store.factory import open_store
from s2feature.streams.client import connect

log = logging.getLogger("s2feature.service")


class BundleGuard:
    """The extra check of every bundle before it can become active: the running service cannot
    change its base interval (bars, lake and checkpoints are of one geometry), and every
    configured window must be a multiple of it."""

    def __init__(self, windows: tuple[str, ...]) -> None:
        self.windows = windows
        self.base_interval: str | None = None  # fixed by the first approved bundle

    def __call__(self, bundle: ConfigBundle) -> None:
        if self.base_interval is not None and bundle.base_interval != self.base_interval:
            raise ValueError(
                f"base_interval {bundle.base_interval} differs from the running service's "
                f"{self.base_interval}; a base interval changes only with a restart"
            )
        bad = [w for w in self.windows if interval_ms(w) % bundle.base_ms]
        if bad:
            raise ValueError(f"S2_WINDOWS {bad} are not multiples of base_interval")
        self.base_interval = bundle.base_interval


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
            "config_source": settings.config.source,
            "windows": list(settings.windows),
        },
    )
    loop_status: Published[LoopStatus] = Published(LoopStatus(waiting_for="start"))
    watcher = ConfigWatcher(
        settings.config, connect(settings.redis), validate=BundleGuard(settings.windows)
    )
    limits = HealthLimits(lag_degraded_ms=settings.api.lag_degraded_ms)
    metrics = Metrics(__version__)
    metrics.registry.register(StatusCollector(loop_status, watcher.status, limits))
    tracer = signal_tracer(settings)
    lake = BarLake(settings.lake_dir)
    job_store = SharedStore(partial(open_store, settings.store))
    tasks = _task_registry(settings, job_store, lake, watcher.active, metrics)
    metrics.registry.register(TaskCollector(tasks))
    token = settings.api.token.get_secret_value() if settings.api.token else None
    app = create_app(
        loop_status,
        watcher.status,
        limits,
        api_token=token,
        tasks=tasks,
        known_symbols=lambda: set(lake.symbols()),
        metrics_registry=metrics.registry,
    )
    api = ApiServer(app, settings.api.host, settings.api.port)
    scheduler = _scheduler(
        settings, tasks, lake, loop_status, partial(_approved_bundle, watcher.active)
    )
    try:
        api.start()
    except ApiServerError as exc:
        raise SettingsError(
            f"S2_API_HOST/S2_API_PORT: cannot serve on {settings.api.host}:"
            f"{settings.api.port}: {exc}"
        ) from None
    try:
        watcher.start()
        with _store(settings, stop, loop_status) as store:
            if store is None or not _approved_config(watcher, stop, loop_status):
                log.info("stopped before consuming", extra={"event": "stopped"})
                return 0
            service = Service(
                settings,
                connect(settings.redis),
                store,
                BarLake(settings.lake_dir),
                stop=stop,
                status=loop_status,
                bundles=partial(_active_bundle, watcher.active),
                metrics=metrics,
                tracer=tracer,
            )

            def started() -> None:
                quiet_garbage_collector()
                scheduler.start()

            return service.run(idle_exit_s=idle_exit_s, on_started=started)
    finally:
        scheduler.stop()
        watcher.stop()
        api.stop()  # its shutdown closes the task registry (the running task stops)
        job_store.close()
        if tracer is not None:
            tracer.shutdown()  # exports the spans still queued


def signal_tracer(settings: Settings) -> SignalTracer | None:
    """Traces of `S2_TRACE_SAMPLE` of the signals, exported over OTLP/HTTP to
    `OTEL_EXPORTER_OTLP_ENDPOINT`; None (no tracing, no cost) without an endpoint or at 0."""
    if not settings.otlp_endpoint or settings.trace_sample <= 0.0:
        return None
    provider = otlp_tracer_provider(settings.otlp_endpoint, settings.trace_sample, __version__)
    log.info(
        "traces of %.4g of the signals exported over OTLP/HTTP",
        settings.trace_sample,
        extra={"event": "tracing", "sample": settings.trace_sample},
    )
    return SignalTracer(provider, settings.trace_sample)


def _task_registry(
    settings: Settings,
    job_store: SharedStore,
    lake: BarLake,
    active: Published[ActiveBundle | None],
    metrics: Metrics,
) -> TaskRegistry:
    """The recompute tasks: each run in a child process (off the consumer loop's interpreter,
    at a lower CPU priority) from the lake into the store under the active bundle; their records
    kept by the registry under this consumer's name so that its restart resumes them; counted in
    the metrics."""

    bundle = partial(_approved_bundle, active)
    series = {s.symbol: s for s in settings.series}
    job = ProcessRecomputeRunner(
        settings.store, lake.root, bundle, series, log_level=settings.log_level
    )
    runner = counted_runner(job, metrics)
    return TaskRegistry(
        runner,
        task_store=job_store,
        owner=settings.consumer,
        retention_ms=settings.task_retention_ms,
    )


def _scheduler(
    settings: Settings,
    tasks: TaskRegistry,
    lake: BarLake,
    loop_status: Published[LoopStatus],
    bundle: Callable[[], ConfigBundle | None],
) -> Scheduler:
    """The scheduled jobs: the daily regime (00:05 UTC, once across instances) and the hourly
    gap fill of the symbols whose streams this instance consumes (`S2_RECOMPUTE_LOOKBACK`; 0
    turns it off)."""
    client = connect(settings.redis)
    scheduler = Scheduler(RedisRunLock(client, owner=settings.consumer))
    scheduler.register(REGIME, Every(DAY_MS, 5 * MINUTE_MS), RegimeJob(bundle, lake, client))
    if settings.recompute_lookback_ms > 0:

        def owned() -> list[str]:
            streams = loop_status.get().streams
            return [
                s.symbol for s in settings.series if s.symbol in streams and streams[s.symbol].owned
            ]

        fill = GapFill(tasks, owned, lake, settings.windows, settings.recompute_lookback_ms)
        scheduler.register(GAP_FILL, Every(HOUR_MS), fill, once=False)
    return scheduler


def _approved_bundle(active: Published[ActiveBundle | None]) -> ConfigBundle | None:
    """The active bundle, None before the first one is approved."""
    value = active.get()
    return None if value is None else value.bundle


def _active_bundle(active: Published[ActiveBundle | None]) -> ConfigBundle:
    value = active.get()
    assert value is not None  # the loop starts only once a bundle is approved
    return value.bundle


@contextlib.contextmanager
def _store(
    settings: Settings, stop: threading.Event, status: Published[LoopStatus]
) -> Iterator[Store | None]:
    """The store, opened with backoff while it cannot be reached (None: stopped meanwhile)."""

    def waiting() -> None:
        failing = backoff.status_of("store")
        status.set(LoopStatus(updated_at=time.time(), store=failing, waiting_for="store"))

    backoff = Backoff(stop, cap_s=10.0, on_retry=waiting)
    status.set(LoopStatus(updated_at=time.time(), waiting_for="store"))
    try:
        store = backoff.call("open store", partial(open_store, settings.store))
    except Abandoned:
        yield None
        return
    try:
        yield store
    finally:
        store.close()


def _approved_config(
    watcher: ConfigWatcher, stop: threading.Event, status: Published[LoopStatus]
) -> bool:
    """Wait until the watcher approved a bundle (False: stopped first)."""
    while not stop.is_set():
        status.set(LoopStatus(updated_at=time.time(), waiting_for="config"))
        if watcher.wait_ready(timeout=1.0) is not None:
            return True
    return False
