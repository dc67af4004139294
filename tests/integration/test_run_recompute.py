"""The recompute routes served by `s2-feature run` (a real process, a real redis-server, SQLite
and a lake on disk), end to end over HTTP with the bearer token: POST, progress, done, the
signals in the store with mode `recompute` and the FEATURE_RECOMPUTE event; after a restart the
finished task still answers and the next task takes a new id."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from s2feature.data.synth import derive_ticks
from s2feature.domain import DAY_MS, SeriesId
from s2feature.lake.parquet import BarLake
from s2feature.store.sqlite import SqliteStore
from tests.support.market_gen import SeriesSpec, make_series
from tests.support.redis_servers import RedisServer, wait_for

pytestmark = [pytest.mark.redis, pytest.mark.timeout(300)]
ROOT = Path(__file__).resolve().parents[2]
SERIES = SeriesId("binance", "fut", "BTCUSDT")
TOKEN = "e2e-secret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SAFETY_S = 90.0  # bounded polls: a safety net against a hung test, never a speed assertion


class Instance:
    """One `s2-feature run` process, its JSON log lines on a file, its API over HTTP."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._seen = len(self._listening()) if log_path.exists() else 0  # earlier runs' lines
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "s2feature.cli", "run"], env=env, cwd=ROOT, stderr=self._log
        )
        wait_for(lambda: self._port() is not None, timeout_s=SAFETY_S, what="the API port")
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self._port()}", timeout=10)

    def records(self) -> list[dict[str, Any]]:
        lines = self.log_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.endswith("}")]

    def _listening(self) -> list[dict[str, Any]]:
        return [r for r in self.records() if r.get("event") == "api_listening"]

    def _port(self) -> int | None:
        assert self.proc.poll() is None, self.log_path.read_text()[-3000:]
        listening = self._listening()
        if len(listening) <= self._seen:
            return None
        return int(str(listening[-1]["url"]).rsplit(":", 1)[1])

    def stop(self) -> int:
        self.http.close()
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=SAFETY_S)
        finally:
            self._log.close()


@pytest.fixture
def lake_dir(tmp_path: Path) -> Path:
    root = tmp_path / "lake"
    bars = make_series(SeriesSpec(seed=5, n=3 * 1440, base_ms=60_000, sigma=0.002))
    BarLake(root, auto_compact_parts=None).append(
        SERIES.symbol, derive_ticks(bars, seed=5, market=SERIES.market).to_bars()
    )
    return root


def service_env(redis_server: RedisServer, tmp_path: Path, lake_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("S2_")}
    return {
        **env,
        "S2_SYMBOLS": f"{SERIES.venue}:{SERIES.market}:{SERIES.symbol}",
        "S2_WINDOWS": "1m,5m,1h",
        "S2_REDIS_ADDRESSES": f"127.0.0.1:{redis_server.port}",
        "S2_LAKE_DIR": str(lake_dir),
        "S2_DB_SQLITE_PATH": str(tmp_path / "s2.db"),
        "S2_CONFIG_CACHE": str(tmp_path / "config-cache.json"),
        "S2_CONSUMER_NAME": "s2-e2e",
        "S2_API_PORT": "0",
        "S2_API_TOKEN": TOKEN,
        # The hourly gap fill has tests of its own; here it would add a task of its own.
        "S2_RECOMPUTE_LOOKBACK": "0",
    }


