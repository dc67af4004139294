"""`GET /metrics` over real HTTP: every agreed metric is exported, the status gauges say what the
published status values say, and `promtool check metrics` finds nothing to complain about."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from s2feature.api import ApiServer, create_app
from s2feature.api.metrics import TaskCollector, counted_runner
from s2feature.domain import SeriesId
from s2feature.jobs.recompute import Progress, RecomputeRequest, Resume
from s2feature.jobs.tasks import TaskRegistry
from s2feature.observability.metrics import Metrics
from s2feature.service.status import (
    ConfigStatus,
    DependencyStatus,
    LoopStatus,
    Published,
    StreamStatus,
)
from s2feature.service.status_metrics import StatusCollector
from tests.support import service_checks as checks
from tests.support.metric_names import AGREED
from tests.support.redis_servers import wait_for

NOW = 1_800_000_000.0
# The names agreed for the dashboard and the alerts (docs/observability.md lists them).


def runner(
    request: RecomputeRequest,
    task_id: str,
    progress: Callable[[Progress], None],
    stop: threading.Event,
    resume: Resume,
) -> int:
    if request.symbols == ("FAILS",):
        raise RuntimeError("no lake")
    progress(Progress(1, 2, 30))
    progress(Progress(2, 2, 70))
    return 70


@pytest.fixture
def scrape() -> Iterator[str]:
    metrics = Metrics("9.9.9", CollectorRegistry())
    series = metrics.series("BTCUSDT", ("1m", "5m"))
    series.read.inc(10)
    series.dqc_failed("bounds:spread_bps")
    series.dead_lettered("unreadable:missing_field:mid")
    series.compute_latency["1m"].observe(0.0002)
    metrics.retried("redis")
    loop = Published(
        LoopStatus(
            started=True,
            updated_at=NOW,
            batches=3,
            store=DependencyStatus(ok=False, failing_since=NOW - 1, last_error="locked"),
            streams={
                "BTCUSDT": StreamStatus(
                    owner="me",
                    owned=True,
                    last_event_ms=int((NOW - 2.5) * 1000),
                    pending=7,
                    backlog=12,
                ),
                "ETHUSDT": StreamStatus(owner="other", owned=False, pending=1, backlog=1),
            },
        )
    )
    config = Published(ConfigStatus(rev="r7", source="cache", fetched_at=NOW - 60, rejected=2))
    metrics.registry.register(StatusCollector(loop, config, clock=lambda: NOW))
    tasks = TaskRegistry(counted_runner(runner, metrics))
    metrics.registry.register(TaskCollector(tasks))
    tasks.start()
    tasks.submit(RecomputeRequest(("BTCUSDT",), ("1m",), 0, 1))
    tasks.submit(RecomputeRequest(("FAILS",), ("1m",), 0, 1))
    app = create_app(loop, Published(ConfigStatus()), metrics_registry=metrics.registry)
    server = ApiServer(app, port=0)
    server.start()
    try:
        deadline_text = ""
        for _ in range(200):  # the two tasks end soon: wait until both are counted
            deadline_text = httpx.get(f"{server.url}/metrics", timeout=10).text
            if 's2_recompute_tasks{state="failed"} 1.0' in deadline_text:
                break
            threading.Event().wait(0.05)
        yield deadline_text
    finally:
        server.stop()
        tasks.close()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_every_agreed_metric_is_exported(scrape: str) -> None:
    declared = {line.split()[2] for line in scrape.splitlines() if line.startswith("# TYPE")}
    exported = declared | {name + "_total" for name in declared}
    assert [name for name in AGREED if name not in exported] == []
    assert "process_cpu_seconds_total" in scrape  # process metrics on the service's registry


def test_the_gauges_say_what_the_status_says(scrape: str) -> None:
    got = samples(scrape)
    btc = frozenset({("symbol", "BTCUSDT")})
    eth = frozenset({("symbol", "ETHUSDT")})
    assert got[("s2_stream_lag_seconds", btc)] == pytest.approx(2.5)
    assert ("s2_stream_lag_seconds", eth) not in got  # another instance owns it
    assert got[("s2_stream_pending_entries", btc)] == 7
    assert got[("s2_stream_backlog_entries", btc)] == 12
    assert (got[("s2_lease_owned", btc)], got[("s2_lease_owned", eth)]) == (1, 0)
    assert got[("s2_dependency_failing", frozenset({("dependency", "store")}))] == 1
    assert got[("s2_dependency_failing", frozenset({("dependency", "redis")}))] == 0
    assert got[("s2_dependency_failing", frozenset({("dependency", "config")}))] == 1
    assert got[("s2_health_status", frozenset())] == 1  # DEGRADED: store retrying, cache config
    assert got[("s2_config_info", frozenset({("rev", "r7"), ("source", "cache")}))] == 1
    assert got[("s2_config_applied_timestamp_seconds", frozenset())] == NOW - 60
    assert got[("s2_config_degraded", frozenset())] == 1
    assert got[("s2_config_rejected_total", frozenset())] == 2
    assert got[("s2_entries_read_total", btc)] == 10
    assert got[("s2_retries_total", frozenset({("dependency", "redis")}))] == 1
    assert got[("s2_retries_total", frozenset({("dependency", "store")}))] == 0
    assert got[("s2_build_info", frozenset({("version", "9.9.9")}))] == 1
    assert got[("s2_recompute_signals_total", frozenset())] == 70
    assert got[("s2_recompute_task_failures_total", frozenset())] == 1
    assert got[("s2_recompute_tasks", frozenset({("state", "done")}))] == 1
    assert got[("s2_recompute_tasks", frozenset({("state", "failed")}))] == 1
    assert got[("s2_recompute_tasks", frozenset({("state", "queued")}))] == 0


def test_promtool_finds_nothing_to_complain_about(scrape: str, promtool: Path) -> None:
    done = subprocess.run(
        [promtool, "check", "metrics"],
        input=scrape,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == ""
    assert done.stderr.strip() == ""


@pytest.mark.redis
@pytest.mark.timeout(300)
def test_s2_feature_run_serves_its_metrics(redis_server: Any, tmp_path: Path) -> None:
    """The running process: `/metrics` counts the entries it read, the lease it holds, and the
    lag of its stream."""
    series = SeriesId("binance", "fut", "BTCUSDT")
    entries = checks.input_entries(series, checks.input_bars(series, 120, 5), 5)
    checks.add_entries(redis_server.client(), series, entries)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("S2_", "OTEL_"))}
    env.update(
        S2_SYMBOLS="binance:fut:BTCUSDT",
        S2_REDIS_ADDRESSES=f"127.0.0.1:{redis_server.port}",
        S2_API_PORT="0",
        S2_DB_SQLITE_PATH=str(tmp_path / "s2.db"),
        S2_LAKE_DIR=str(tmp_path / "lake"),
        S2_CONFIG_CACHE=str(tmp_path / "config-cache.json"),
    )
    log_path = tmp_path / "stderr.log"
    with log_path.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "s2feature.cli", "run"], env=env, stderr=err)
    try:

        def url() -> str | None:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            for line in log_path.read_text().splitlines():
                record = json.loads(line)
                if record.get("event") == "api_listening":
                    return str(record["url"])
            return None

        wait_for(lambda: url() is not None, timeout_s=60, what="the API")
        scraped: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}

        def read_everything() -> bool:
            answer = httpx.get(f"{url()}/metrics", timeout=10)
            assert answer.status_code == 200
            assert answer.headers["content-type"].startswith("text/plain")
            scraped.clear()
            scraped.update(samples(answer.text))
            btc = frozenset({("symbol", "BTCUSDT")})
            return scraped.get(("s2_entries_acked_total", btc)) == len(entries)

        wait_for(read_everything, timeout_s=120, what="every entry acked in /metrics")
        btc = frozenset({("symbol", "BTCUSDT")})
        assert scraped[("s2_entries_read_total", btc)] == len(entries)
        assert scraped[("s2_lease_owned", btc)] == 1
        assert scraped[("s2_stream_lag_seconds", btc)] > 0  # synthetic events of the past
        assert scraped[("s2_config_info", frozenset({("rev", "default"), ("source", "defaults")}))]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
