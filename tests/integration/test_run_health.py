"""`s2-feature run` as a process, its `/health` read over HTTP while the causes of each status
are produced for real: the config service stopped and restarted, S1 stalled, Redis killed and
restarted, and a start without any approved config or on the disk cache."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from s2feature.data.synth import derive_ticks, events_from_bars
from s2feature.domain import SeriesId
from tests.support.config_server import ConfigServer
from tests.support.market_gen import SeriesSpec, make_series
from tests.support.redis_servers import RedisServer, wait_for

pytestmark = [pytest.mark.redis, pytest.mark.timeout(300)]
ROOT = Path(__file__).resolve().parents[2]
SERIES = SeriesId("binance", "fut", "BTCUSDT")
BUNDLE = {"rev": "r1"}
SAFETY_S = 60.0  # bounded polls: a safety net against a hung test, never a speed assertion


class LiveFeed:
    """Publishes S1 events of the current minutes as their event time comes (one a second), the
    way S1 does; pausing it is S1 stalling. Survives a Redis outage by retrying."""

    def __init__(self, port: int) -> None:
        minute = int(time.time() // 60)
        bars = make_series(SeriesSpec(seed=3, n=30, base_ms=60_000, sigma=0.001, start_slot=minute))
        bars = derive_ticks(bars, seed=3, market=SERIES.market)
        self.entries = events_from_bars(bars, SERIES, events_per_bar=60, seed=3)
        self.client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
        self.running = threading.Event()
        self.done = threading.Event()
        self.published = 0
        self.thread = threading.Thread(target=self._run, name="s1-feed", daemon=True)

    def _run(self) -> None:
        for fields in self.entries:
            while not self.done.is_set() and (
                not self.running.is_set() or int(fields["ts"]) > time.time() * 1000
            ):
                time.sleep(0.05)
            while not self.done.is_set():
                try:
                    self.client.xadd(SERIES.stream_key, fields, id=f"{fields['ts']}-0")  # type: ignore[arg-type]
                    break
                except redis.ResponseError:
                    break  # the ID is there already: an earlier attempt landed
                except redis.RedisError:
                    time.sleep(0.1)
            if self.done.is_set():
                return
            self.published += 1

    def close(self) -> None:
        self.done.set()
        self.thread.join(timeout=10)
        self.client.close()


class Instance:
    """One `s2-feature run` process; its JSON log lines on a file, its `/health` over HTTP."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "s2feature.cli", "run"], env=env, cwd=ROOT, stderr=self._log
        )
        wait_for(lambda: self._port() is not None, timeout_s=SAFETY_S, what="the API port")
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self._port()}", timeout=5)

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log_path.read_text().splitlines()]

    def _port(self) -> int | None:
        assert self.proc.poll() is None, self.log_path.read_text()[-3000:]
        for record in self.records():
            if record.get("event") == "api_listening":
                return int(str(record["url"]).rsplit(":", 1)[1])
        return None

    def health(self) -> tuple[int, dict[str, Any]]:
        answer = self.http.get("/health")
        return answer.status_code, answer.json()

    def wait_health(self, status: str, reason: str = "") -> dict[str, Any]:
        seen: list[Any] = []

        def matches() -> bool:
            code, body = self.health()
            seen[:] = [code, body]
            expected_code = 503 if status == "DOWN" else 200
            return (
                body["status"] == status
                and code == expected_code
                and (not reason or any(reason in r for r in body["reasons"]))
            )

        try:
            wait_for(matches, timeout_s=SAFETY_S, what=f"/health {status} ({reason})")
        except TimeoutError:
            raise AssertionError(f"last /health: {seen}") from None
        return dict(seen[1])

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=SAFETY_S)
        self.http.close()
        self._log.close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def run_env(redis_port: int, tmp: Path, **extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("S2_")}
    return {
        **base,
        "S2_SYMBOLS": "binance:fut:BTCUSDT",
        "S2_REDIS_ADDRESSES": f"127.0.0.1:{redis_port}",
        "S2_CONSUMER_NAME": "health-test",
        "S2_DB_SQLITE_PATH": str(tmp / "s2.db"),
        "S2_LAKE_DIR": str(tmp / "lake"),
        "S2_CONFIG_CACHE": str(tmp / "config-cache.json"),
        "S2_CONFIG_POLL_S": "0.5",
        "S2_API_PORT": "0",
        "S2_BLOCK_MS": "100",
        **extra,
    }