def test_recompute_over_http_from_a_running_service_and_after_its_restart(
    redis_server: RedisServer, tmp_path: Path, lake_dir: Path
) -> None:
    env = service_env(redis_server, tmp_path, lake_dir)
    last = BarLake(lake_dir).last_close_time(SERIES.symbol)
    assert last is not None
    to_ts = last // DAY_MS * DAY_MS - 1  # the last whole UTC day the lake holds
    body = {
        "symbols": [SERIES.symbol],
        "windows": ["1m", "5m", "1h"],
        "from_ts": to_ts - DAY_MS + 1,
        "to_ts": to_ts,
        "force": False,
    }
    log_path = tmp_path / "service.log"
    first = Instance(env, log_path)
    try:
        assert first.http.post("/features/recompute", json=body).status_code == 401
        wait_for(
            lambda: (
                first.http.post("/features/recompute", json={}, headers=AUTH).status_code == 422
            ),
            timeout_s=SAFETY_S,
            what="the task store to be open",
        )
        accepted = first.http.post("/features/recompute", json=body, headers=AUTH)
        assert accepted.status_code == 202, accepted.text
        task_id = accepted.json()["task_id"]
        assert task_id.endswith("-0001")
        location = accepted.headers["Location"]

        def state() -> dict[str, Any]:
            answer = first.http.get(location, headers=AUTH)
            assert answer.status_code == 200, answer.text
            result: dict[str, Any] = answer.json()
            return result

        wait_for(lambda: state()["state"] == "done", timeout_s=SAFETY_S, what="the task done")
        done = state()
        assert (done["batches_done"], done["batches_total"], done["errors"]) == (1, 1, [])
        assert done["signals_written"] == 1440 + 288 + 24
    finally:
        assert first.stop() == 0

    store = SqliteStore(tmp_path / "s2.db")
    try:
        signals = store.query_signals(SERIES.symbol, None, body["from_ts"], to_ts)
        assert len(signals) == done["signals_written"]
        assert {s["mode"] for s in signals} == {"recompute"}
        (event,) = store.strategy_events("FEATURE_RECOMPUTE")
        assert (event["task_id"], event["signals_written"]) == (task_id, len(signals))
    finally:
        store.close()

    second = Instance(env, log_path)
    try:
        again = second.http.get(location, headers=AUTH)
        assert again.status_code == 200
        assert {k: again.json()[k] for k in ("state", "batches_done", "signals_written")} == {
            "state": "done",
            "batches_done": 1,
            "signals_written": done["signals_written"],
        }
        later = {**body, "windows": ["1h"], "force": True}
        wait_for(
            lambda: (
                second.http.post("/features/recompute", json={}, headers=AUTH).status_code == 422
            ),
            timeout_s=SAFETY_S,
            what="the task store to be open",
        )
        renewed = second.http.post("/features/recompute", json=later, headers=AUTH)
        assert renewed.status_code == 202, renewed.text
        assert renewed.json()["task_id"] == task_id[:-4] + "0002"
    finally:
        assert second.stop() == 0
    text = log_path.read_text()
    assert TOKEN not in text  # the token is never logged


def stored_running_task(task_id: str, from_ts: int, to_ts: int, config_rev: str) -> dict[str, Any]:
    """The record a service leaves behind when it dies after the first of two batches."""
    return {
        "task_id": task_id,
        "owner": "s2-e2e",
        "origin": "api",
        "state": "running",
        "request": {
            "symbols": [SERIES.symbol],
            "windows": ["1h"],
            "from_ts": from_ts,
            "to_ts": to_ts,
            "force": False,
        },
        "config_rev": config_rev,
        "batches_done": 1,
        "batches_total": 2,
        "signals_written": 24,
        "signals_skipped": 0,
        "errors": [],
        "submitted_at": 1_736_035_200_000,
        "started_at": 1_736_035_200_100,
        "finished_at": None,
        "run_s": 0.5,
    }


def test_a_started_service_resumes_its_tasks_from_their_last_batch(
    redis_server: RedisServer, tmp_path: Path, lake_dir: Path
) -> None:
    env = service_env(redis_server, tmp_path, lake_dir)
    last = BarLake(lake_dir).last_close_time(SERIES.symbol)
    assert last is not None
    to_ts = last // DAY_MS * DAY_MS - 1
    from_ts = to_ts - 2 * DAY_MS + 1
    store = SqliteStore(tmp_path / "s2.db")
    try:
        store.save_task(stored_running_task("recomp-20250105-0001", from_ts, to_ts, "default"))
        store.save_task(stored_running_task("recomp-20250105-0002", from_ts, to_ts, "old-rev"))
    finally:
        store.close()

    service = Instance(env, tmp_path / "service.log")
    try:

        def state(task_id: str) -> dict[str, Any]:
            answer = service.http.get(f"/features/recompute/{task_id}", headers=AUTH)
            assert answer.status_code == 200, answer.text
            result: dict[str, Any] = answer.json()
            return result

        def ended(task_id: str) -> bool:
            answer = service.http.get(f"/features/recompute/{task_id}", headers=AUTH)
            # 503 until the task registry has opened the store and loaded its tasks
            return answer.status_code == 200 and answer.json()["state"] not in (
                "queued",
                "running",
            )

        wait_for(lambda: ended("recomp-20250105-0002"), timeout_s=SAFETY_S, what="both ended")
        resumed, refused = state("recomp-20250105-0001"), state("recomp-20250105-0002")
    finally:
        assert service.stop() == 0
    assert (resumed["state"], resumed["batches_done"], resumed["signals_written"]) == (
        "done",
        2,
        24 + 24,
    )
    assert (refused["state"], refused["batches_done"]) == ("interrupted", 1)
    assert "config rev changed from old-rev to default" in refused["errors"][0]
    store = SqliteStore(tmp_path / "s2.db")
    try:
        # The first day's batch was done before the (simulated) crash: it is not run again.
        assert store.query_signals(SERIES.symbol, "1h", from_ts, from_ts + DAY_MS - 1) == []
        second_day = store.query_signals(SERIES.symbol, "1h", from_ts + DAY_MS, to_ts)
        assert len(second_day) == 24
        assert {s["mode"] for s in second_day} == {"recompute"}
    finally:
        store.close()
