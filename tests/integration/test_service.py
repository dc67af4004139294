"""The streaming service against a real redis-server: S1 events in, outputs consistent with the
lake and with the batch engine, replays idempotent, DQC routing, kill -9 recovery."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from s2feature.compute.engine import SymbolEngine
from s2feature.config.bundle import ConfigBundle
from s2feature.domain import Bar, Dqc, SeriesId, Snapshot
from s2feature.lake.parquet import BarLake
from s2feature.service.runner import Service
from s2feature.service.settings import Settings, load_settings
from s2feature.service.worker import SeriesWorker
from s2feature.store.base import StoreError
from s2feature.store.sqlite import SqliteStore
from s2feature.streams.client import connect
from s2feature.streams.keys import last_key
from s2feature.streams.lease import StreamLease
from s2feature.streams.redis_io import ACK_SLICE, StreamIO
from s2feature.strict_json import NonFiniteError
from tests.support import service_checks as checks
from tests.support.redis_servers import RedisServer, blocked_readers, wait_for
from tests.support.service_checks import without_computed_at

pytestmark = pytest.mark.redis
SERIES = SeriesId("binance", "fut", "BTCUSDT")
WINDOWS = "1m,5m,1h"
ROOT = Path(__file__).resolve().parents[2]


def input_entries(n_bars: int, seed: int = 5) -> list[dict[str, str]]:
    return checks.input_entries(SERIES, checks.input_bars(SERIES, n_bars, seed), seed)


def env_for(server: RedisServer, tmp: Path) -> dict[str, str]:
    return {
        "S2_REDIS_ADDRESSES": f"127.0.0.1:{server.port}",
        "S2_SYMBOLS": "binance:fut:BTCUSDT",
        "S2_WINDOWS": WINDOWS,
        "S2_CONSUMER_NAME": "test-consumer",
        "S2_DB_SQLITE_PATH": str(tmp / "s2.db"),
        "S2_LAKE_DIR": str(tmp / "lake"),
    }


@pytest.fixture
def service_env(
    redis_server: RedisServer, tmp_path: Path
) -> Iterator[tuple[dict[str, str], redis.Redis]]:
    return env_for(redis_server, tmp_path), redis_server.client()


def run_burst(env: dict[str, str], settings: Settings | None = None) -> Service:
    settings = settings or load_settings(env)
    store = SqliteStore(Path(env["S2_DB_SQLITE_PATH"]))
    client = redis.Redis(host="127.0.0.1", port=int(env["S2_REDIS_ADDRESSES"].split(":")[1]))
    service = Service(settings, client, store, BarLake(Path(env["S2_LAKE_DIR"])))
    service.run(idle_exit_s=0.3)
    store.close()
    return service


def emitted(client: redis.Redis) -> list[tuple[str, dict[str, Any]]]:
    return checks.emitted(client, SERIES.symbol)


def assert_outputs_match_recompute(
    env: dict[str, str], client: redis.Redis, bundle: ConfigBundle
) -> None:
    checks.assert_outputs_match_recompute(client, SERIES, env, bundle)


def start_subprocess(child_env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "s2feature.cli", "run"],
        env=child_env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def drain_in_subprocess(child_env: dict[str, str]) -> None:
    """`s2-feature run --burst 1` to completion; it must exit 0."""
    final = subprocess.run(
        [sys.executable, "-m", "s2feature.cli", "run", "--burst", "1"],
        env=child_env,
        cwd=ROOT,
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert final.returncode == 0, final.stderr.decode()[-2000:]


def test_events_in_give_outputs_equal_to_a_recompute_from_the_lake(service_env: Any) -> None:
    env, client = service_env
    entries = input_entries(1600)
    for fields in entries:
        client.xadd(SERIES.stream_key, fields)  # type: ignore[arg-type]
    service = run_burst(env)
    assert service.emitted > 0
    assert_outputs_match_recompute(env, client, ConfigBundle())
    last = json.loads(client.get(last_key(SERIES.symbol)))
    assert set(last["windows"]) == {"1m", "5m", "1h"} or set(last["windows"]) <= {"1m", "5m", "1h"}
    assert 0 < client.ttl(last_key(SERIES.symbol)) <= 900
    # Lake bars are the input bars (all but the last, which no later event finalised).
    lake_bars = BarLake(Path(env["S2_LAKE_DIR"])).read(SERIES.symbol)
    assert len(lake_bars) == 1599


def test_replaying_the_whole_input_changes_nothing(service_env: Any) -> None:
    env, client = service_env
    for fields in input_entries(1600):
        client.xadd(SERIES.stream_key, fields)  # type: ignore[arg-type]
    run_burst(env)
    before_stream = emitted(client)
    store = SqliteStore(Path(env["S2_DB_SQLITE_PATH"]))
    before_docs = [without_computed_at(d) for d in store.query_signals(SERIES.symbol)]
    before_events = store.strategy_events()
    store.close()
    # Rewind the group and forget the checkpoint and the lake: every entry is processed a second
    # time from a cold state.
    client.xgroup_setid(SERIES.stream_key, "s2", "0")
    client.delete("feat:{cache}:BTCUSDT")
    shutil.rmtree(env["S2_LAKE_DIR"])
    again = run_burst(env)
    assert before_stream, "the first run emitted nothing"
    assert again.emitted == 0  # every emit was rejected by its explicit ID
    assert emitted(client) == before_stream
    store = SqliteStore(Path(env["S2_DB_SQLITE_PATH"]))
    assert [without_computed_at(d) for d in store.query_signals(SERIES.symbol)] == before_docs
    assert store.strategy_events() == before_events
    store.close()


def test_dropped_and_unreadable_entries_are_acked_recorded_and_dead_lettered(
    service_env: Any,
) -> None:
    env, client = service_env
    entries = input_entries(40)
    client.xadd(SERIES.stream_key, entries[0])  # type: ignore[arg-type]
    client.xadd(SERIES.stream_key, {"data": "{not json"})
    backwards = dict(entries[0])
    client.xadd(SERIES.stream_key, entries[1])  # type: ignore[arg-type]
    client.xadd(SERIES.stream_key, backwards)  # ts goes back: dropped, not dead-lettered
    for fields in entries[2:]:
        client.xadd(SERIES.stream_key, fields)  # type: ignore[arg-type]
    run_burst(env)
    dead = client.xrange("feat:dlq:BTCUSDT")
    assert len(dead) == 1
    assert b"s2_reasons" in dead[0][1]
    store = SqliteStore(Path(env["S2_DB_SQLITE_PATH"]))
    dropped = [e for e in store.strategy_events("FEATURE_DQC_FAIL") if "entry_id" in e]
    store.close()
    assert len(dropped) == 2
    assert any(r.startswith("unreadable") for e in dropped for r in e["reasons"])
    assert any(r.startswith("time_order") for e in dropped for r in e["reasons"])
    assert client.xpending(SERIES.stream_key, "s2")["pending"] == 0
    assert_outputs_match_recompute(env, client, ConfigBundle())


def test_bounds_failures_are_stored_but_not_emitted(service_env: Any) -> None:
    env, client = service_env
    for fields in input_entries(60):
        client.xadd(SERIES.stream_key, fields)  # type: ignore[arg-type]
    settings = load_settings(env)
    tight = settings.bundle.with_overrides(
        bounds={"spread_bps_max": 0.5}, features={"required": ["spread_bps"]}
    )
    run_burst(env, replace(settings, bundle=tight))
    store = SqliteStore(Path(env["S2_DB_SQLITE_PATH"]))
    docs = store.query_signals(SERIES.symbol)
    store.close()
    assert any(d["dqc"]["bounds"] for d in docs), "bounds failures must be stored"
    assert all(not d["dqc"]["missing"] for d in docs)
    assert all(d["dqc"]["pass"] for _, d in emitted(client))
    assert {d["signal_id"] for d in docs if d["dqc"]["bounds"]}.isdisjoint(
        {p["signal_id"] for _, p in emitted(client)}
    )


def test_missing_snapshots_are_stored_only_with_persist_all(service_env: Any) -> None:
    env, client = service_env
    for fields in input_entries(30):
        client.xadd(SERIES.stream_key, fields)  # type: ignore[arg-type]
    settings = load_settings(env)
    run_burst(env, settings)  # warm-up: every snapshot misses rv_1d and atr_14
    store = SqliteStore(Path(env["S2_DB_SQLITE_PATH"]))
    assert store.count_signals() == 0
    assert store.strategy_events("FEATURE_DQC_FAIL")  # but each failure is recorded
    store.close()
    client.xgroup_setid(SERIES.stream_key, "s2", "0")
    client.delete("feat:{cache}:BTCUSDT")
    shutil.rmtree(env["S2_LAKE_DIR"])
    keep_all = settings.bundle.with_overrides(mode={"persist_all": True})
    run_burst(env, replace(settings, bundle=keep_all))
    store = SqliteStore(Path(env["S2_DB_SQLITE_PATH"]))
    docs = store.query_signals(SERIES.symbol)
    store.close()
    assert docs
    assert all(d["dqc"]["missing"] for d in docs)
    assert emitted(client) == []


def test_kill_9_at_random_points_then_restart_loses_and_duplicates_nothing(
    service_env: Any, tmp_path: Path
) -> None:
    env, client = service_env
    entries = input_entries(1500, seed=9)
    child_env = {**os.environ, **env, "S2_LOG_LEVEL": "WARNING"}
    rng = np.random.default_rng(1)
    stop = threading.Event()

    def produce() -> None:
        # Input keeps arriving while the service is killed and restarted: kills land mid-batch,
        # between persist and ack, during emits...
        producer = redis.Redis(host="127.0.0.1", port=int(env["S2_REDIS_ADDRESSES"].split(":")[1]))
        for start in range(0, len(entries), 150):
            for fields in entries[start : start + 150]:
                producer.xadd(SERIES.stream_key, fields)  # type: ignore[arg-type]
            if stop.wait(0.15):
                break
        producer.close()

    feeder = threading.Thread(target=produce)
    feeder.start()
    kills = 0
    for _ in range(5):
        proc = subprocess.Popen(
            [sys.executable, "-m", "s2feature.cli", "run"],
            env=child_env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(float(rng.uniform(0.7, 1.6)))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=30)
    feeder.join()
    assert client.xlen(SERIES.stream_key) == len(entries)
    drain_in_subprocess(child_env)
    assert kills == 5
    assert_outputs_match_recompute(env, client, ConfigBundle())
    assert len(BarLake(Path(env["S2_LAKE_DIR"])).read(SERIES.symbol)) == 1499


def test_sigterm_stops_cleanly_with_exit_0_and_a_restart_finishes_the_work(
    service_env: Any,
) -> None:
    env, client = service_env
    for fields in input_entries(1600, seed=12):
        client.xadd(SERIES.stream_key, fields)  # type: ignore[arg-type]
    child_env = {**os.environ, **env, "S2_LOG_LEVEL": "WARNING"}
    proc = start_subprocess(child_env)
    # Stop it once it is demonstrably mid-stream: some entries delivered, not all acked.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        groups = client.xinfo_groups(SERIES.stream_key) if client.exists(SERIES.stream_key) else []
        if groups and groups[0]["entries-read"]:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    # Whatever it acked was fully written: the checkpoint covers it.
    drain_in_subprocess(child_env)
    assert_outputs_match_recompute(env, client, ConfigBundle())


def test_an_entry_delivered_more_than_n_times_is_dead_lettered_and_acked(
    service_env: Any,
) -> None:
    env, client = service_env
    entries = input_entries(30)
    ids = [client.xadd(SERIES.stream_key, fields) for fields in entries]  # type: ignore[arg-type]
    client.xgroup_create(SERIES.stream_key, "s2", id="0")
    # A poison entry: delivered 6 times to consumers that died before acking it.
    for attempt in range(6):
        if attempt == 0:
            client.xreadgroup("s2", "dead-consumer", {SERIES.stream_key: ">"}, count=1)
        else:
            client.xclaim(SERIES.stream_key, "s2", "dead-consumer", 0, [ids[0]])
    run_burst(env)
    dead = client.xrange("feat:dlq:BTCUSDT")
    assert [eid for eid, _ in dead] == [ids[0]]
    assert b"delivery:too_many_attempts" in dead[0][1][b"s2_reasons"]
    assert client.xpending(SERIES.stream_key, "s2")["pending"] == 0


def test_service_runs_as_a_least_privilege_acl_user(service_env: Any) -> None:
    env, client = service_env
    # SPEC §13: read the input streams (XACK/XCLAIM need write on them), write only S2 keys;
    # the stream leases run as scripts (EVALSHA, loaded once with SCRIPT LOAD).
    client.acl_setuser(
        "s2svc",
        enabled=True,
        passwords=["+s2-secret"],
        keys=["mkt:events:*", "feat:*"],
        commands=[
            "+@stream",
            "+@string",
            "+@keyspace",
            "+@connection",
            "-@dangerous",
            "+info",
            "+evalsha",
            "+script|load",
        ],
    )
    for fields in input_entries(1600, seed=21):
        client.xadd(SERIES.stream_key, fields)  # type: ignore[arg-type]
    acl_env = {**env, "S2_REDIS_USERNAME": "s2svc", "S2_REDIS_PASSWORD": "s2-secret"}
    settings = load_settings(acl_env)
    store = SqliteStore(Path(env["S2_DB_SQLITE_PATH"]))
    as_user = connect(settings.redis)
    service = Service(settings, as_user, store, BarLake(Path(env["S2_LAKE_DIR"])))
    service.run(idle_exit_s=0.3)
    store.close()
    assert service.emitted > 0
    assert_outputs_match_recompute(env, client, ConfigBundle())
    with pytest.raises(redis.exceptions.NoPermissionError):
        as_user.set("prod:other:key", "x")
    as_user.close()


def test_entries_a_dead_consumer_left_pending_are_claimed_and_processed(service_env: Any) -> None:
    env, client = service_env
    entries = input_entries(1600, seed=31)
    for fields in entries:
        client.xadd(SERIES.stream_key, fields)  # type: ignore[arg-type]
    client.xgroup_create(SERIES.stream_key, "s2", id="0")
    # An earlier incarnation (another host name) read the first 1,000 entries and died.
    client.xreadgroup("s2", "old-host", {SERIES.stream_key: ">"}, count=1000)
    run_burst(env)
    assert client.xpending(SERIES.stream_key, "s2")["pending"] == 0
    assert client.xrange("feat:dlq:BTCUSDT") == []
    assert_outputs_match_recompute(env, client, ConfigBundle())
    assert len(BarLake(Path(env["S2_LAKE_DIR"])).read(SERIES.symbol)) == 1599


def test_an_idle_service_wakes_for_an_entry_of_any_of_its_streams(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # Two streams, nothing to read: the service blocks. An entry of the *second* stream must end
    # the wait (one XREADGROUP over both streams), not wait for the first stream's block to end.
    eth = SeriesId("binance", "fut", "ETHUSDT")
    env = {
        **env_for(redis_server, tmp_path),
        "S2_SYMBOLS": "binance:fut:BTCUSDT,binance:fut:ETHUSDT",
        "S2_BLOCK_MS": "30000",
        "S2_CLAIM_IDLE_MS": "120000",  # the stream lease must outlast the blocked read
    }
    client = redis_server.client()
    settings = load_settings(env)  # its own client: socket timeout longer than the block
    store = SqliteStore(Path(env["S2_DB_SQLITE_PATH"]))
    service = Service(settings, connect(settings.redis), store, BarLake(Path(env["S2_LAKE_DIR"])))
    service.start()
    entry = checks.input_entries(eth, checks.input_bars(eth, 1, seed=3), seed=3)[0]

    def add_once_blocked() -> None:
        wait_for(lambda: bool(blocked_readers(redis_server)), what="the service to block")
        client.xadd(eth.stream_key, entry)  # type: ignore[arg-type]

    producer = threading.Thread(target=add_once_blocked)
    producer.start()
    handled = service.run_once(block_ms=service.settings.block_ms)
    producer.join()
    service.flush_all(force=True)
    store.close()
    assert handled == 1
    assert checks.pending_count(client, eth) == 0


class PoisonedEngine(SymbolEngine):
    """An engine with a bug: its snapshots pass DQC but carry a NaN feature."""

    def on_base_bar(self, bar: Bar) -> list[Snapshot]:
        return [
            replace(snap, features={**snap.features, "rv_4h": math.nan}, dqc=Dqc())
            for snap in super().on_base_bar(bar)
        ]


def test_a_non_finite_feature_fails_its_batch_before_any_output(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """msgspec would write NaN as null: the batch fails instead, and nothing is written."""
    settings = load_settings(env_for(redis_server, tmp_path))
    client = redis_server.client()
    lease = StreamLease(client, SERIES.symbol, settings.consumer, settings.claim_idle_ms)
    io = StreamIO(client, SERIES, settings.group, settings.consumer, lease)
    store = SqliteStore(tmp_path / "s2.db")
    worker = SeriesWorker(settings, SERIES, io, store, BarLake(tmp_path / "lake"))
    worker.engine = PoisonedEngine(SERIES, settings.windows, settings.bundle)
    entries = [(f"{i + 1}-0", fields) for i, fields in enumerate(input_entries(3))]
    with pytest.raises(StoreError, match=r"features\.rv_4h"):
        worker.commit(worker.compute(entries))  # type: ignore[arg-type]
    assert store.count_signals() == 0
    store.close()
    # `feat:last` embeds texts checked when they were made; a checkpoint is checked whole.
    with pytest.raises(NonFiniteError):
        io.save_checkpoint({"engine": {"mids": [1.0] * 100 + [math.inf]}})
    assert client.keys("feat:*") == []


def test_a_redis_restart_mid_run_loses_and_duplicates_nothing(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # kill -9 of redis-server (appendonly, fsync always) while entries flow. The service's calls
    # fail until it is back (redis-py's own retries absorb a short outage, the service's backoff
    # a longer one); it must then carry on from where the server's data is, each entry once.
    env = env_for(redis_server, tmp_path)
    bars = checks.input_bars(SERIES, 1500, seed=61)
    entries = checks.input_entries(SERIES, bars, seed=61)
    settings = load_settings(env)
    store = SqliteStore(Path(env["S2_DB_SQLITE_PATH"]))
    service = Service(settings, connect(settings.redis), store, BarLake(Path(env["S2_LAKE_DIR"])))
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            service.run()
        except BaseException as exc:  # handed to the test thread below
            errors.append(exc)

    serving = threading.Thread(target=serve, daemon=True)
    serving.start()
    producer = redis_server.client()
    progress = checks.StreamProgress(producer, SERIES, entries)
    restarted = False
    for start in range(0, len(entries), 300):
        checks.add_entries(producer, SERIES, entries[start : start + 300])
        if not restarted and start >= len(entries) // 3:
            wait_for(partial(progress.delivered_at_least, start + 1), what="the service to read")
            redis_server.kill()
            time.sleep(1.0)
            redis_server.restart()
            restarted = True
    wait_for(
        lambda: progress.delivered_and_pending() == (len(entries), 0),
        timeout_s=120,
        what="every entry consumed and acked",
    )
    service.stop.set()
    serving.join(timeout=60)
    assert not serving.is_alive()
    assert not errors, errors
    store.close()
    assert restarted
    checks.assert_run_complete(producer, SERIES, env, bars, entries)


def test_a_large_checkpoint_acks_its_entries_in_slices(redis_server: RedisServer) -> None:
    # A checkpoint after a long catch-up covers many entries: one XACK per ACK_SLICE IDs, so no
    # single command holds the server for all of them.
    client = redis_server.client()
    lease = StreamLease(client, SERIES.symbol, "host-a", 30_000)
    io = StreamIO(client, SERIES, "s2", "host-a", lease)
    io.ensure_group()
    n = 2 * ACK_SLICE + 5
    with client.pipeline(transaction=False) as pipe:
        for i in range(n):
            pipe.xadd(SERIES.stream_key, {"n": i})
        pipe.execute()
    ids = [entry_id for entry_id, _ in io.read_new(n, None)]
    assert len(ids) == n
    client.config_resetstat()
    io.ack(ids)
    pending: Any = client.xpending(SERIES.stream_key, "s2")
    assert pending["pending"] == 0
    stats: Any = client.info("commandstats")
    assert stats["cmdstat_xack"]["calls"] == 3
