"""The FastAPI app factory.

The handlers read the published status values only; they never call Redis, the store or the
consumer loop, so a stuck dependency cannot stall a probe, and a probe costs the loop nothing but
the GIL time of building the body.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Response
from fastapi.concurrency import run_in_threadpool
from limits import RateLimitItem
from prometheus_client import CollectorRegistry

import s2feature
from s2feature.api.errors import install_error_handlers
from s2feature.api.metrics import metrics_router
from s2feature.api.rate_limit import RECOMPUTE_RATE
from s2feature.api.recompute import KnownSymbols, recompute_router
from s2feature.api.schemas import (
    Checks,
    ConfigCheck,
    DependencyCheck,
    HealthBody,
    LiveBody,
    LoopCheck,
    ReadyBody,
    StreamCheck,
)
from s2feature.jobs.tasks import TaskRegistry
from s2feature.service.health import (
    Finding,
    Health,
    HealthLimits,
    assess,
    failing_for_s,
)
from s2feature.service.status import (
    ConfigStatus,
    DependencyStatus,
    LoopStatus,
    Published,
    StreamStatus,
)

log = logging.getLogger(__name__)

_UNAVAILABLE = 503


def _dependency_check(dep: DependencyStatus, finding: Finding, now: float) -> DependencyCheck:
    return DependencyCheck(
        status=finding.state,
        failing_for_s=failing_for_s(dep, now),
        last_error=dep.last_error,
        where=dep.where,
    )


def _config_check(config: ConfigStatus, finding: Finding, now: float) -> ConfigCheck:
    age = None if config.fetched_at is None else max(0.0, now - config.fetched_at)
    return ConfigCheck(
        status=finding.state,
        rev=config.rev,
        source=config.source,
        age_s=age,
        stale=config.stale,
        rejected=config.rejected,
        last_error=config.last_error,
    )


def _loop_check(loop: LoopStatus, finding: Finding, now: float) -> LoopCheck:
    return LoopCheck(
        status=finding.state,
        started=loop.started,
        batches=loop.batches,
        silent_s=None if loop.updated_at <= 0.0 else max(0.0, now - loop.updated_at),
        waiting_for=loop.waiting_for,
    )


def _stream_check(stream: StreamStatus, finding: Finding) -> StreamCheck:
    return StreamCheck(
        status=finding.state,
        lag_ms=stream.lag_ms,
        backlog=stream.backlog,
        pending=stream.pending,
        owner=stream.owner,
        owned=stream.owned,
        read_error=None if stream.reads.ok else stream.reads.last_error,
    )


def health_body(loop: LoopStatus, config: ConfigStatus, health: Health, now: float) -> HealthBody:
    """The `/health` body for one verdict on these status values."""
    checks = Checks(
        loop=_loop_check(loop, health.loop, now),
        store=_dependency_check(loop.store, health.store, now),
        redis=_dependency_check(loop.redis, health.redis, now),
        config=_config_check(config, health.config, now),
        streams={
            symbol: _stream_check(stream, health.streams[symbol])
            for symbol, stream in loop.streams.items()
        },
    )
    return HealthBody(
        status=health.status,
        reasons=list(health.reasons),
        checks=checks,
        version=s2feature.__version__,
    )


_HEALTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "OK or DEGRADED"},
    _UNAVAILABLE: {"model": HealthBody, "description": "DOWN: see `reasons`"},
}
_READY_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "ready: the loop is consuming and the status is not DOWN"},
    _UNAVAILABLE: {"model": ReadyBody, "description": "not ready: see `reasons`"},
}


def create_app(
    loop_status: Published[LoopStatus],
    config_status: Published[ConfigStatus],
    limits: HealthLimits | None = None,
    clock: Callable[[], float] = time.time,
    *,
    api_token: str | None = None,
    tasks: TaskRegistry | None = None,
    known_symbols: KnownSymbols = set,
    recompute_rate: RateLimitItem = RECOMPUTE_RATE,
    metrics_registry: CollectorRegistry | None = None,
) -> FastAPI:
    """The HTTP app, reading `loop_status` and `config_status` on every request.

    `limits` are the verdict's thresholds (`S2_LAG_DEGRADED_MS` maps to `lag_degraded_ms`);
    `clock` gives wall-clock epoch seconds, the clock the status values are stamped with.

    The `/features/*` routes need the bearer `api_token` (`S2_API_TOKEN`; None or empty: they
    answer 503). `tasks` runs the recompute tasks (None: 503); the app starts its worker on
    startup and closes it on shutdown. `known_symbols` lists the lake's symbols, the only ones a
    recompute may name. `recompute_rate` limits `POST /features/recompute` per instance.
    `metrics_registry` is served at `GET /metrics` (None: no such route).
    """
    limits = limits or HealthLimits()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if tasks is not None:
            tasks.start()
        log.info("api started", extra={"event": "api_started"})
        yield
        if tasks is not None:
            # Joining the worker blocks: not on the event loop.
            await run_in_threadpool(tasks.close)
        log.info("api stopped", extra={"event": "api_stopped"})

    app = FastAPI(
        title="s2feature",
        version=s2feature.__version__,
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(recompute_router(tasks, known_symbols, api_token, recompute_rate))
    if metrics_registry is not None:
        app.include_router(metrics_router(metrics_registry))

    def judge() -> tuple[LoopStatus, ConfigStatus, Health, float]:
        # One read of each published value: the body describes exactly what was judged.
        loop, config, now = loop_status.get(), config_status.get(), clock()
        return loop, config, assess(loop, config, now, limits), now

    @app.get("/health", responses=_HEALTH_RESPONSES, tags=["health"])
    async def get_health(response: Response) -> HealthBody:
        """Overall status with each dependency: 200 for OK and DEGRADED, 503 for DOWN."""
        loop, config, verdict, now = judge()
        if verdict.status == "DOWN":
            response.status_code = _UNAVAILABLE
        return health_body(loop, config, verdict, now)

    @app.get("/health/live", tags=["health"])
    async def get_live() -> LiveBody:
        """200 while the process serves HTTP; checks no dependency."""
        return LiveBody(status="alive")

    @app.get("/health/ready", responses=_READY_RESPONSES, tags=["health"])
    async def get_ready(response: Response) -> ReadyBody:
        """200 once the loop consumes and the status is not DOWN, else 503."""
        verdict = judge()[2]
        if not verdict.ready:
            response.status_code = _UNAVAILABLE
        return ReadyBody(ready=verdict.ready, status=verdict.status, reasons=list(verdict.reasons))

    return app
