"""Stream ownership against a real redis-server: one consumer per stream, handed over when the
owner stops or dies, and a replaced owner fenced off from the checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from s2feature.config.bundle import ConfigBundle
from s2feature.domain import SeriesId
from s2feature.lake.parquet import BarLake
from s2feature.service.runner import Service
from s2feature.service.settings import load_settings
from s2feature.store.sqlite import SqliteStore
from s2feature.streams.keys import cache_key, lease_key
from s2feature.streams.lease import LeaseLost, StreamLease
from tests.support import service_checks as checks
from tests.support.redis_servers import RedisServer, wait_for

pytestmark = pytest.mark.redis
SERIES = SeriesId("binance", "fut", "BTCUSDT")
ROOT = Path(__file__).resolve().parents[2]


def env_for(server: RedisServer, tmp: Path, consumer: str, **extra: str) -> dict[str, str]:
    return {
        "S2_REDIS_ADDRESSES": f"127.0.0.1:{server.port}",
        "S2_SYMBOLS": "binance:fut:BTCUSDT",
        "S2_WINDOWS": "1m,5m,1h",
        "S2_CONSUMER_NAME": consumer,
        "S2_DB_SQLITE_PATH": str(tmp / "s2.db"),
        "S2_LAKE_DIR": str(tmp / "lake"),
        "S2_LOG_LEVEL": "WARNING",
        **extra,
    }


def add_input(client: redis.Redis, n_bars: int, seed: int) -> list[dict[str, str]]:
    entries = checks.input_entries(SERIES, checks.input_bars(SERIES, n_bars, seed), seed)
    for fields in entries:
        client.xadd(SERIES.stream_key, fields)  # type: ignore[arg-type]
    return entries


def service_for(env: dict[str, str]) -> tuple[Service, SqliteStore]:
    settings = load_settings(env)
    store = SqliteStore(Path(env["S2_DB_SQLITE_PATH"]))
    client = redis.Redis(host="127.0.0.1", port=int(env["S2_REDIS_ADDRESSES"].split(":")[1]))
    return Service(settings, client, store, BarLake(Path(env["S2_LAKE_DIR"]))), store


# -- the lease itself ---------------------------------------------------------------------------


def test_a_live_lease_keeps_other_consumers_out_until_released(redis_server: RedisServer) -> None:
    client = redis_server.client()
    first = StreamLease(client, "BTCUSDT", "host-a", ttl_ms=10_000)
    second = StreamLease(client, "BTCUSDT", "host-b", ttl_ms=10_000)
    assert first.acquire()
    assert first.acquire()  # re-acquiring one's own lease is a renewal
    assert not second.acquire()
    assert second.holder() == first.token
    assert not second.release()  # only the holder may release
    assert client.get(lease_key("BTCUSDT")) == first.token.encode()
    assert first.release()
    assert second.acquire()
    assert not first.renew()


def test_an_expired_lease_can_be_taken_and_its_old_holder_cannot_renew_it(
    redis_server: RedisServer,
) -> None:
    client = redis_server.client()
    stalled = StreamLease(client, "BTCUSDT", "host-a", ttl_ms=150)
    successor = StreamLease(client, "BTCUSDT", "host-b", ttl_ms=10_000)
    assert stalled.acquire()
    assert 0 < int(client.pttl(lease_key("BTCUSDT"))) <= 150
    wait_for(successor.acquire, timeout_s=10, what="the lease to expire")
    assert not stalled.renew()
    assert successor.renew()
    assert int(client.pttl(lease_key("BTCUSDT"))) > 150


def test_a_restart_under_the_same_consumer_name_takes_the_lease_at_once(
    redis_server: RedisServer,
) -> None:
    client = redis_server.client()
    crashed = StreamLease(client, "BTCUSDT", "host-a", ttl_ms=60_000)
    assert crashed.acquire()
    restarted = StreamLease(client, "BTCUSDT", "host-a", ttl_ms=60_000)
    assert restarted.token != crashed.token
    assert restarted.acquire()
    assert not crashed.renew()  # the earlier incarnation, were it alive, is fenced off
    # A consumer whose name merely ends like ours is someone else.
    assert not StreamLease(client, "BTCUSDT", "a", ttl_ms=60_000).acquire()


def test_the_fenced_write_lands_only_while_the_lease_is_held(redis_server: RedisServer) -> None:
    client = redis_server.client()
    owner = StreamLease(client, "BTCUSDT", "host-a", ttl_ms=10_000)
    assert owner.acquire()
    owner.fenced_set(cache_key("BTCUSDT"), "state-1")
    assert client.get(cache_key("BTCUSDT")) == b"state-1"
    client.set(lease_key("BTCUSDT"), "0000@host-b")  # taken over while host-a stalled
    with pytest.raises(LeaseLost, match="host-a"):
        owner.fenced_set(cache_key("BTCUSDT"), "state-2")
    assert client.get(cache_key("BTCUSDT")) == b"state-1"


# -- the service ---------------------------------------------------------------------------------


def test_a_second_instance_waits_and_takes_over_when_the_first_stops(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    client = redis_server.client()
    add_input(client, 1600, seed=51)
    first, first_store = service_for(env_for(redis_server, tmp_path, "host-a"))
    env_b = env_for(redis_server, tmp_path, "host-b")
    second, second_store = service_for(env_b)
    first.start()
    first.run_once()  # host-a holds the stream and has applied one batch
    second.start()
    assert second.owned == set()
    assert second.run_once(block_ms=10) == 0  # waits: reads nothing while host-a owns it
    delivered_to: Any = client.xinfo_consumers(SERIES.stream_key, "s2")
    assert {c["name"].decode() for c in delivered_to} == {"host-a"}
    # host-a stops (SIGTERM): checkpoints, acks, releases its lease.
    first.stop.set()
    first.run()
    first_store.close()
    assert client.get(lease_key(SERIES.symbol)) is None
    # host-b takes over at its next lease round and finishes the stream from the checkpoint.
    second.ownership.keep(force=True)
    assert second.owned == {SERIES.stream_key}
    second.run(idle_exit_s=0.3)
    second_store.close()
    assert first.batches >= 1
    assert second.batches >= 1
    checks.assert_outputs_match_recompute(client, SERIES, env_b, ConfigBundle())
    assert len(BarLake(tmp_path / "lake").read(SERIES.symbol)) == 1599


def test_a_killed_owner_is_replaced_by_another_host_after_the_lease_ttl(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    client = redis_server.client()
    add_input(client, 1600, seed=52)
    lease_ms = "1500"
    env_a = env_for(redis_server, tmp_path, "host-a", S2_CLAIM_IDLE_MS=lease_ms)
    proc = subprocess.Popen(
        [sys.executable, "-m", "s2feature.cli", "run"],
        env={**os.environ, **env_a},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def holds_unacked_entries() -> bool:
        try:
            return checks.pending_count(client, SERIES) > 0
        except redis.ResponseError:  # NOGROUP: the service has not created its group yet
            return False

    try:
        wait_for(holds_unacked_entries, timeout_s=60, what="host-a to hold unacked entries")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    left_pending = checks.pending_count(client, SERIES)
    assert left_pending > 0
    assert client.get(lease_key(SERIES.symbol)) is not None  # a kill releases nothing
    env_b = env_for(redis_server, tmp_path, "host-b", S2_CLAIM_IDLE_MS=lease_ms)
    service, store = service_for(env_b)
    service.run(idle_exit_s=5.0)  # idles while waiting for the lease, then drains
    store.close()
    assert service.batches > 0
    consumers: Any = client.xinfo_consumers(SERIES.stream_key, "s2")
    pending_by = {c["name"].decode(): int(c["pending"]) for c in consumers}
    assert pending_by == {"host-a": 0, "host-b": 0}  # host-a's entries were claimed
    checks.assert_outputs_match_recompute(client, SERIES, env_b, ConfigBundle())
    assert len(BarLake(tmp_path / "lake").read(SERIES.symbol)) == 1599


def test_a_replaced_owner_stops_without_acking_or_overwriting_the_checkpoint(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    client = redis_server.client()
    add_input(client, 400, seed=53)
    env = env_for(redis_server, tmp_path, "host-a", S2_CHECKPOINT_MS="1")
    service, store = service_for(env)
    service.start()
    service.run_once()
    service.flush_all(force=True)
    checkpoint = client.get(cache_key(SERIES.symbol))
    assert checkpoint is not None
    pending_before = checks.pending_count(client, SERIES)
    # host-a stalls past its TTL and host-b takes the stream.
    client.set(lease_key(SERIES.symbol), "0000@host-b")
    service.run_once()  # reads and commits a batch, and starts its checkpoint
    service.flush_all(force=True)  # the checkpoint, once its lake part is written, is refused
    store.close()
    assert service.owned == set()
    assert client.get(cache_key(SERIES.symbol)) == checkpoint
    assert checks.pending_count(client, SERIES) > pending_before  # nothing of it was acked