@pytest.fixture
def config_server() -> Iterator[ConfigServer]:
    server = ConfigServer(dict(BUNDLE)).start()
    yield server
    server.stop()


def test_each_status_with_its_cause(
    redis_server: RedisServer, config_server: ConfigServer, tmp_path: Path
) -> None:
    feed = LiveFeed(redis_server.port)
    feed.thread.start()
    feed.running.set()
    env = run_env(
        redis_server.port, tmp_path, S2_CONFIG_URL=config_server.url, S2_LAG_DEGRADED_MS="5000"
    )
    instance = Instance(env, tmp_path / "run.log")
    try:
        # Until the loop has restored its streams, `/health` lists none.
        wait_for(
            lambda: (
                instance.health()[1]["checks"]["streams"].get("BTCUSDT", {}).get("lag_ms")
                is not None
            ),
            timeout_s=SAFETY_S,
            what="the first applied event",
        )
        body = instance.wait_health("OK")
        assert body["checks"]["config"]["rev"] == "r1"
        assert body["checks"]["config"]["source"] == "url"
        stream = body["checks"]["streams"]["BTCUSDT"]
        assert stream["owner"] == "health-test"
        assert stream["lag_ms"] is not None

        config_server.stop()  # the config service goes away: stale config, DEGRADED, still 200
        instance.wait_health("DEGRADED", "stale")
        config_server.start()
        instance.wait_health("OK")

        feed.running.clear()  # S1 stalls: the stream's lag passes S2_LAG_DEGRADED_MS
        body = instance.wait_health("DEGRADED", "stream BTCUSDT: lag")
        assert body["checks"]["streams"]["BTCUSDT"]["lag_ms"] > 5000
        feed.running.set()
        instance.wait_health("OK")

        redis_server.kill()  # Redis dies: failing longer than one backoff cycle is DOWN, 503
        node = f"127.0.0.1:{redis_server.port}"
        body = instance.wait_health("DOWN", "stream BTCUSDT: reads failing for")
        assert any(node in reason for reason in body["reasons"])  # names the node it cannot reach
        assert body["checks"]["streams"]["BTCUSDT"]["status"] == "DOWN"
        assert body["checks"]["redis"]["status"] != "OK"
        redis_server.restart()
        instance.wait_health("OK")
        assert instance.stop() == 0
    finally:
        instance.kill()
        feed.close()
    events = {r.get("event") for r in instance.records()}
    assert {"start", "api_listening", "config_applied", "lease_taken", "retry"} <= events


def test_no_approved_config_is_down_until_the_config_service_answers(
    redis_server: RedisServer, config_server: ConfigServer, tmp_path: Path
) -> None:
    url = config_server.url
    config_server.stop()
    instance = Instance(run_env(redis_server.port, tmp_path, S2_CONFIG_URL=url), tmp_path / "a")
    try:
        body = instance.wait_health("DOWN", "no approved config")
        assert body["checks"]["config"]["rev"] is None
        assert instance.http.get("/health/ready").status_code == 503
        assert instance.http.get("/health/live").status_code == 200
        config_server.start()
        body = instance.wait_health("OK")
        assert body["checks"]["config"]["rev"] == "r1"
        assert instance.http.get("/health/ready").status_code == 200
        assert instance.stop() == 0
    finally:
        instance.kill()
    # the bundle it ran on is now cached: a start while the service is down runs on the cache
    assert (tmp_path / "config-cache.json").is_file()
    config_server.stop()
    instance = Instance(run_env(redis_server.port, tmp_path, S2_CONFIG_URL=url), tmp_path / "b")
    try:
        body = instance.wait_health("DEGRADED", "disk cache")
        assert body["checks"]["config"]["rev"] == "r1"
        assert body["checks"]["config"]["source"] == "cache"
        assert body["checks"]["config"]["age_s"] >= 0
        assert instance.stop() == 0
    finally:
        instance.kill()
