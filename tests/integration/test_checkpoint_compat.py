"""Checkpoints across formats and lake states: a version 3 checkpoint restores from the lake's
bars, a version 2 one (the whole state) still restores, one of an unknown version is replaced by a
warm-up from the lake (outputs equal a recompute in these cases); a lake that lost bars makes the
family be rebuilt from what is left, and a lake that is gone an engine that starts over, never a
failed start."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import redis

from s2feature import strict_json
from s2feature.compute.engine import SymbolEngine
from s2feature.compute.family import CloseHistory
from s2feature.config.bundle import ConfigBundle
from s2feature.domain import SeriesId
from s2feature.lake.parquet import BarLake
from s2feature.service.runner import Service
from s2feature.service.settings import load_settings
from s2feature.service.worker import CHECKPOINT_VERSION, SeriesWorker
from s2feature.store.sqlite import SqliteStore
from s2feature.streams.keys import cache_key
from s2feature.streams.lease import StreamLease
from s2feature.streams.redis_io import StreamIO
from tests.support import service_checks as checks
from tests.support.redis_servers import RedisServer

pytestmark = pytest.mark.redis
SERIES = SeriesId("binance", "fut", "BTCUSDT")
WINDOWS = "1m,5m,1h"


def env_for(server: RedisServer, tmp: Path) -> dict[str, str]:
    return {
        "S2_REDIS_ADDRESSES": f"127.0.0.1:{server.port}",
        "S2_SYMBOLS": "binance:fut:BTCUSDT",
        "S2_WINDOWS": WINDOWS,
        "S2_CONSUMER_NAME": "test-consumer",
        "S2_DB_SQLITE_PATH": str(tmp / "s2.db"),
        "S2_LAKE_DIR": str(tmp / "lake"),
    }


def run_burst(env: dict[str, str]) -> None:
    settings = load_settings(env)
    store = SqliteStore(Path(env["S2_DB_SQLITE_PATH"]))
    client = redis.Redis(host="127.0.0.1", port=int(env["S2_REDIS_ADDRESSES"].split(":")[1]))
    Service(settings, client, store, BarLake(Path(env["S2_LAKE_DIR"]))).run(idle_exit_s=0.3)
    store.close()


def restore_says(env: dict[str, str], client: redis.Redis) -> str:
    """What a fresh worker's restore does with the checkpoint as it is now."""
    settings = load_settings(env)
    lease = StreamLease(client, SERIES.symbol, settings.consumer, settings.claim_idle_ms)
    io = StreamIO(client, SERIES, settings.group, settings.consumer, lease)
    store = SqliteStore(Path(env["S2_DB_SQLITE_PATH"]))
    try:
        worker = SeriesWorker(settings, SERIES, io, store, BarLake(Path(env["S2_LAKE_DIR"])))
        return worker.restore()
    finally:
        store.close()


def as_version_2(state: dict[str, Any], lake: BarLake) -> dict[str, Any]:
    """The checkpoint as the previous release wrote it: the whole engine state."""
    settings_bundle = ConfigBundle()
    engine = SymbolEngine(SERIES, WINDOWS.split(","), settings_bundle)
    until = int(state["bars_until"])
    close_time, close = lake.read_closes(SERIES.symbol, 0, until)
    assert engine.restore(state["engine"], CloseHistory(close_time, close)) == set()
    return {**state, "version": 2, "engine": engine.snapshot()}


@pytest.mark.parametrize("change", ["none", "version 2", "version 99", "lake lost", "lake gone"])
def test_a_restart_from_any_checkpoint_gives_the_outputs_of_a_recompute(
    redis_server: RedisServer, tmp_path: Path, change: str
) -> None:
    env, client = env_for(redis_server, tmp_path), redis_server.client()
    bars = checks.input_bars(SERIES, 1700, seed=17)
    entries = checks.input_entries(SERIES, bars, seed=17)
    half = len(entries) // 2
    for fields in entries[:half]:
        client.xadd(SERIES.stream_key, fields)  # type: ignore[arg-type]
    run_burst(env)
    raw = client.get(cache_key(SERIES.symbol))
    assert raw is not None
    state = json.loads(raw)
    assert state["version"] == CHECKPOINT_VERSION
    assert len(raw) < 64 * 1024  # no month of returns in it
    lake = BarLake(Path(env["S2_LAKE_DIR"]))
    expect = "checkpoint at entry"
    if change == "version 2":
        client.set(cache_key(SERIES.symbol), strict_json.encode(as_version_2(state, lake)))
    elif change == "version 99":
        client.set(cache_key(SERIES.symbol), strict_json.encode({**state, "version": 99}))
        expect = "warm-up from"
    elif change == "lake lost":
        # The lake lost its older days: the windows saved cannot be given back, so the family
        # is rebuilt from what is left (as a recompute from this lake would be).
        days = sorted((tmp_path / "lake" / f"symbol={SERIES.symbol}").iterdir())
        shutil.rmtree(days[0])
        expect = "volatility@base rebuilt"
    elif change == "lake gone":
        # Nothing left to rebuild from: the engine starts over, the positions stay.
        shutil.rmtree(tmp_path / "lake")
        expect = "volatility@base not rebuilt"
    assert expect in restore_says(env, client)
    for fields in entries[half:]:
        client.xadd(SERIES.stream_key, fields)  # type: ignore[arg-type]
    run_burst(env)
    if not change.startswith("lake"):  # outputs before the loss came from the lost bars
        checks.assert_outputs_match_recompute(client, SERIES, env, ConfigBundle())
    state = json.loads(client.get(cache_key(SERIES.symbol)) or "null")
    assert state["version"] == CHECKPOINT_VERSION
