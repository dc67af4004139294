"""`/health`, `/health/live` and `/health/ready` served by a real uvicorn server on loopback.

The status values are published the way the loop and the config watcher publish them; each test
sets them and reads the answer over HTTP.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

import s2feature
from s2feature.api import ApiServer, ApiServerError, create_app
from s2feature.service.health import HealthLimits
from s2feature.service.status import (
    ConfigStatus,
    DependencyStatus,
    LoopStatus,
    Published,
    StreamStatus,
)

LIMITS = HealthLimits(down_after_s=5.0, lag_degraded_ms=60_000, stuck_after_s=30.0)
NOW = 1_800_000_000.0  # the app's clock in the shared server: ages and durations are exact


@dataclass
class Served:
    loop: Published[LoopStatus]
    config: Published[ConfigStatus]
    http: httpx.Client

    def publish(self, loop: LoopStatus, config: ConfigStatus) -> None:
        self.loop.set(loop)
        self.config.set(config)


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    loop: Published[LoopStatus] = Published(LoopStatus())
    config: Published[ConfigStatus] = Published(ConfigStatus())
    server = ApiServer(create_app(loop, config, LIMITS, clock=lambda: NOW), "127.0.0.1", 0)
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=10.0) as http:
            yield Served(loop, config, http)
    finally:
        server.stop()


def healthy_loop(**streams: StreamStatus) -> LoopStatus:
    default = {"BTCUSDT": StreamStatus(owner="c1", owned=True, lag_ms=120, backlog=3, pending=1)}
    return LoopStatus(started=True, updated_at=NOW, batches=5, streams=streams or default)


def approved(**changes: Any) -> ConfigStatus:
    fields: dict[str, Any] = {"rev": "r7", "source": "url", "fetched_at": NOW - 60}
    return ConfigStatus(**(fields | changes))


def failing(for_s: float, error: str, where: str | None = None) -> DependencyStatus:
    return DependencyStatus(ok=False, failing_since=NOW - for_s, last_error=error, where=where)


def test_everything_fine_is_ok_200_with_every_check(served: Served) -> None:
    served.publish(healthy_loop(), approved())
    response = served.http.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["reasons"], body["version"]) == ("OK", [], s2feature.__version__)
    checks = body["checks"]
    assert checks["loop"] == {
        "status": "OK",
        "started": True,
        "batches": 5,
        "silent_s": 0.0,
        "waiting_for": None,
    }
    assert checks["redis"] == {
        "status": "OK",
        "failing_for_s": None,
        "last_error": None,
        "where": None,
    }
    assert checks["store"]["status"] == "OK"
    assert checks["config"]["rev"] == "r7"
    assert checks["config"]["source"] == "url"
    assert checks["config"]["age_s"] == 60.0  # now minus fetched_at
    assert checks["streams"] == {
        "BTCUSDT": {
            "status": "OK",
            "lag_ms": 120,
            "backlog": 3,
            "pending": 1,
            "owner": "c1",
            "owned": True,
            "read_error": None,
        }
    }


def test_config_from_the_cache_is_degraded_200(served: Served) -> None:
    served.publish(healthy_loop(), approved(source="cache", last_error="connection refused"))
    response = served.http.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "DEGRADED"
    assert body["checks"]["config"]["status"] == "DEGRADED"
    assert body["checks"]["config"]["source"] == "cache"
    assert body["checks"]["config"]["age_s"] == 60.0
    assert body["reasons"] == ["config rev r7 from the disk cache, 60 s old"]


def test_no_approved_config_is_down_503(served: Served) -> None:
    waiting = replace_loop(started=False, waiting_for="an approved config")
    served.publish(waiting, ConfigStatus(last_error="GET /active: connection refused"))
    response = served.http.get("/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "DOWN"
    assert body["checks"]["config"] == {
        "status": "DOWN",
        "rev": None,
        "source": None,
        "age_s": None,
        "stale": False,
        "rejected": 0,
        "last_error": "GET /active: connection refused",
    }
    assert body["reasons"][0] == "no approved config: GET /active: connection refused"


def test_redis_failing_longer_than_the_limit_is_down_503_naming_the_node(served: Served) -> None:
    loop = replace_loop(redis=failing(12, "Error 111 connecting", "127.0.0.1:7003"))
    served.publish(loop, approved())
    response = served.http.get("/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "DOWN"
    redis = body["checks"]["redis"]
    assert (redis["status"], redis["where"], redis["last_error"]) == (
        "DOWN",
        "127.0.0.1:7003",
        "Error 111 connecting",
    )
    assert redis["failing_for_s"] == 12.0
    assert body["reasons"] == ["redis failing for 12.0 s at 127.0.0.1:7003: Error 111 connecting"]


def test_store_failing_is_down_503(served: Served) -> None:
    served.publish(replace_loop(store=failing(30, "database is locked")), approved())
    response = served.http.get("/health")
    assert response.status_code == 503
    assert response.json()["checks"]["store"]["status"] == "DOWN"
    assert "database is locked" in response.json()["reasons"][0]


def test_stream_reads_failing_are_down_503_naming_the_node(served: Served) -> None:
    stream = StreamStatus(owner="c1", owned=True, reads=failing(9, "Timeout", "10.0.0.3:7002"))
    served.publish(healthy_loop(ETHUSDT=stream), approved())
    response = served.http.get("/health")
    assert response.status_code == 503
    body = response.json()
    assert body["checks"]["streams"]["ETHUSDT"]["status"] == "DOWN"
    assert body["checks"]["streams"]["ETHUSDT"]["read_error"] == "Timeout"
    assert "10.0.0.3:7002" in body["reasons"][0]


def test_stream_lag_above_the_threshold_is_degraded_200(served: Served) -> None:
    stream = StreamStatus(owner="c1", owned=True, lag_ms=75_000, backlog=0, pending=0)
    served.publish(healthy_loop(BTCUSDT=stream), approved())
    response = served.http.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "DEGRADED"
    assert body["checks"]["streams"]["BTCUSDT"]["status"] == "DEGRADED"
    assert body["reasons"] == ["stream BTCUSDT: lag 75000 ms above 60000 ms"]


def test_a_stuck_loop_is_down_503(served: Served) -> None:
    stuck = LoopStatus(started=True, updated_at=NOW - 600, batches=5)
    served.publish(stuck, approved())
    response = served.http.get("/health")
    assert response.status_code == 503
    assert response.json()["reasons"] == ["the consumer loop has not reported for 600 s"]
    loop = response.json()["checks"]["loop"]
    assert (loop["status"], loop["silent_s"]) == ("DOWN", 600.0)


def test_live_is_200_whatever_the_dependencies(served: Served) -> None:
    served.publish(replace_loop(redis=failing(60, "down")), ConfigStatus())
    response = served.http.get("/health/live")
    assert (response.status_code, response.json()) == (200, {"status": "alive"})


def test_ready_only_when_started_and_not_down(served: Served) -> None:
    served.publish(healthy_loop(), approved(source="cache"))
    degraded = served.http.get("/health/ready")
    assert (degraded.status_code, degraded.json()["ready"]) == (200, True)

    served.publish(replace_loop(started=False, waiting_for="the store"), approved())
    starting = served.http.get("/health/ready")
    assert starting.status_code == 503
    assert starting.json() == {
        "ready": False,
        "status": "DEGRADED",
        "reasons": ["the consumer loop has not started: waiting for the store"],
    }

    served.publish(healthy_loop(), ConfigStatus())
    down = served.http.get("/health/ready")
    assert (down.status_code, down.json()["status"]) == (503, "DOWN")


def test_openapi_declares_200_and_503_with_their_bodies(served: Served) -> None:
    document = served.http.get("/openapi.json").json()
    for path, model in [("/health", "HealthBody"), ("/health/ready", "ReadyBody")]:
        responses = document["paths"][path]["get"]["responses"]
        assert set(responses) == {"200", "503"}, path
        for code in ("200", "503"):
            schema = responses[code]["content"]["application/json"]["schema"]
            assert schema == {"$ref": f"#/components/schemas/{model}"}, (path, code)
    live = document["paths"]["/health/live"]["get"]["responses"]
    assert live["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/LiveBody")
    health = document["components"]["schemas"]["HealthBody"]
    assert set(health["required"]) == {"status", "reasons", "checks", "version"}


def replace_loop(**changes: Any) -> LoopStatus:
    return replace(healthy_loop(), **changes)


def _app() -> FastAPI:
    return create_app(Published(LoopStatus()), Published(ConfigStatus()), LIMITS)


def test_start_and_stop_twice_in_one_process_on_the_same_port() -> None:
    first = ApiServer(_app(), "127.0.0.1", 0)
    first.start()
    port = first.port
    assert httpx.get(f"{first.url}/health/live").status_code == 200
    first.stop()
    assert not first.running

    second = ApiServer(_app(), "127.0.0.1", port)
    second.start()
    try:
        assert httpx.get(f"{second.url}/health/live").status_code == 200
    finally:
        second.stop()
    assert not second.running


def test_a_port_in_use_is_a_one_line_error() -> None:
    holder = ApiServer(_app(), "127.0.0.1", 0)
    holder.start()
    try:
        with pytest.raises(ApiServerError) as raised:
            ApiServer(_app(), "127.0.0.1", holder.port).start()
        message = str(raised.value)
        assert message == f"cannot listen on 127.0.0.1:{holder.port}: Address already in use"
        assert "\n" not in message
        assert httpx.get(f"{holder.url}/health/live").status_code == 200  # the holder still serves
    finally:
        holder.stop()


def test_an_address_not_on_this_machine_is_a_one_line_error() -> None:
    # 192.0.2.0/24 is reserved for documentation: no interface here has it, and nothing is sent.
    with pytest.raises(ApiServerError) as raised:
        ApiServer(_app(), "192.0.2.1", 0).start()
    assert str(raised.value) == "cannot listen on 192.0.2.1:0: Cannot assign requested address"


def test_a_failing_app_startup_is_an_error_and_leaves_no_thread() -> None:
    @asynccontextmanager
    async def broken(_app: FastAPI) -> AsyncIterator[None]:
        raise RuntimeError("cannot open the job table")
        yield

    server = ApiServer(FastAPI(lifespan=broken), "127.0.0.1", 0)
    with pytest.raises(ApiServerError) as raised:
        server.start()
    assert str(raised.value) == (
        f"the API server failed to start on {server.url}: "
        "the app's startup failed (its error is logged)"
    )
    assert not server.running


def test_serves_from_a_non_daemon_thread_and_leaves_the_signals_alone() -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    threads_before = set(threading.enumerate())
    server = ApiServer(_app(), "127.0.0.1", 0)
    server.start()
    try:
        (thread,) = [t for t in threading.enumerate() if t not in threads_before]
        assert thread.name == "api"
        assert not thread.daemon
        assert {sig: signal.getsignal(sig) for sig in before} == before
    finally:
        server.stop()
    assert not thread.is_alive()
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_logs_go_through_standard_logging_without_access_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    server = ApiServer(_app(), "127.0.0.1", 0)
    server.start()
    try:
        assert httpx.get(f"{server.url}/health/live").status_code == 200
    finally:
        server.stop()
    loggers = {record.name for record in caplog.records}
    listening = [r for r in caplog.records if getattr(r, "event", None) == "api_listening"]
    assert [r.getMessage() for r in listening] == [f"api listening on {server.url}"]
    assert "uvicorn.error" in loggers  # startup and shutdown lines
    assert "s2feature.api.app" in loggers  # the lifespan ran
    assert "uvicorn.access" not in loggers


def test_access_lines_when_asked_for(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    server = ApiServer(_app(), "127.0.0.1", 0, access_log=True)
    server.start()
    try:
        assert httpx.get(f"{server.url}/health/live").status_code == 200
    finally:
        server.stop()
    assert "uvicorn.access" in {record.name for record in caplog.records}
