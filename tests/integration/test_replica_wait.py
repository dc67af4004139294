"""`S2_REDIS_MIN_REPLICAS` on a standalone server with one replica (`REPLICAOF`): the writes
sent ahead of their replies (`streams/ahead.py`) are waited for like the others, and nothing is
acked while the replica cannot confirm."""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path

import pytest

from s2feature.domain import SeriesId
from s2feature.lake.parquet import BarLake
from s2feature.service.runner import Service
from s2feature.service.settings import load_settings
from s2feature.store.sqlite import SqliteStore
from s2feature.streams.client import connect
from s2feature.streams.keys import events_key
from tests.support.redis_servers import RedisServer, RedisServerFactory, wait_for
from tests.support.service_checks import (
    StreamProgress,
    add_entries,
    assert_run_complete,
    input_bars,
    input_entries,
)

pytestmark = pytest.mark.redis
SERIES = SeriesId("binance", "fut", "BTCUSDT")
N_BARS = 1600  # emits start after the first day
SAFETY_S = 120.0  # a hung run fails instead of blocking the suite; never a speed assertion


def primary_and_replica(factory: RedisServerFactory) -> tuple[RedisServer, RedisServer]:
    primary, replica = factory(), factory()
    replica.execute("REPLICAOF", primary.host, primary.port)
    wait_for(
        lambda: replica.client().info("replication").get("master_link_status") == "up",
        timeout_s=SAFETY_S,
        what="the replica to link up",
    )
    return primary, replica


def env_for(primary: RedisServer, tmp: Path) -> dict[str, str]:
    return {
        "S2_REDIS_ADDRESSES": f"{primary.host}:{primary.port}",
        "S2_SYMBOLS": "binance:fut:BTCUSDT",
        "S2_CONSUMER_NAME": "svc-1",
        "S2_DB_SQLITE_PATH": str(tmp / "s2.db"),
        "S2_LAKE_DIR": str(tmp / "lake"),
        "S2_CHECKPOINT_MS": "200",
        "S2_REDIS_MIN_REPLICAS": "1",
        "S2_REDIS_WAIT_MS": "200",
    }


def open_service(env: dict[str, str]) -> Service:
    settings = load_settings(env)
    return Service(
        settings,
        connect(settings.redis),
        SqliteStore(Path(env["S2_DB_SQLITE_PATH"])),
        BarLake(Path(env["S2_LAKE_DIR"])),
    )


def test_with_min_replicas_1_the_replica_holds_every_output_when_the_run_ends(
    redis_server_factory: RedisServerFactory, tmp_path: Path
) -> None:
    primary, replica = primary_and_replica(redis_server_factory)
    bars = input_bars(SERIES, N_BARS, seed=81)
    entries = input_entries(SERIES, bars, seed=81)
    client = primary.client()
    add_entries(client, SERIES, entries)
    env = env_for(primary, tmp_path)
    service = open_service(env)

    service.run(idle_exit_s=0.3)

    service.workers[SERIES.stream_key].store.close()
    assert service.emitted > 0
    assert_run_complete(client, SERIES, env, bars, entries)
    # Acked only once confirmed: the replica already has every emit, with no wait here.
    out = events_key(SERIES.symbol)
    assert replica.execute("XLEN", out) == primary.execute("XLEN", out)


def test_nothing_is_acked_while_the_replica_cannot_confirm_and_all_is_once_it_can(
    redis_server_factory: RedisServerFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="s2feature.service")
    primary, replica = primary_and_replica(redis_server_factory)
    bars = input_bars(SERIES, N_BARS, seed=82)
    entries = input_entries(SERIES, bars, seed=82)
    client = primary.client()
    add_entries(client, SERIES, entries)
    env = env_for(primary, tmp_path)
    service = open_service(env)
    progress = StreamProgress(client, SERIES, entries)
    pid = replica.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        thread = threading.Thread(target=service.run, daemon=True)
        thread.start()
        wait_for(
            lambda: any("acknowledged the writes" in r.getMessage() for r in caplog.records),
            timeout_s=SAFETY_S,
            what="a WAIT to time out",
        )
        delivered, pending = progress.delivered_and_pending()
        assert delivered > 0
        assert pending == delivered  # read and processed, never acked
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(
        lambda: progress.delivered_and_pending() == (len(entries), 0),
        timeout_s=SAFETY_S,
        what="every entry acked once the replica is back",
    )
    service.stop.set()
    thread.join(SAFETY_S)
    assert not thread.is_alive()
    service.workers[SERIES.stream_key].store.close()
    assert_run_complete(client, SERIES, env, bars, entries)
